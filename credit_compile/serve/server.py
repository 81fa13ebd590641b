"""Start-up: load the model, optimize it, warm it (precompile, cache artifacts), then serve.

    credit-compile serve --precompile --cache-dir ~/.cache/credit-compile   # the CLI's entry
    service = build_service(model, tokenizer, config, options)               # in-process
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import uvicorn

from .app import ServeOptions, Service
from .warmstart import (
    bucket_shapes,
    inductor_cache_counts,
    keep_kernels_in,
    load_artifacts,
    precompile,
    save_artifacts,
)

log = logging.getLogger("credit_compile.serve")


@dataclass
class WarmStart:
    """What start-up did: artifacts loaded, shapes precompiled, seconds taken."""

    artifacts_loaded: int = 0
    shapes: int = 0
    precompile_seconds: float = 0.0
    artifacts_saved: int = 0
    inductor_compiled: int = 0  # graphs Inductor generated code for while precompiling
    inductor_cached: int = 0  # graphs it took from its cache (the artifacts) instead


def build_service(model, tokenizer, config, options: ServeOptions | None = None, *,
                  precompile_prompt_tokens: int | None = None, cache_dir=None,
                  on_note=None, tensor_parallel=None) -> tuple[Service, WarmStart]:
    """An optimized `model` behind the app. With `cache_dir`, saved compile artifacts are loaded
    first; with `precompile_prompt_tokens`, every bucket shape up to that prompt length and the
    options' `max_batch` is compiled now, and the artifacts saved to `cache_dir`. With
    `tensor_parallel`, every rank builds it alike (`optimize`'s argument)."""
    from ..api import optimize

    options = options or ServeOptions()
    warm = WarmStart()
    if cache_dir is not None:
        warm.artifacts_loaded = load_artifacts(cache_dir)
    shapes = []
    if precompile_prompt_tokens:
        shapes = bucket_shapes(config, options.max_batch, precompile_prompt_tokens)
    fast = optimize(model, config, max_cached_steps=max(8, len(shapes) + 2),
                    tensor_parallel=tensor_parallel)
    service = Service(fast, tokenizer, options)
    if shapes:
        warm.shapes = len(shapes)
        compiled, cached = inductor_cache_counts()
        warm.precompile_seconds = precompile(fast, shapes, on_note)
        now_compiled, now_cached = inductor_cache_counts()
        warm.inductor_compiled, warm.inductor_cached = now_compiled - compiled, now_cached - cached
        if cache_dir is not None:
            warm.artifacts_saved = save_artifacts(cache_dir)
    return service, warm


def serve(args, config) -> int:
    """`credit-compile serve`: blocks until the server is stopped (Ctrl-C, SIGTERM). With
    `--tensor-parallel N`, one rank of torchrun's N: rank 0 serves, the others follow it
    (`ranks`)."""
    start = time.perf_counter()
    ranks, rank = getattr(args, "tensor_parallel", None), 0
    if ranks is not None:  # torchrun's environment; the process group before anything else
        import torch.distributed as dist

        from ..distributed import init_from_torchrun

        rank_device = init_from_torchrun(ranks, args.device)
        rank = dist.get_rank()

    def note(text: str) -> None:
        if rank == 0:  # rank 0 speaks for all
            print(text, file=sys.stderr, flush=True)
    # Before the imports below: importing Inductor fixes its cache folder.
    if args.cache_dir is not None and (kernels := keep_kernels_in(args.cache_dir)):
        note(f"Inductor's kernels cached in {kernels}")
    from ..models.loading import load_model_and_tokenizer

    name = args.served_model_name or ("credit-compile-default" if args.model is None
                                      else args.model.rstrip("/").rsplit("/", 1)[-1])
    options = ServeOptions(model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                           batch_wait=args.batch_wait_ms / 1000,
                           request_timeout=args.request_timeout,
                           shutdown_grace=args.shutdown_grace)
    if ranks is None:
        model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype,
                                                            on_note=note)
    else:  # loaded on the CPU and sharded there: a rank's device holds its shard only
        from ..distributed import shard_model

        model, tokenizer, _ = load_model_and_tokenizer(args.model, "cpu", args.dtype,
                                                       on_note=note)
        model, device = shard_model(model, ranks).to(rank_device), rank_device
    prompt_tokens = None
    if args.precompile:
        prompt_tokens = args.precompile_prompt_tokens or config.prompt_bucket or 16
    service, warm = build_service(model, tokenizer, config, options,
                                  precompile_prompt_tokens=prompt_tokens,
                                  cache_dir=args.cache_dir, on_note=note, tensor_parallel=ranks)
    if ranks is not None:
        from .ranks import Leader, follow

        if rank != 0:  # every call rank 0's scheduler makes, until it shuts down
            try:
                follow(service.fast)
            finally:
                dist.destroy_process_group()
            return 0
        leader = Leader(service.fast)
        service.scheduler.model = leader
        # After the scheduler has closed (its last call ended on every rank).
        service.on_shutdown.append(leader.stop)
    if args.cache_dir is not None:
        note(f"compile cache {args.cache_dir}: {warm.artifacts_loaded} artifacts loaded"
             + (f", {warm.artifacts_saved} bytes saved" if warm.artifacts_saved else ""))
    if warm.shapes:
        note(f"precompiled {warm.shapes} shapes in {warm.precompile_seconds:.1f} s (Inductor: "
             f"{warm.inductor_compiled} graphs compiled, {warm.inductor_cached} from the cache)")
    note(f"serving {name!r} on {device} at http://{args.host}:{args.port}/v1 "
         f"(start-up {time.perf_counter() - start:.1f} s)")
    if args.cache_dir is not None:  # shapes compiled while serving join the cache
        service.on_shutdown.append(lambda: save_artifacts(args.cache_dir))
    # uvicorn handles SIGINT/SIGTERM: it stops taking connections, waits for those open (at
    # most the grace), runs the app's shutdown (the scheduler's), then exits by the signal.
    uvicorn.run(service.app(), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(options.shutdown_grace) or None)
    return 0
