"""Draw tokens/s per mode from benchmarks/results/generate.jsonl into a PNG.

    python benchmarks/plot_generate.py [--input results/generate.jsonl] [--output docs/generate.png]

One panel per (device, preset, batch, gen_length), the newest row of each mode; bars are
tokens/s, labelled with the ratio to the eager LLaDA baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=str(HERE / "results" / "generate.jsonl"))
    parser.add_argument("--output", default=str(HERE.parent / "docs" / "generate.png"))
    parser.add_argument("--preset", default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines() if line.strip()]
    if args.preset:
        rows = [r for r in rows if r["preset"] == args.preset]
    commits = sorted({r["commit"] for r in rows})
    groups: dict = {}
    for r in rows:
        key = (r["device"], r["preset"], r["batch"], r.get("prompt_length", 32), r["gen_length"])
        groups.setdefault(key, {})[r["mode"]] = r
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, ((device, preset, batch, prompt, gen), modes) in zip(axes[0], groups.items(), strict=True):
        names = list(modes)
        values = [modes[m]["tokens_per_s"] for m in names]
        bars = ax.bar(range(len(names)), values, color="tab:blue")
        for bar, m in zip(bars, names, strict=True):
            ratio = modes[m].get("speedup_vs_llada_eager")
            if ratio:
                ax.annotate(f"{ratio:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{preset} B={batch} prompt={prompt} gen={gen}\n{device}", fontsize=9)
    fig.suptitle(f"credit_compile generate (commits {', '.join(commits)})", fontsize=10)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
