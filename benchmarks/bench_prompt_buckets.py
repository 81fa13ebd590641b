"""A stream of requests with varied prompt lengths: what prompt buckets save, in one process.

    python benchmarks/bench_prompt_buckets.py                         # tiny model, CPU, minutes
    python benchmarks/bench_prompt_buckets.py --preset llada-8b --requests 8 --buckets 0 64

The same requests (batch 1, prompt lengths drawn once from [--min-length, --max-length]) go
through `optimize(model, prompt_bucket=b)` for every b in --buckets (0 = no bucket: one compiled
step per distinct length), each setting in a process of its own with an empty Inductor cache, so
no setting reuses another's compiled kernels. Per setting: compiled steps, compile and decode seconds,
tokens/s over the whole stream (compiles included) and decoding only, and whether every request's
tokens equal the unbucketed run's. Ratios are against the unbucketed setting of the same run. Rows
are appended to benchmarks/results/prompt_buckets.jsonl with device, torch version, commit and the
setting's DecodeConfig, and `backend`: "inductor", or "cheap" under the developer flag
--cheap-compile (dry runs: dynamo and the FX passes without Inductor; no measurement). Random
weights; the tiny presets are drawn with init_std 0.5, as in bench_generate.py (at the presets'
0.02 their confidences tie and each request took one step per block).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchutil import (
    add_cheap_compile_flag,
    bench_dtype,
    bench_model,
    bench_model_config,
    compile_fn,
    decode_config,
    is_tiny,
    non_negative_int,
    positive_int,
    use_backend,
)
from provenance import git_commit

import credit_compile as cc
from credit_compile.models import available_presets

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_requests(count: int, min_length: int, max_length: int, vocab: int, mask_id: int, device):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=g).tolist()
    return [torch.randint(0, min(vocab, mask_id), (1, n), generator=g).to(device) for n in lengths]


def serve(model, requests, config: cc.DecodeConfig) -> dict:
    """Every request through one fresh optimized model; per-request compile and decode times."""
    fast = cc.optimize(model, config, max_cached_steps=len(requests))
    compile_s, decode_s, latency, outputs, nfe = [], [], [], [], 0
    for ids in requests:
        sync(ids.device)
        start = time.perf_counter()
        out = fast.generate(ids)
        sync(ids.device)
        latency.append(time.perf_counter() - start)
        compile_s.append(fast.last_stats["compile_seconds"])
        decode_s.append(latency[-1] - compile_s[-1])
        outputs.append(out.sequences.tolist())
        nfe += out.nfe
    tokens = len(requests) * config.gen_length
    return {
        "compiled_steps": fast.cached_steps,
        "total_seconds": sum(latency),
        "compile_seconds": sum(compile_s),
        "decode_seconds": sum(decode_s),
        "tokens_per_s": tokens / sum(latency),
        "decode_tokens_per_s": tokens / sum(decode_s),
        "nfe": nfe,
        "max_latency_s": max(latency),
        "outputs": outputs,
    }


def worker(args, bucket: int, result_path: str) -> None:
    """One setting, in this (fresh) process."""
    device = torch.device(args.device)
    use_backend(args.cheap_compile)
    model, config, requests, _ = setup(args, device)
    # Process warm-up (Inductor's imports, the C++ or Triton toolchain), charged to no setting.
    compile_fn(lambda t: t * 2 + 1, fullgraph=True)(torch.ones(8, device=device))
    cc.generate_reference(model, requests[0], config=config)
    result = serve(model, requests, config.replace(prompt_bucket=bucket or None))
    Path(result_path).write_text(json.dumps(result))


def setup(args, device, with_model: bool = True):
    """(model or None, decode config, requests, dtype): the same in the parent and every worker."""
    tiny = is_tiny(args.preset)
    model_config = bench_model_config(args.preset)
    gen_length = args.gen_length if args.gen_length is not None else (32 if tiny else 256)
    block_length = args.block_length if args.block_length is not None else (16 if tiny else 32)
    config = decode_config(args.preset, gen_length=gen_length, block_length=block_length,
                           sync_every=8)
    requests = make_requests(args.requests, args.min_length, args.max_length,
                             model_config.vocab_size, model_config.mask_token_id, device)
    model = bench_model(args.preset, device) if with_model else None
    return model, config, requests, bench_dtype(args.preset)


def run_setting(argv: list[str], bucket: int, cold_cache: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        result_path = str(Path(scratch) / "result.json")
        env = dict(os.environ)
        if cold_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(scratch) / "inductor")
        subprocess.run([sys.executable, __file__, *argv, "--worker-bucket", str(bucket),
                        "--worker-result", result_path], env=env, check=True)
        return json.loads(Path(result_path).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=available_presets())
    parser.add_argument("--requests", type=positive_int, default=12)
    parser.add_argument("--min-length", type=positive_int, default=8)
    parser.add_argument("--max-length", type=positive_int, default=64)
    parser.add_argument("--buckets", type=non_negative_int, nargs="+", default=[0, 16, 32, 64],
                        help="prompt_bucket values; 0 = no bucket (the baseline, always run first)")
    parser.add_argument("--gen-length", type=positive_int, default=None,
                        help="default: 32 on tiny presets, 256 otherwise")
    parser.add_argument("--block-length", type=positive_int, default=None,
                        help="default: 16 on tiny presets, 32 otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(RESULTS / "prompt_buckets.jsonl"))
    parser.add_argument("--warm-cache", action="store_true",
                        help="let the settings share Inductor's cache (quick, for tests; compile "
                             "times are then not those of a cold start)")
    add_cheap_compile_flag(parser)
    parser.add_argument("--worker-bucket", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.min_length > args.max_length:
        parser.error(f"--min-length {args.min_length} is above --max-length {args.max_length}")

    if args.worker_bucket is not None:
        worker(args, args.worker_bucket, args.worker_result)
        return 0

    device = torch.device(args.device)
    # The parent only orchestrates: each worker builds the model (an 8B one needs its memory).
    try:  # a bad length is a usage error, caught before any worker starts
        _, config, requests, dtype = setup(args, device, with_model=False)
    except ValueError as exc:
        parser.error(str(exc))
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "commit": git_commit(), "preset": args.preset,
        "dtype": str(dtype).replace("torch.", ""), "init_std": bench_model_config(args.preset).init_std,
        "requests": len(requests), "distinct_lengths": len({ids.shape[1] for ids in requests}),
        "min_length": args.min_length, "max_length": args.max_length,
        "gen_length": config.gen_length, "block_length": config.block_length,
        "cold_inductor_cache": not args.warm_cache, "backend": use_backend(args.cheap_compile),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, baseline = [], None
    for bucket in sorted(set(args.buckets) | {0}):  # 0 first: the baseline every ratio uses
        result = run_setting(argv if argv is not None else sys.argv[1:], bucket,
                             cold_cache=not args.warm_cache)
        outputs = result.pop("outputs")
        baseline = baseline or {**result, "outputs": outputs}
        row = {**meta, "prompt_bucket": bucket or None,
               "config": dataclasses.asdict(config.replace(prompt_bucket=bucket or None)),
               "max_cached_steps": len(requests), **result,
               "tokens_equal_unbucketed": outputs == baseline["outputs"],
               "speedup_vs_unbucketed": baseline["total_seconds"] / result["total_seconds"],
               "decode_speedup_vs_unbucketed":
                   baseline["decode_seconds"] / result["decode_seconds"]}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    print(f"\n{meta['device']}  torch {meta['torch']}  commit {meta['commit']}  preset "
          f"{args.preset}  {len(requests)} requests, {meta['distinct_lengths']} distinct prompt "
          f"lengths in [{args.min_length}, {args.max_length}], gen {config.gen_length}")
    print(f"{'bucket':>7}{'steps':>7}{'compile s':>11}{'decode s':>10}{'total s':>9}"
          f"{'tok/s':>9}{'decode tok/s':>14}{'vs none':>9}{'equal':>7}")
    for r in rows:
        print(f"{str(r['prompt_bucket']):>7}{r['compiled_steps']:>7}{r['compile_seconds']:>11.1f}"
              f"{r['decode_seconds']:>10.2f}{r['total_seconds']:>9.1f}{r['tokens_per_s']:>9.1f}"
              f"{r['decode_tokens_per_s']:>14.1f}{r['speedup_vs_unbucketed']:>8.2f}x"
              f"{str(r['tokens_equal_unbucketed']):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
