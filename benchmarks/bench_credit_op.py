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

Timing: CUDA, two numbers per row. `ms`: `triton.testing.do_bench` median of single eager calls
(it clears the L2 cache before every call; includes the host launch overhead whenever that is
longer than the GPU work, which is the case for small shapes). `ms_graph`: the calls captured in
a CUDA graph over enough rotating input sets to exceed 256 MiB (so the L2 cache does not serve
them) and replayed (`triton.testing.do_bench_cudagraph` median): the GPU time, what a
CUDA-graphed decoding loop pays. CPU: median of time.perf_counter over repeats.
Achieved GB/s counts the minimal bytes: logits read once, credit state read and written once
(dense: 8 B per entry; sparse: 12 B per slot each way), masked read, x0 and conf written.
The peak is measured in the same run by a large device-to-device copy (bytes read + written).
Each result is appended as a JSON line to benchmarks/results/credit_op.jsonl (or --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from provenance import git_commit  # noqa: E402

from credit_compile import ops  # noqa: E402
from credit_compile.ops.credit_step_reference import (  # noqa: E402
    credit_step_dense_eager,
    credit_step_sparse_eager,
    empty_sparse_state,
)

LLADA_VOCAB = 126464
LLADA_MASK_ID = 126336
ALPHA, BETA, GAMMA = 0.7, 0.8, 0.2


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


ROTATE_BYTES = 256 << 20  # > 2x the H100's 50 MB L2


def sets_for(nbytes: int, device: torch.device) -> int:
    """Input sets to rotate through so that one pass over them does not fit in the L2 cache."""
    if device.type != "cuda":
        return 1
    return max(1, min(32, -(-ROTATE_BYTES // max(nbytes, 1))))


def time_graph_ms(calls, device: torch.device) -> float | None:
    """GPU time of one call: `calls` (one per rotating input set) captured in a CUDA graph and
    replayed (`triton.testing.do_bench_cudagraph`, median), divided by len(calls). No host launch
    overhead: what a CUDA-graphed decoding loop pays."""
    if device.type != "cuda":
        return None
    import triton.testing

    def run_all():
        for call in calls:
            call()

    try:
        ms = triton.testing.do_bench_cudagraph(run_all, rep=30, return_mode="median")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"  graph timing failed: {type(exc).__name__}: {exc}")
        return None
    return float(ms) / len(calls)


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
    ms = time_ms(functools.partial(dst.copy_, src), device)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------------


def minimal_bytes(layout: str, batch: int, block: int, vocab: int, elem: int, slots: int) -> int:
    rows = batch * block
    state = 2 * rows * vocab * 4 if layout == "dense" else 2 * rows * slots * (8 + 4)
    return rows * vocab * elem + state + rows * (1 + 8 + 4)


def make_problem(layout, batch, block, vocab, dtype, device, slots, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
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


def op_config(layout, rows, vocab, dtype, device) -> dict | None:
    if device.type != "cuda" or not ops.triton_ops_registered():
        return None
    from credit_compile.ops.credit_step_dense_triton import DENSE_LANE
    from credit_compile.ops.credit_step_sparse_triton import default_lane, launch_config

    elem = torch.empty((), dtype=dtype).element_size()
    block_v, nsplit, chunk, warps = launch_config(rows, vocab, device, layout=layout,
                                                  elem_size=elem)
    lane = default_lane(elem, block_v) if layout == "sparse" else min(DENSE_LANE, block_v)
    return {"block_v": block_v, "nsplit": nsplit, "num_warps": warps, "lane": lane}


def bench_one(layout, batch, block, vocab, dtype, device, *, slots, with_compile, peak_gbs,
              meta, cpu_reps):
    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = minimal_bytes(layout, batch, block, vocab, elem, slots)
    problems = [make_problem(layout, batch, block, vocab, dtype, device, slots, seed=i)
                for i in range(sets_for(nbytes, device))]
    rows = []
    eager_ms = eager_graph_ms = None
    for name, fn in implementations(layout, with_compile).items():
        calls = [
            (lambda p=p, fn=fn: fn(p[0], *p[1], p[2], p[3], ALPHA, BETA, GAMMA,
                                   LLADA_MASK_ID % vocab))
            for p in problems
        ]
        call = calls[0]
        call()  # compile / warm up
        ms = time_ms(call, device, cpu_reps=cpu_reps)
        graph_ms = time_graph_ms(calls, device)
        mem = peak_extra_mb(call, device)
        if name == "eager":
            eager_ms, eager_graph_ms = ms, graph_ms
        gbs = nbytes / (ms * 1e-3) / 1e9
        row = dict(meta)
        row.update({
            "layout": layout, "impl": name, "B": batch, "Lb": block, "V": vocab, "K": slots,
            "dtype": str(dtype).replace("torch.", ""), "ms": round(ms, 5),
            "gbps": round(gbs, 1), "frac_peak": round(gbs / peak_gbs, 3),
            "speedup_vs_eager": round(eager_ms / ms, 2) if eager_ms else None,
            "ms_graph": None if graph_ms is None else round(graph_ms, 5),
            "gbps_graph": None if graph_ms is None else round(nbytes / (graph_ms * 1e-3) / 1e9, 1),
            "frac_peak_graph": None if graph_ms is None
            else round(nbytes / (graph_ms * 1e-3) / 1e9 / peak_gbs, 3),
            "speedup_vs_eager_graph": round(eager_graph_ms / graph_ms, 2)
            if graph_ms and eager_graph_ms else None,
            "rotating_sets": len(problems),
            "peak_extra_mib": None if mem is None else round(mem, 1),
            "min_bytes": nbytes,
            "config": op_config(layout, batch * block, vocab, dtype, device)
            if name == "op" else None,
        })
        rows.append(row)
    del problems
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def sweep(device, dtype, vocab, meta, peak_gbs, shapes=((32, 64), (1, 32), (8, 32), (8, 64)),
          tiles=((1024, 4), (2048, 4), (2048, 8), (4096, 8)), lanes=None,
          splits=(1, 2, 4, 8, 16)):
    """Time the Triton launchers over launch configurations (for choosing the defaults): tile
    size x warps x per-thread groups (LANE; 0 = block-wide reductions) with one program per row
    for many rows, the V split for few rows. CUDA-graph timing over rotating input sets."""
    from credit_compile.ops import (
        launch_credit_step_dense_triton,
        launch_credit_step_sparse_triton,
    )

    rows = []
    for layout in ("sparse", "dense"):
        launcher = (launch_credit_step_dense_triton if layout == "dense"
                    else launch_credit_step_sparse_triton)
        layout_lanes = lanes or ((0, 8) if layout == "sparse" else (0, 4))
        for batch, block in shapes:
            nbytes = minimal_bytes(layout, batch, block, vocab,
                                   torch.empty((), dtype=dtype).element_size(), block)
            problems = [make_problem(layout, batch, block, vocab, dtype, device, block, seed=i)
                        for i in range(sets_for(nbytes, device))]
            if batch * block >= 1024:  # one program per row: tile size, warps, lanes
                configs = [dict(block_v=bv, num_warps=w, lane=ln, nsplit=1)
                           for bv, w in tiles for ln in layout_lanes]
            else:  # few rows: how far to split V (default tiles and lanes)
                configs = [dict(nsplit=n) for n in splits]
            for cfg in configs:
                calls = [
                    (lambda p=p, cfg=cfg, launcher=launcher: launcher(
                        p[0], *p[1], p[2], p[3], ALPHA, BETA, GAMMA, LLADA_MASK_ID % vocab, **cfg))
                    for p in problems
                ]
                try:
                    calls[0]()
                    ms = time_graph_ms(calls, device)
                    if ms is None:
                        ms = time_ms(calls[0], device)
                except Exception as exc:  # noqa: BLE001 - e.g. out of resources
                    print(f"sweep {layout} {batch}x{block} {cfg}: {type(exc).__name__}: {exc}")
                    continue
                gbs = nbytes / (ms * 1e-3) / 1e9
                row = dict(meta)
                row.update({"layout": layout, "impl": "sweep", "B": batch, "Lb": block,
                            "V": vocab, "dtype": str(dtype).replace("torch.", ""),
                            "config": cfg, "ms_graph": round(ms, 5), "gbps_graph": round(gbs, 1),
                            "frac_peak_graph": round(gbs / peak_gbs, 3),
                            "rotating_sets": len(problems)})
                rows.append(row)
                print(f"sweep {layout:6s} B={batch:2d} Lb={block:2d} {str(cfg):52s} "
                      f"{ms:8.4f} ms {gbs:7.1f} GB/s {gbs / peak_gbs:6.1%}", flush=True)
            del problems
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_table(rows):
    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    head = (f"{'layout':6s} {'B':>3s} {'Lb':>3s} {'V':>7s} {'dtype':8s} {'impl':9s} "
            f"{'ms':>8s} {'GB/s':>7s} {'%peak':>6s} {'speedup':>7s} | {'graph ms':>8s} "
            f"{'GB/s':>7s} {'%peak':>6s} {'speedup':>7s} | {'+MiB':>6s}  config")
    print(head)
    print("-" * len(head))
    for r in rows:
        pct = None if r.get("frac_peak_graph") is None else 100 * r["frac_peak_graph"]
        print(f"{r['layout']:6s} {r['B']:3d} {r['Lb']:3d} {r['V']:7d} {r['dtype']:8s} "
              f"{r['impl']:9s} {r['ms']:8.4f} {r['gbps']:7.1f} {100 * r['frac_peak']:5.1f}% "
              f"{f(r['speedup_vs_eager'], '6.2f')}x | {f(r.get('ms_graph'), '8.4f')} "
              f"{f(r.get('gbps_graph'), '7.1f')} {f(pct, '5.1f')}% "
              f"{f(r.get('speedup_vs_eager_graph'), '6.2f')}x | "
              f"{f(r.get('peak_extra_mib'), '6.0f')}  {r.get('config') or ''}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (default on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="dtype of the logits")
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
