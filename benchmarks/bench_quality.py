"""Held-out accuracy against NFE for the shipped default model: LLaDA's sampler, threshold
decoding and CreditDecoding.

    python benchmarks/bench_quality.py [--n 200] [--seed 1234] [--output results/quality.jsonl]
                                       [--plot ../docs/quality.png]

The held-out set (`credit_compile.training.tasks.held_out_set`) is a fixed slice of prompts the
training never saw. Each item is decoded alone (batch 1, eager reference decoder, greedy, gen_length
8, one block of 8), so the NFE is that item's own count of forward passes; accuracy is exact match
of the text before the first EOS. Rows are appended to the JSONL; the plot is redrawn from this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GEN, BLOCK = 8, 8
BASELINE_STEPS = (1, 2, 4, 8)
TAUS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def evaluate(model, tokenizer, items, **decode) -> dict:
    from credit_compile.reference import generate

    correct, nfe, per_task = 0, 0, {}
    for task, prompt, answer in items:
        batch = tokenizer([prompt])
        out = generate(model, batch["input_ids"], batch["attention_mask"], gen_length=GEN,
                       block_length=BLOCK, compile=False, cuda_graphs="off", **decode)
        ok = tokenizer.answer(out.generated[0]) == answer
        correct += ok
        nfe += out.nfe
        hit, total = per_task.get(task, (0, 0))
        per_task[task] = (hit + ok, total + 1)
    n = len(items)
    return {"accuracy": correct / n, "mean_nfe": nfe / n,
            "accuracy_by_task": {t: h / c for t, (h, c) in sorted(per_task.items())}}


def configs(alpha: float):
    for steps in BASELINE_STEPS:
        yield "llada", {"strategy": "llada", "steps": steps}
    for tau in TAUS:
        yield "threshold", {"strategy": "threshold", "tau": tau}
    for tau in TAUS:
        yield "credit", {"strategy": "credit", "tau": tau, "alpha": alpha}


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"llada": ("tab:gray", "s", "LLaDA sampler (steps)"),
              "threshold": ("tab:blue", "o", "threshold (tau)"),
              "credit": ("tab:red", "^", "CreditDecoding (tau, alpha=0.7)")}
    for method, (color, marker, label) in styles.items():
        pts = sorted((r["mean_nfe"], r["accuracy"], r.get("steps") or r.get("tau"))
                     for r in rows if r["method"] == method)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
        for x, y, v in pts:
            ax.annotate(f"{v:g}", (x, y), textcoords="offset points", xytext=(3, -10),
                        fontsize=7, color=color)
    ax.set_xlabel("mean NFE per item (gen_length 8)")
    ax.set_ylabel("held-out exact-match accuracy")
    ax.set_title(f"default model, {rows[0]['n']} held-out items")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(HERE / "results" / "quality.jsonl"))
    parser.add_argument("--plot", default=str(HERE.parent / "docs" / "quality.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from credit_compile.assets import load_default_model
    from credit_compile.training.tasks import held_out_set

    model, tokenizer = load_default_model("cpu")
    items = held_out_set(args.n, seed=args.seed)
    commit, rows = _commit(), []
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for method, decode in configs(args.alpha):
        start = time.perf_counter()
        result = evaluate(model, tokenizer, items, **decode)
        row = {"bench": "quality", "commit": commit, "method": method, **decode,
               "gen_length": GEN, "block_length": BLOCK, "n": len(items), "seed": args.seed,
               **result, "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        by_task = " ".join(f"{t}={a:.2f}" for t, a in row["accuracy_by_task"].items())
        knob = f"steps={decode['steps']}" if "steps" in decode else f"tau={decode['tau']}"
        print(f"{method:9s} {knob:10s} acc {row['accuracy']:.3f} NFE {row['mean_nfe']:.2f}  {by_task}",
              flush=True)
    if args.plot:
        plot(rows, Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
