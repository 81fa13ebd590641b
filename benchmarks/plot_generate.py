"""Draw tokens/s per mode from benchmarks/results/generate.jsonl into a PNG.

    python benchmarks/plot_generate.py [--input benchmarks/results/generate.jsonl]
                                       [--output docs/generate.png] [--preset NAME]

The figure in docs/performance.md is redrawn with
`--preset llada-8b --output docs/generate_llada8b_h100.png`; the default output, docs/generate.png,
is not shown in the docs.

One panel per run configuration (device, preset, dtype, batch, prompt, gen and block length,
commit), the newest row of each mode; bars are tokens/s, labelled with the ratio to the eager
LLaDA baseline of the same run. Rows need `mode` and `tokens_per_s`; other fields may be missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# What makes rows one run's, so that a panel never puts bars of different commits, dtypes or
# shapes side by side. Older rows may lack a field: it reads as missing, not as an error.
PANEL_KEY = ("device", "preset", "dtype", "batch", "prompt_length", "gen_length", "block_length",
             "commit")


def panel_title(key: tuple) -> str:
    f = dict(zip(PANEL_KEY, key, strict=True))
    return (f"{f['preset']} {f['dtype']} B={f['batch']} prompt={f['prompt_length']} "
            f"gen={f['gen_length']} block={f['block_length']}\n{f['device']} commit {f['commit']}")


def plottable_rows(path: str, needed: tuple[str, ...], preset: str | None) -> list[dict]:
    """The rows of `path` that have every field in `needed` (of `preset`, where given); the
    others are named on stderr, and no row to plot ends the script. Rows of the cheap backend
    (--cheap-compile: dry runs, no measurement) are left out."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    cheap = [r for r in rows if r.get("backend", "inductor") != "inductor"]
    if cheap:
        print(f"skipping {len(cheap)} row(s) of backend {cheap[0]['backend']!r} (no measurement)",
              file=sys.stderr)
        rows = [r for r in rows if r.get("backend", "inductor") == "inductor"]
    plottable = [r for r in rows if all(k in r for k in needed)]
    if len(plottable) < len(rows):
        print(f"skipping {len(rows) - len(plottable)} row(s) without {' or '.join(needed)}",
              file=sys.stderr)
    if preset:
        plottable = [r for r in plottable if r.get("preset") == preset]
    if not plottable:
        which = f" of preset {preset!r}" if preset else ""
        raise SystemExit(f"error: no rows{which} to plot in {path}; nothing written")
    return plottable


def parse_args(results: str, picture: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=str(HERE / "results" / results))
    parser.add_argument("--output", default=str(HERE.parent / "docs" / picture))
    parser.add_argument("--preset", default=None)
    return parser.parse_args(argv)


def save(fig, output: str) -> int:
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    print(output)
    return 0


def main(argv=None) -> int:
    args = parse_args("generate.jsonl", "generate.png", argv)
    plottable = plottable_rows(args.input, ("mode", "tokens_per_s"), args.preset)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in plottable:
        key = tuple(str(r.get(k, "?")) for k in PANEL_KEY)
        groups.setdefault(key, {})[r["mode"]] = r
    commits = sorted({key[-1] for key in groups})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (key, modes) in zip(axes[0], groups.items(), strict=True):
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
        ax.set_title(panel_title(key), fontsize=9)
    fig.suptitle(f"credit_compile generate (commits {', '.join(commits)})", fontsize=10)
    return save(fig, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
