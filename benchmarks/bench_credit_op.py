#!/usr/bin/env python
"""Benchmark of one CreditDecoding step: eager chain vs torch.compile'd chain vs the fused op.

    python benchmarks/bench_credit_op.py              # CUDA: LLaDA shapes (V = 126,464, bf16)
    python benchmarks/bench_credit_op.py --quick      # small set (the CPU default)
    python benchmarks/bench_credit_op.py --sweep      # also time launch configurations (CUDA)

Implementations, per credit layout (dense float32 [B, Lb, V] / sparse with K = Lb slots):
  eager     the reference (`credit_step_{dense,sparse}_eager`), a chain of torch kernels
  compiled  the same reference through torch.compile (Inductor, dynamic shapes: one compile per
            layout for all shapes)
  op        `credit_compile.ops.credit_step_{dense,sparse}`: the Triton op on CUDA, the plain op
            (row-grouped reference) on CPU

Timing: CUDA, `triton.testing.do_bench` median (it clears the L2 cache before every call, so
inputs are not served from cache); CPU, median of time.perf_counter over repeats.
Achieved GB/s counts the minimal bytes: logits read once, credit state read and written once
(dense: 8 B per entry; sparse: 12 B per slot each way), masked read, x0 and conf written.
The peak is measured in the same run by a large device-to-device copy (bytes read + written).
Each result is appended as a JSON line to benchmarks/results/credit_op.jsonl (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from credit_compile import ops  # noqa: E402
from credit_compile.ops.credit_step_reference import (  # noqa: E402
    credit_step_dense_eager,
    credit_step_sparse_eager,
    empty_sparse_state,
)

LLADA_VOCAB = 126464
LLADA_MASK_ID = 126336
ALPHA, BETA, GAMMA = 0.7, 0.8, 0.2


def git_commit() -> str:
    env = os.environ.get("GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001 - no git, not a checkout, ...
        return "unknown"


def triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


def time_ms(fn, device: torch.device, *, cpu_reps: int = 5) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn, device: torch.device) -> float | None:
    """Peak memory allocated by one call beyond what was allocated before it (MiB)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def measure_peak_bandwidth(device: torch.device) -> float:
    """GB/s of a large device-to-device copy, counting bytes read + written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------------


def minimal_bytes(layout: str, batch: int, block: int, vocab: int, elem: int, slots: int) -> int:
    rows = batch * block
    state = 2 * rows * vocab * 4 if layout == "dense" else 2 * rows * slots * (8 + 4)
    return rows * vocab * elem + state + rows * (1 + 8 + 4)


def make_problem(layout, batch, block, vocab, dtype, device, slots):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(batch, block, vocab, device=device, generator=gen) * 3).to(dtype)
    masked = torch.rand(batch, block, device=device, generator=gen) > 0.2
    first = torch.tensor(False, device=device)
    if layout == "dense":
        credit = torch.rand(batch, block, vocab, device=device, generator=gen)
        credit.mul_((torch.rand_like(credit) < 1e-4).float())  # sparse-ish credit, like a run
        state = (credit,)
    else:
        ids, credit = empty_sparse_state(batch, block, slots, device)
        ids[..., : slots // 2] = torch.randint(0, vocab, (batch, block, slots // 2),
                                               device=device, generator=gen)
        credit[..., : slots // 2] = torch.rand(batch, block, slots // 2, device=device,
                                               generator=gen)
        state = (ids, credit)
    return logits, state, masked, first


_COMPILED: dict[str, object] = {}


def implementations(layout: str, with_compile: bool):
    ref = credit_step_dense_eager if layout == "dense" else credit_step_sparse_eager
    op = ops.credit_step_dense if layout == "dense" else ops.credit_step_sparse
    impls = {"eager": ref}
    if with_compile:
        if layout not in _COMPILED:
            _COMPILED[layout] = torch.compile(ref, dynamic=True)
        impls["compiled"] = _COMPILED[layout]
    impls["op"] = op
    return impls


def op_config(layout, rows, vocab, elem, device) -> dict | None:
    if device.type != "cuda" or not ops.triton_ops_registered():
        return None
    from credit_compile.ops.credit_step_sparse_triton import launch_config

    per = elem if layout == "sparse" else elem + 8
    block_v, nsplit, chunk, warps = launch_config(rows, vocab, device, bytes_per_elem=per)
    return {"block_v": block_v, "nsplit": nsplit, "chunk": chunk, "num_warps": warps}


def bench_one(layout, batch, block, vocab, dtype, device, *, slots, with_compile, peak_gbs,
              meta, cpu_reps):
    logits, state, masked, first = make_problem(layout, batch, block, vocab, dtype, device, slots)
    nbytes = minimal_bytes(layout, batch, block, vocab, logits.element_size(), slots)
    rows = []
    eager_ms = None
    for name, fn in implementations(layout, with_compile).items():
        def call(fn=fn):
            return fn(logits, *state, masked, first, ALPHA, BETA, GAMMA, LLADA_MASK_ID % vocab)

        call()  # compile / warm up
        ms = time_ms(call, device, cpu_reps=cpu_reps)
        mem = peak_extra_mb(call, device)
        if name == "eager":
            eager_ms = ms
        gbs = nbytes / (ms * 1e-3) / 1e9
        row = dict(meta)
        row.update({
            "layout": layout, "impl": name, "B": batch, "Lb": block, "V": vocab, "K": slots,
            "dtype": str(dtype).replace("torch.", ""), "ms": round(ms, 5),
            "gbps": round(gbs, 1), "frac_peak": round(gbs / peak_gbs, 3),
            "speedup_vs_eager": round(eager_ms / ms, 2) if eager_ms else None,
            "peak_extra_mib": None if mem is None else round(mem, 1),
            "min_bytes": nbytes,
            "config": op_config(layout, batch * block, vocab, logits.element_size(), device)
            if name == "op" else None,
        })
        rows.append(row)
    del logits, state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def sweep(device, dtype, vocab, meta, peak_gbs):
    """Time the Triton launchers over launch configurations (for choosing the defaults)."""
    from credit_compile.ops import (
        launch_credit_step_dense_triton,
        launch_credit_step_sparse_triton,
    )

    rows = []
    shapes = [(32, 64), (8, 32), (1, 32)]
    for layout in ("sparse", "dense"):
        launcher = (launch_credit_step_dense_triton if layout == "dense"
                    else launch_credit_step_sparse_triton)
        for batch, block in shapes:
            logits, state, masked, first = make_problem(layout, batch, block, vocab, dtype,
                                                        device, block)
            nbytes = minimal_bytes(layout, batch, block, vocab, logits.element_size(), block)
            configs = [dict(block_v=bv, num_warps=w) for bv in (2048, 4096, 8192)
                       for w in (4, 8, 16)] if batch * block >= 1024 else []
            if batch * block < 1024:
                configs += [dict(nsplit=n) for n in (1, 2, 4, 8, 16, 32)]
            for cfg in configs:
                def call(cfg=cfg):
                    return launcher(logits, *state, masked, first, ALPHA, BETA, GAMMA,
                                    LLADA_MASK_ID, **cfg)

                try:
                    call()
                    ms = time_ms(call, device)
                except Exception as exc:  # noqa: BLE001 - e.g. out of resources
                    print(f"sweep {layout} {batch}x{block} {cfg}: {type(exc).__name__}: {exc}")
                    continue
                gbs = nbytes / (ms * 1e-3) / 1e9
                row = dict(meta)
                row.update({"layout": layout, "impl": "sweep", "B": batch, "Lb": block,
                            "V": vocab, "dtype": str(dtype).replace("torch.", ""),
                            "config": cfg, "ms": round(ms, 5), "gbps": round(gbs, 1),
                            "frac_peak": round(gbs / peak_gbs, 3)})
                rows.append(row)
                print(f"sweep {layout:6s} B={batch:2d} Lb={block:2d} {str(cfg):36s} "
                      f"{ms:8.4f} ms {gbs:7.1f} GB/s {gbs / peak_gbs:6.1%}", flush=True)
            del logits, state
    return rows


def print_table(rows):
    head = (f"{'layout':6s} {'B':>3s} {'Lb':>3s} {'V':>7s} {'dtype':8s} {'impl':9s} "
            f"{'ms':>9s} {'GB/s':>8s} {'%peak':>6s} {'speedup':>8s} {'+MiB':>8s}  config")
    print(head)
    print("-" * len(head))
    for r in rows:
        mem = "" if r.get("peak_extra_mib") is None else f"{r['peak_extra_mib']:.0f}"
        cfg = r.get("config") or ""
        print(f"{r['layout']:6s} {r['B']:3d} {r['Lb']:3d} {r['V']:7d} {r['dtype']:8s} "
              f"{r['impl']:9s} {r['ms']:9.4f} {r['gbps']:8.1f} {r['frac_peak']:6.1%} "
              f"{(r['speedup_vs_eager'] or 0):7.2f}x {mem:>8s}  {cfg}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (default on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled chain")
    parser.add_argument("--sweep", action="store_true", help="time launch configs (CUDA)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "credit_op.jsonl"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    quick = args.quick or device.type != "cuda"
    if quick:
        vocab = 32768 if device.type == "cuda" else 8192
        shapes = [(1, 8), (2, 16)]
    else:
        vocab = LLADA_VOCAB
        shapes = [(b, lb) for b in (1, 8, 32) for lb in (32, 64)]

    peak = measure_peak_bandwidth(device)
    meta = {
        "device": device_name(device), "torch": torch.__version__, "triton": triton_version(),
        "commit": git_commit(), "peak_copy_gbps": round(peak, 1),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "timer": "triton.testing.do_bench median" if device.type == "cuda"
        else "perf_counter median",
    }
    print(f"device {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
          f"commit {meta['commit']}  peak copy {peak:.0f} GB/s", flush=True)

    rows = []
    if args.sweep and device.type == "cuda":
        sweep_rows = sweep(device, dtype, vocab, meta, peak)
        sweep_out = Path(args.out).with_name("credit_op_sweep.jsonl")
        sweep_out.parent.mkdir(parents=True, exist_ok=True)
        with sweep_out.open("a") as fh:
            for r in sweep_rows:
                fh.write(json.dumps(r) + "\n")

    for layout in ("sparse", "dense"):
        for batch, block in shapes:
            new = bench_one(layout, batch, block, vocab, dtype, device, slots=block,
                            with_compile=not args.no_compile, peak_gbs=peak, meta=meta,
                            cpu_reps=3 if quick else 5)
            for r in new:
                print(f"{layout:6s} B={batch:2d} Lb={block:2d} {r['impl']:9s} {r['ms']:9.4f} ms "
                      f"{r['gbps']:8.1f} GB/s {r['frac_peak']:6.1%} "
                      f"x{r['speedup_vs_eager']}", flush=True)
            rows += new

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
