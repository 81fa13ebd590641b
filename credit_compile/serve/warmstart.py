"""Warm start: compile the served shapes before the port opens, and keep the compiled artifacts
in a cache directory so that a restarted server (or a fresh machine given the directory) loads
them instead of running Inductor again.

The artifacts are torch's portable compile caches (`torch.compiler.save_cache_artifacts` /
`load_cache_artifacts`: Inductor's generated code and AOTAutograd's graphs) in one file. They do
not hold the CPU's compiled C++ kernels, which live in Inductor's own on-disk cache: the cache
directory keeps that too (`keep_kernels_in`). Dynamo still traces the step at start-up
(seconds); Inductor's code generation and the kernels' builds are skipped.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("credit_compile.serve")

ARTIFACTS_FILE = "compile_artifacts.bin"


def keep_kernels_in(cache_dir) -> str | None:
    """Puts Inductor's on-disk cache (the built C++ and Triton kernels) under `cache_dir`/inductor
    unless the user set TORCHINDUCTOR_CACHE_DIR, so that a restart with the same directory builds
    no kernel again. Call it before the first compile of the process. The folder used, or None
    where the user's setting stands."""
    if _users_cache_dir() is not None:
        return None
    folder = str((Path(cache_dir) / "inductor").resolve())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    clear = getattr(sys.modules.get("torch._inductor.utils"), "clear_caches", None)
    if clear is not None:  # paths Inductor derived from the old folder
        clear()
    return folder


def _users_cache_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR where the user set it. Importing Inductor sets it to its default
    folder (one process may import it before the server starts): that is nobody's choice."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    utils = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    default = getattr(utils, "default_cache_dir", None)
    if value and default is not None and os.path.abspath(value) == default():
        return None
    return value or None


def load_artifacts(cache_dir) -> int:
    """Loads the artifacts saved in `cache_dir` into torch's compile caches; the number of
    entries loaded (0 where there are none yet). A file torch cannot read is set aside and
    reported: the server then compiles cold and writes a new one."""
    import torch

    path = Path(cache_dir) / ARTIFACTS_FILE
    if not path.is_file():
        return 0
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as error:  # another torch version's, or a truncated file
        log.warning("compile artifacts in %s not loaded (%r): compiling cold", path, error)
        return 0
    return 0 if info is None else sum(len(v) for v in info.artifacts.values())


def save_artifacts(cache_dir) -> int:
    """Writes every artifact compiled or loaded in this process to `cache_dir` (atomically);
    the bytes written (0 where there is nothing to save)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, _ = saved
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".artifacts-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, directory / ARTIFACTS_FILE)
    return len(data)


def bucket_shapes(config, max_batch: int, max_prompt_tokens: int) -> list[tuple[int, int]]:
    """(batch size, prompt length) of every compiled step that requests of up to `max_batch`
    prompts of up to `max_prompt_tokens` tokens can need, with the config's buckets."""
    batch_step = config.batch_bucket or 1
    prompt_step = config.prompt_bucket or 1
    batches = range(batch_step, math.ceil(max_batch / batch_step) * batch_step + 1, batch_step)
    lengths = range(prompt_step, math.ceil(max_prompt_tokens / prompt_step) * prompt_step + 1,
                    prompt_step)
    return [(b, p) for b in batches for p in lengths]


def inductor_cache_counts() -> tuple[int, int]:
    """(graphs Inductor compiled, graphs it took from its cache) in this process so far: how a
    warm start shows that it compiled nothing (torch's own counters; (0, 0) where absent)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0, 0
    inductor = counters.get("inductor", {})
    return inductor.get("fxgraph_cache_miss", 0), inductor.get("fxgraph_cache_hit", 0)


def precompile(fast, shapes, on_note=None) -> float:
    """Compiles the step of each (batch, prompt length) in `shapes` (left-padded, as the
    scheduler's batches); the seconds taken."""
    start = time.perf_counter()
    for batch, length in shapes:
        seconds = fast.precompile(batch, max(length, 2), padded=True)
        if on_note is not None:
            on_note(f"precompiled batch {batch} x prompt {length}: {seconds:.1f} s")
    return time.perf_counter() - start
