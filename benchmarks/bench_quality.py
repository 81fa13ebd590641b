"""Held-out accuracy against NFE for the shipped default model: LLaDA's sampler, threshold
decoding, Fast-dLLM's factor rule and CreditDecoding.

    python benchmarks/bench_quality.py [--n 200] [--seed 1234]
        [--output benchmarks/results/quality.jsonl] [--plot docs/quality.png]

The held-out set (`credit_compile.training.tasks.held_out_set`) is a fixed slice of prompts the
training never saw. Each item is decoded alone (batch 1, eager reference decoder, greedy,
gen_length 16 in blocks of 8 unless a row says otherwise), so the NFE is that item's own count of
forward passes; accuracy is exact match of the text before the first EOS, except for the
`permute` task, where any ordering of the prompt's digits counts (`tasks.is_correct`).

Settings: LLaDA's sampler at several step counts; threshold decoding and CreditDecoding over tau;
CreditDecoding over alpha at two taus; both over block length; both with each KV cache
(kv_cache="prompt" and "dual", Fast-dLLM's PrefixCache made static and its DualCache, both
approximate) over block length and at two taus, beside the same settings without it (`kv_cache`
sweep rows against their uncached `tau`/`block` twins), and with the cache refreshed every
k steps of a block too (`kv_refresh` sweep, tau 0.9); the factor rule over its factor (`factor`
sweep). Every row counts the full-canvas forwards per item (`mean_full_forwards`: NFE without a
cache; with one, the refreshes). The summary gives, for every
CreditDecoding point, the NFE threshold decoding needs for the same accuracy (linear interpolation
on threshold's accuracy-NFE curve) and the ratio. Rows are appended to the JSONL, each with the
full DecodeConfig it decoded with under "config"; the plot is redrawn from this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch
from benchutil import positive_int
from provenance import git_commit

HERE = Path(__file__).resolve().parent
GEN, BLOCK = 16, 8
BASELINE_STEPS = (2, 4, 8, 16)
TAUS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
ALPHAS = (0.3, 1.0, 1.5, 2.5)
ALPHA_TAUS = (0.7, 0.9)
BLOCKS = (4, 16)
CACHE_TAUS = (0.7, 0.9)
CACHES = ("prompt", "dual")
REFRESHES = ((BLOCK, 2), (16, 2), (16, 4))  # (block_length, kv_cache_refresh)
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEPS = ("steps", "tau", "alpha", "block", "kv_cache", "kv_refresh", "factor")


def decode_config(decode: dict):
    """The full DecodeConfig of one setting (eager, so no compile and no CUDA graphs)."""
    from credit_compile import DecodeConfig

    return DecodeConfig(gen_length=GEN, compile=False, cuda_graphs="off", **decode)


def evaluate(model, tokenizer, items, config) -> dict:
    from credit_compile.reference import generate
    from credit_compile.training.tasks import is_correct

    correct, nfe, full, per_task = 0, 0, 0, {}
    canvas = [0]

    def count_full_forwards(module, args, kwargs):
        nonlocal full
        full += (args[0] if args else kwargs["input_ids"]).shape[1] == canvas[0]

    hook = model.register_forward_pre_hook(count_full_forwards, with_kwargs=True)
    try:
        for task, prompt, answer in items:
            batch = tokenizer([prompt])
            canvas[0] = batch["input_ids"].shape[1] + config.gen_length
            out = generate(model, batch["input_ids"], batch["attention_mask"], config=config)
            ok = is_correct(task, prompt, answer, tokenizer.answer(out.generated[0]))
            correct += ok
            nfe += out.nfe
            hit, total = per_task.get(task, (0, 0))
            per_task[task] = (hit + ok, total + 1)
    finally:
        hook.remove()
    n = len(items)
    return {"accuracy": correct / n, "mean_nfe": nfe / n, "mean_full_forwards": full / n,
            "accuracy_by_task": {t: h / c for t, (h, c) in sorted(per_task.items())}}


def configs(alpha: float):
    """(method, sweep, decode kwargs) of every setting measured."""
    for steps in BASELINE_STEPS:
        yield "llada", "steps", {"strategy": "llada", "steps": steps, "block_length": BLOCK}
    for tau in TAUS:
        yield "threshold", "tau", {"strategy": "threshold", "tau": tau, "block_length": BLOCK}
    for tau in TAUS:
        yield "credit", "tau", {"strategy": "credit", "tau": tau, "alpha": alpha,
                                "block_length": BLOCK}
    for tau in ALPHA_TAUS:
        for a in ALPHAS:
            yield "credit", "alpha", {"strategy": "credit", "tau": tau, "alpha": a,
                                      "block_length": BLOCK}
    for block in BLOCKS:
        yield "threshold", "block", {"strategy": "threshold", "tau": 0.9, "block_length": block}
        yield "credit", "block", {"strategy": "credit", "tau": 0.9, "alpha": alpha,
                                  "block_length": block}
    for cache in CACHES:
        for block, tau in [(BLOCK, t) for t in CACHE_TAUS] + [(b, 0.9) for b in BLOCKS]:
            yield "threshold", "kv_cache", {"strategy": "threshold", "tau": tau,
                                            "block_length": block, "kv_cache": cache}
            yield "credit", "kv_cache", {"strategy": "credit", "tau": tau, "alpha": alpha,
                                         "block_length": block, "kv_cache": cache}
    for cache in CACHES:
        for block, refresh in REFRESHES:
            for method in ("threshold", "credit"):
                yield method, "kv_refresh", {
                    "strategy": method, "tau": 0.9, **({"alpha": alpha} if method == "credit"
                                                      else {}),
                    "block_length": block, "kv_cache": cache, "kv_cache_refresh": refresh}
    for factor in FACTORS:
        yield "factor", "factor", {"strategy": "factor", "factor": factor, "block_length": BLOCK}


def threshold_nfe_at(accuracy: float, curve) -> float | None:
    """NFE threshold decoding needs for `accuracy`: linear interpolation on its (NFE, accuracy)
    points made monotone (best accuracy reached so far); None outside the curve's range."""
    best, pts = -1.0, []
    for nfe, acc in sorted(curve):
        if acc > best:
            best = acc
            pts.append((nfe, acc))
    for (n0, a0), (n1, a1) in itertools.pairwise(pts):
        if a0 <= accuracy <= a1:
            return n0 if a1 == a0 else n0 + (n1 - n0) * (accuracy - a0) / (a1 - a0)
    if pts and accuracy == pts[0][1]:
        return pts[0][0]
    return None


def matched_accuracy(rows) -> list[dict]:
    """Per CreditDecoding point of the tau and alpha sweeps: threshold's NFE at its accuracy."""
    curve = [(r["mean_nfe"], r["accuracy"]) for r in rows
             if r["method"] == "threshold" and r["sweep"] == "tau"]
    out = []
    for r in rows:
        if r["method"] != "credit" or r["sweep"] not in ("tau", "alpha"):
            continue
        ref = threshold_nfe_at(r["accuracy"], curve)
        out.append({"tau": r["tau"], "alpha": r["alpha"], "accuracy": r["accuracy"],
                    "credit_nfe": r["mean_nfe"], "threshold_nfe": ref,
                    "nfe_reduction": None if ref is None else ref / r["mean_nfe"]})
    return out


def plot(rows, path: Path, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"llada": ("tab:gray", "s", "LLaDA sampler (steps)"),
              "threshold": ("tab:blue", "o", "threshold (tau)"),
              "factor": ("tab:green", "v", "Fast-dLLM factor rule (factor)"),
              "credit": ("tab:red", "^", f"CreditDecoding (tau, alpha={alpha:g})")}
    for method, (color, marker, label) in styles.items():
        pts = sorted((r["mean_nfe"], r["accuracy"], r.get("steps") or r.get("tau") or r["factor"])
                     for r in rows
                     if r["method"] == method and r["sweep"] in ("steps", "tau", "factor"))
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
        for x, y, v in pts:
            ax.annotate(f"{v:g}", (x, y), textcoords="offset points", xytext=(3, -10),
                        fontsize=7, color=color)
    cached = {"threshold": "tab:blue", "credit": "tab:red"}
    for (method, color), (cache, marker) in itertools.product(cached.items(),
                                                              zip(CACHES, "PD", strict=True)):
        pts = [(r["mean_nfe"], r["accuracy"]) for r in rows
               if r["sweep"] == "kv_cache" and r["method"] == method
               and r["block_length"] == BLOCK and r["kv_cache"] == cache]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                       facecolors="none", edgecolors=color,
                       label=f"{method}, kv_cache='{cache}' (tau {CACHE_TAUS})", zorder=3)
    alpha_pts = [(r["mean_nfe"], r["accuracy"], r["alpha"], r["tau"]) for r in rows
                 if r["sweep"] == "alpha"]
    if alpha_pts:
        ax.scatter([p[0] for p in alpha_pts], [p[1] for p in alpha_pts], marker="x",
                   color="tab:purple", label="CreditDecoding, alpha sweep (alpha/tau)", zorder=3)
        for x, y, a, t in alpha_pts:
            ax.annotate(f"{a:g}/{t:g}", (x, y), textcoords="offset points", xytext=(3, 4),
                        fontsize=6, color="tab:purple")
    ax.set_xlabel(f"mean NFE per item (gen_length {GEN}, block {BLOCK})")
    ax.set_ylabel("held-out accuracy (permute: any permutation)")
    ax.set_title(f"default model, {rows[0]['n']} held-out items ({', '.join(rows[0]['tasks'])})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from credit_compile.training.tasks import TASKS, held_out_set

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=positive_int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--model", default=None,
                        help="a checkpoint directory (model + char_tokenizer.json); default: the "
                             "shipped default model")
    parser.add_argument("--tasks", nargs="+", default=None, choices=TASKS,
                        help="held-out items of these tasks only (default: every task)")
    parser.add_argument("--quick", action="store_true",
                        help="only the LLaDA and tau sweeps (checkpoint selection)")
    parser.add_argument("--sweeps", nargs="+", default=SWEEPS, choices=SWEEPS,
                        help="the sweeps to run (default: all)")
    parser.add_argument("--output", default=str(HERE / "results" / "quality.jsonl"))
    parser.add_argument("--plot", default=str(HERE.parent / "docs" / "quality.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from credit_compile.assets import load_default_model

    if args.model is None:
        model, tokenizer = load_default_model("cpu")
    else:
        from credit_compile.models import LLaDAModelLM
        from credit_compile.tokenizer import CharTokenizer

        model = LLaDAModelLM.from_pretrained(args.model, local_files_only=True).eval()
        tokenizer = CharTokenizer.from_pretrained(args.model)
    tasks = tuple(args.tasks) if args.tasks else TASKS
    items = held_out_set(args.n, seed=args.seed, tasks=tasks)
    commit, rows = git_commit(), []
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for method, sweep, decode in configs(args.alpha):
        if (args.quick and sweep not in ("steps", "tau")) or sweep not in args.sweeps:
            continue
        config = decode_config(decode)
        start = time.perf_counter()
        result = evaluate(model, tokenizer, items, config)
        row = {"bench": "quality", "device": "cpu", "torch": torch.__version__, "commit": commit,
               "model": args.model or "default", "method": method, "sweep": sweep, **decode,
               "gen_length": GEN, "n": len(items), "seed": args.seed, "tasks": list(tasks),
               "config": dataclasses.asdict(config),
               **result, "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        by_task = " ".join(f"{t}={a:.2f}" for t, a in row["accuracy_by_task"].items())
        knob = (f"steps={decode['steps']}" if "steps" in decode else
                f"factor={decode['factor']}" if "factor" in decode else
                f"tau={decode['tau']} alpha={decode.get('alpha', 0)}")
        knob += f" block={decode['block_length']}" + (
            f" {decode['kv_cache']}-cache" if "kv_cache" in decode else "") + (
            f"/{decode['kv_cache_refresh']}" if "kv_cache_refresh" in decode else "")
        print(f"{method:9s} {knob:38s} acc {row['accuracy']:.3f} NFE {row['mean_nfe']:.2f} "
              f"full {row['mean_full_forwards']:.2f}  {by_task}", flush=True)
    print("\nCreditDecoding against threshold decoding at matched accuracy (block 8):")
    for m in matched_accuracy(rows):
        ref = "outside threshold's range" if m["threshold_nfe"] is None else (
            f"threshold needs {m['threshold_nfe']:.2f} -> {m['nfe_reduction']:.2f}x")
        print(f"  tau {m['tau']:<5} alpha {m['alpha']:<4} acc {m['accuracy']:.3f} "
              f"NFE {m['credit_nfe']:.2f}; {ref}")
    if args.plot:
        plot(rows, Path(args.plot), args.alpha)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
