"""Draw the peers' tokens/s beside ours from benchmarks/results/peers.jsonl into a PNG.

    python benchmarks/plot_peers.py [--input benchmarks/results/peers.jsonl]
                                    [--output docs/peers.png] [--preset NAME]

One panel per run configuration (device, preset, dtype, batch, prompt, gen and block length,
commit; as plot_generate.py), the newest row of each pair: two bars per pair, the peer's own code
and optimize(), tokens/s, labelled with the ratio and "=" where the tokens are equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PANEL_KEY = ("device", "preset", "dtype", "batch", "prompt_length", "gen_length", "block_length",
             "commit")
NEEDED = ("pair", "peer", "peer_tokens_per_s", "ours_tokens_per_s")


def panel_title(key: tuple) -> str:
    f = dict(zip(PANEL_KEY, key, strict=True))
    return (f"{f['preset']} {f['dtype']} B={f['batch']} prompt={f['prompt_length']} "
            f"gen={f['gen_length']} block={f['block_length']}\n{f['device']} commit {f['commit']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=str(HERE / "results" / "peers.jsonl"))
    parser.add_argument("--output", default=str(HERE.parent / "docs" / "peers.png"))
    parser.add_argument("--preset", default=None)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines() if line.strip()]
    plottable = [r for r in rows if all(k in r for k in NEEDED)]
    if len(plottable) < len(rows):
        print(f"skipping {len(rows) - len(plottable)} row(s) without {', '.join(NEEDED)}",
              file=sys.stderr)
    if args.preset:
        plottable = [r for r in plottable if r.get("preset") == args.preset]
    if not plottable:
        which = f" of preset {args.preset!r}" if args.preset else ""
        raise SystemExit(f"error: no rows{which} to plot in {args.input}; nothing written")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in plottable:
        key = tuple(str(r.get(k, "?")) for k in PANEL_KEY)
        groups.setdefault(key, {})[r["pair"]] = r
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (key, pairs) in zip(axes[0], groups.items(), strict=True):
        names = list(pairs)
        at = range(len(names))
        ax.bar([i - 0.2 for i in at], [pairs[n]["peer_tokens_per_s"] for n in names], 0.4,
               color="tab:gray", label="peer's own code")
        ours = ax.bar([i + 0.2 for i in at], [pairs[n]["ours_tokens_per_s"] for n in names], 0.4,
                      color="tab:blue", label="credit_compile optimize()")
        for bar, n in zip(ours, names, strict=True):
            r = pairs[n]
            label = f"{r['ours_tokens_per_s'] / r['peer_tokens_per_s']:.2f}x"
            label += " =" if r.get("tokens_equal") else f" {r.get('token_agreement', 0):.0%}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(at), names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("tokens/s (generated)")
        ax.set_title(panel_title(key), fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Fast-dLLM and dInfer (their own code) vs credit_compile, same weights; "
                 "label: ours / peer, '=' equal tokens, else the share that agree", fontsize=9)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
