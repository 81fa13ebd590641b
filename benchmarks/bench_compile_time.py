"""Compile time of the denoising step against the number of layers, with and without
`compile_layers_once` (one transformer layer compiled for all of them).

    python benchmarks/bench_compile_time.py                            # tiny shapes, CPU
    python benchmarks/bench_compile_time.py --preset llada-8b --layers 32   # GPU

Every (layers, compile_layers_once) pair runs in a Python process of its own with an empty
Inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR), so its first generate() pays the whole compile:
dynamo's trace, the FX passes, AOTAutograd and Inductor's code generation (C++ on the CPU, Triton
on CUDA), and on CUDA the graph capture. `--repeats` further calls give the ms per step. In
float32 the tokens are compared with the eager reference. Rows (device, torch version, commit)
are appended to benchmarks/results/compile_time.jsonl; each carries the ratio of the compile time
without the flag to the compile time with it, both measured in the same run. Under the developer
flag --cheap-compile (dry runs) each child compiles without Inductor's code generation and its
row says `backend` "cheap": the compile seconds are then dynamo's and the passes' alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(spec: dict) -> dict:
    """One cold measurement, in this process (the child's side)."""
    import torch
    from benchutil import CHEAP, bench_dtype, bench_model_config, use_backend

    import credit_compile as cc
    from credit_compile.models import build_model

    use_backend(spec["backend"] == CHEAP)
    device = torch.device(spec["device"])
    config = bench_model_config(spec["preset"])
    config.n_layers = spec["layers"]
    dtype = bench_dtype(spec["preset"])
    model = build_model(config, dtype=dtype, device=device, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.mask_token_id, (spec["batch"], spec["prompt_length"]),
                        generator=g).to(device)
    decode = cc.DecodeConfig(gen_length=spec["gen_length"], block_length=spec["block_length"],
                             compile_layers_once=spec["compile_layers_once"])
    fast = cc.optimize(model, decode)
    first = fast.generate(ids)
    times = []
    for _ in range(spec["repeats"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fast.generate(ids)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / max(out.nfe, 1))
    equal = None
    if dtype == torch.float32:
        reference = cc.generate_reference(model, ids, config=decode.replace(compile=False))
        equal = bool(torch.equal(reference.sequences, first.sequences))
    return {
        "compile_seconds": first.stats["compile_seconds"],
        "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
        "nfe": out.nfe,
        "runner": out.stats["runner"],
        "tokens_equal_reference": equal,
        "dtype": str(dtype).replace("torch.", ""),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def run_child(spec: dict) -> dict:
    from benchutil import run_child_process

    with tempfile.TemporaryDirectory(prefix="credit_compile_bench_") as cache:
        return run_child_process(__file__, spec, dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache))


def main(argv=None) -> int:
    from benchutil import CHEAP, INDUCTOR, add_cheap_compile_flag, decode_config, positive_int
    from provenance import git_commit

    from credit_compile.models import available_presets

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="tiny", choices=available_presets())
    parser.add_argument("--layers", type=positive_int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--prompt-length", type=positive_int, default=16)
    parser.add_argument("--gen-length", type=positive_int, default=32)
    parser.add_argument("--block-length", type=positive_int, default=16)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--out", default=str(RESULTS / "compile_time.jsonl"))
    add_cheap_compile_flag(parser)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0

    import torch


    try:  # a bad length is a usage error, caught before any child starts
        decode_config(args.preset, gen_length=args.gen_length, block_length=args.block_length)
    except ValueError as exc:
        parser.error(str(exc))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    print(f"{'layers':>6} {'once':>5} {'compile s':>10} {'ms/step':>9} {'NFE':>4} "
          f"{'compile x':>9} {'tokens = ref':>12}")
    for layers in args.layers:
        without = None
        for once in (False, True):
            spec = {"preset": args.preset, "layers": layers, "compile_layers_once": once,
                    "batch": args.batch, "prompt_length": args.prompt_length,
                    "gen_length": args.gen_length, "block_length": args.block_length,
                    "repeats": args.repeats, "device": device,
                    "backend": CHEAP if args.cheap_compile else INDUCTOR}
            result = run_child(spec)
            row = {"device": result.pop("device_name"), "torch": result.pop("torch"),
                   "commit": commit, **spec, **result}
            if once:
                row["compile_speedup"] = without["compile_seconds"] / result["compile_seconds"]
                row["step_time_ratio"] = result["ms_per_step"] / without["ms_per_step"]
            else:
                without = result
            with out.open("a") as f:  # appended as measured
                f.write(json.dumps(row) + "\n")
            print(f"{layers:>6} {str(once):>5} {row['compile_seconds']:>10.2f} "
                  f"{row['ms_per_step']:>9.3f} {row['nfe']:>4} "
                  f"{row.get('compile_speedup', 1.0):>8.2f}x "
                  f"{str(row['tokens_equal_reference']):>12}", flush=True)
    print(f"\n{row['device']}  torch {row['torch']}  commit {commit}  preset {args.preset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
