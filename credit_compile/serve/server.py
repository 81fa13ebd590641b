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
                  on_note=None) -> tuple[Service, WarmStart]:
    """An optimized `model` behind the app. With `cache_dir`, saved compile artifacts are loaded
    first; with `precompile_prompt_tokens`, every bucket shape up to that prompt length and the
    options' `max_batch` is compiled now, and the artifacts saved to `cache_dir`."""
    from ..api import optimize

    options = options or ServeOptions()
    warm = WarmStart()
    if cache_dir is not None:
        warm.artifacts_loaded = load_artifacts(cache_dir)
    shapes = []
    if precompile_prompt_tokens:
        shapes = bucket_shapes(config, options.max_batch, precompile_prompt_tokens)
    fast = optimize(model, config, max_cached_steps=max(8, len(shapes) + 2))
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
    """`credit-compile serve`: blocks until the server is stopped (Ctrl-C, SIGTERM)."""
    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
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
    model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype,
                                                        on_note=note)
    prompt_tokens = None
    if args.precompile:
        prompt_tokens = args.precompile_prompt_tokens or config.prompt_bucket or 16
    service, warm = build_service(model, tokenizer, config, options,
                                  precompile_prompt_tokens=prompt_tokens,
                                  cache_dir=args.cache_dir, on_note=note)
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
