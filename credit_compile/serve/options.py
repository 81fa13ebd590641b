"""The `serve` command's own flags (the decoding flags are the other commands'). Importing this
imports no server library: `credit-compile --help` stays light."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--served-model-name", default=None,
                   help="the `model` requests name (default: credit-compile-default for the "
                        "embedded model, else the checkpoint directory's name)")
    p.add_argument("--max-batch", type=_positive_int, default=8,
                   help="prompts decoded together in one call at most")
    p.add_argument("--max-queue", type=_positive_int, default=64,
                   help="prompts waiting at most; beyond it requests get 503 with Retry-After")
    p.add_argument("--batch-wait-ms", type=_seconds, default=5.0,
                   help="milliseconds the worker waits for concurrent requests before "
                        "decoding a batch that is not full")
    p.add_argument("--request-timeout", type=_seconds, default=300.0,
                   help="seconds a request may take, waiting included (then 504); 0: no limit")
    p.add_argument("--shutdown-grace", type=_seconds, default=10.0,
                   help="seconds a shutdown waits for requests in flight before cancelling them")
    p.add_argument("--precompile", action="store_true",
                   help="compile every bucket shape (batch buckets up to --max-batch, prompt "
                        "buckets up to --precompile-prompt-tokens) before the port opens")
    p.add_argument("--precompile-prompt-tokens", type=_positive_int, default=None,
                   help="longest prompt --precompile prepares for (default: one prompt bucket)")
    p.add_argument("--cache-dir", default=None,
                   help="directory keeping the compiled artifacts (and Inductor's kernel cache, "
                        "unless TORCHINDUCTOR_CACHE_DIR is set): a restart with the same "
                        "directory loads them instead of compiling again")
    p.add_argument("--tensor-parallel", type=_positive_int, default=None, metavar="N",
                   help="shard the model (credit_compile's LLaDA, LLaDA-MoE, LLaDA2 or Dream) "
                        "across N ranks, one process each, started by torchrun: rank 0 serves, "
                        "every rank decodes (docs/distributed.md)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
