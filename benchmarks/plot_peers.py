"""Draw the peers' tokens/s beside ours from benchmarks/results/peers.jsonl into a PNG.

    python benchmarks/plot_peers.py [--input benchmarks/results/peers.jsonl]
                                    [--output docs/peers.png] [--preset NAME]

One panel per run configuration (device, preset, dtype, batch, prompt, gen and block length,
commit; as plot_generate.py), the newest row of each pair: two bars per pair, the peer's own code
and optimize(), tokens/s, labelled with the ratio and "=" where the tokens are equal.
"""

from __future__ import annotations

from plot_generate import PANEL_KEY, panel_title, parse_args, plottable_rows, save

NEEDED = ("pair", "peer", "peer_tokens_per_s", "ours_tokens_per_s")


def main(argv=None) -> int:
    args = parse_args("peers.jsonl", "peers.png", argv)
    plottable = plottable_rows(args.input, NEEDED, args.preset)
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
    return save(fig, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
