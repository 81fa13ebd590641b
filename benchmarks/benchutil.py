"""What the benchmark scripts share: their random models, their command-line checks and their
measurements in processes of their own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

import credit_compile as cc
from credit_compile.models import LLADA2_PRESETS, PRESETS, LLaDAConfig, build_model, get_config

# At the presets' init_std (0.02) the random tiny model is near uniform: every confidence is
# 0.011-0.014, all within the commit rule's tie slack (1e-5) of the best, so threshold and credit
# decoding commit a whole block per step and NFE and ratios are artefacts of the ties. At 0.5
# (as the tests' random tiny models) the confidences spread out and they commit about one token
# per step, as a random model at real shapes does.
TINY_INIT_STD = 0.5


def is_tiny(preset: str) -> bool:
    return preset.startswith("tiny")


def is_llada2(preset: str) -> bool:
    """A LLaDA2 preset (block-diffusion MoE, `LLADA2_PRESETS`)."""
    return preset in LLADA2_PRESETS


def decode_config(preset: str, **fields) -> cc.DecodeConfig:
    """The DecodeConfig of a benchmark's flags, also refusing what the preset's model refuses
    when decoding starts (a gen_length of part blocks for a bidirectional model): ValueError,
    which the scripts report as a usage error before anything runs."""
    from types import SimpleNamespace

    from credit_compile.generation_setup import check_gen_length

    config = cc.DecodeConfig(**fields)
    check_gen_length(config, SimpleNamespace(block_causal=is_llada2(preset)))
    return config


def bench_model_config(preset: str, **overrides):
    """The model config a benchmark measures: the preset's, with TINY_INIT_STD for tiny ones
    (LLaDA names it `init_std`, the other families `initializer_range`), and `overrides`. Larger
    presets keep theirs: there the per-step figures, not the NFE, are the point."""
    if is_tiny(preset):
        overrides = {"init_std" if preset in PRESETS else "initializer_range": TINY_INIT_STD,
                     **overrides}
    return get_config(preset, **overrides)


def init_std_of(config) -> float:
    """The std of a config's random weights, whichever family names it."""
    return float(config.init_std if isinstance(config, LLaDAConfig) else config.initializer_range)


def bench_dtype(preset: str) -> torch.dtype:
    """float32 for the CPU-sized tiny presets, bf16 at real shapes."""
    return torch.float32 if is_tiny(preset) else torch.bfloat16


def bench_model(preset: str, device, **overrides) -> torch.nn.Module:
    """The random model a benchmark measures (seed 0); `overrides` change its config."""
    return build_model(bench_model_config(preset, **overrides), dtype=bench_dtype(preset),
                       device=device, seed=0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or less would silently mean "the default" or crash)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_check_flags_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check-flags", action="store_true",
                        help="developer flag (CI): check the flags as a run would, before any "
                             "model is built, then exit 0 without running")


# --cheap-compile: a developer flag of the scripts that compile (gpu_session.sh's DRY_RUN=1 and
# CI pass it). Dynamo still traces and credit_compile's FX passes still rewrite every graph, so a
# script that no longer compiles still fails; the rewritten graphs then run eagerly, without
# Inductor's code generation (seconds of C++ per graph on a CPU). tests/helpers.py's
# use_cheap_backend makes the same swap for the tests.
INDUCTOR, CHEAP = "inductor", "cheap"


def add_cheap_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cheap-compile", action="store_true",
                        help="developer flag (dry runs, CI): compile with dynamo and the FX "
                             "passes but without Inductor's code generation; rows then say "
                             f"backend {CHEAP!r} and their timings are no measurements")


def use_backend(cheap: bool) -> str:
    """With `cheap` (--cheap-compile), the optimized models and verify compile with the cheap
    backend in this process from now on. Returns `backend_name()`."""
    if cheap:
        from credit_compile.backend import cheap_backend_bindings

        for module, name, value in cheap_backend_bindings():
            setattr(module, name, value)
    return backend_name()


def backend_name() -> str:
    """What the optimized models compile with here: "inductor", or "cheap" (--cheap-compile, or
    the tests' cheap_compile fixture). Every row records it (`backend`), so that no cheap row
    passes for a measurement."""
    from credit_compile import backend, step_cache

    return INDUCTOR if step_cache.make_backend is backend.make_backend else CHEAP


def compile_fn(fn, **kwargs):
    """torch.compile for a script's own compiled baselines (a bare forward): Inductor, or dynamo
    alone (backend "eager") where the optimized models compile cheaply."""
    return torch.compile(fn, backend="eager" if backend_name() == CHEAP else "inductor", **kwargs)


def run_child_process(script: str, spec: dict, env: dict) -> dict:
    """`python script --child SPEC` in a process of its own, with `env`: the JSON object its last
    line of output prints (a failure raises with the end of its stderr)."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec.get('mode', spec)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
