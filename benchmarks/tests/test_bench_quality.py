"""The matched-accuracy comparison docs/quality.md reports (benchmarks/bench_quality.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # the scripts import their sibling `provenance`
    try:
        spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


def test_threshold_nfe_interpolates_on_the_monotone_curve(bench):
    # (NFE, accuracy); the point at 5 NFE is below the best so far and is ignored.
    curve = [(2.0, 0.5), (4.0, 0.9), (5.0, 0.8), (6.0, 1.0)]
    assert bench.threshold_nfe_at(0.5, curve) == 2.0
    assert bench.threshold_nfe_at(0.7, curve) == pytest.approx(3.0)
    assert bench.threshold_nfe_at(0.95, curve) == pytest.approx(5.0)  # 4 -> 6, not via 5
    assert bench.threshold_nfe_at(0.4, curve) is None  # below the curve
    assert bench.threshold_nfe_at(1.01, curve) is None  # above it


def test_matched_accuracy_compares_credit_points_only(bench):
    def row(method, sweep, nfe, acc, tau=0.9, alpha=0.7):
        return {"method": method, "sweep": sweep, "mean_nfe": nfe, "accuracy": acc,
                "tau": tau, "alpha": alpha}

    rows = [row("threshold", "tau", 2.0, 0.5), row("threshold", "tau", 6.0, 0.9),
            row("threshold", "block", 1.0, 0.9),  # another block length: not on the curve
            row("credit", "tau", 3.0, 0.7), row("credit", "block", 1.0, 0.9),
            row("llada", "steps", 8.0, 0.9)]
    (match,) = bench.matched_accuracy(rows)
    assert match["threshold_nfe"] == pytest.approx(4.0)
    assert match["nfe_reduction"] == pytest.approx(4.0 / 3.0)


def test_rows_record_the_full_decode_config(bench, tmp_path):
    import json

    import torch

    out = tmp_path / "quality.jsonl"
    # --threads as now: the script sets torch's thread count for the whole process.
    assert bench.main(["--n", "1", "--quick", "--tasks", "add", "--threads",
                       str(torch.get_num_threads()), "--output", str(out), "--plot", ""]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["strategy"] for r in rows} == {"llada", "threshold", "credit"}
    for r in rows:
        config = r["config"]
        assert all(config[k] == r[k] for k in ("strategy", "steps", "tau", "alpha", "block_length")
                   if k in r)
        assert config["gen_length"] == bench.GEN and config["compile"] is False
        assert {"beta", "gamma", "temperature", "credit_layout", "sync_every"} <= set(config)


def test_the_kv_cache_sweep_decodes_with_the_cache_beside_its_uncached_twins(bench, tmp_path):
    import json

    import torch

    out = tmp_path / "quality.jsonl"
    assert bench.main(["--n", "1", "--sweeps", "kv_cache", "--tasks", "add", "--threads",
                       str(torch.get_num_threads()), "--output", str(out), "--plot", ""]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["sweep"] == "kv_cache" and r["config"]["kv_cache"] == r["kv_cache"]
                        for r in rows)
    assert {r["kv_cache"] for r in rows} == {"prompt", "dual"}
    # Each cached setting has its uncached twin among the tau and block sweeps.
    uncached = {(m, d["tau"], d["block_length"]) for m, sweep, d in bench.configs(0.7)
                if sweep in ("tau", "block")}
    assert {(r["method"], r["tau"], r["block_length"]) for r in rows} <= uncached


def test_the_refresh_sweep_counts_the_full_forwards_it_runs(bench, tmp_path):
    import json

    import torch

    out = tmp_path / "quality.jsonl"
    assert bench.main(["--n", "2", "--sweeps", "kv_refresh", "--tasks", "add", "--threads",
                       str(torch.get_num_threads()), "--output", str(out), "--plot", ""]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["kv_cache"], r["block_length"], r["kv_cache_refresh"]) for r in rows} == {
        (cache, block, k) for cache in bench.CACHES for block, k in bench.REFRESHES}
    for r in rows:
        assert r["config"]["kv_cache_refresh"] == r["kv_cache_refresh"]
        # A refresh per block at least, one per step at most.
        assert bench.GEN // r["block_length"] <= r["mean_full_forwards"] <= r["mean_nfe"]


def test_full_forwards_are_the_nfe_without_a_cache_and_one_per_block_with_it(bench):
    from credit_compile.assets import load_default_model
    from credit_compile.training.tasks import held_out_set

    model, tokenizer = load_default_model("cpu")
    items = held_out_set(3, seed=5)
    plain = bench.evaluate(model, tokenizer, items, bench.decode_config({"block_length": 8}))
    assert plain["mean_full_forwards"] == plain["mean_nfe"]
    cached = bench.evaluate(model, tokenizer, items,
                            bench.decode_config({"block_length": 8, "kv_cache": "dual"}))
    assert cached["mean_full_forwards"] == bench.GEN // 8 < cached["mean_nfe"]
    assert not model._forward_pre_hooks  # the counter is removed


def test_the_factor_sweep_decodes_with_each_factor(bench, tmp_path):
    import json

    import torch

    out = tmp_path / "quality.jsonl"
    assert bench.main(["--n", "1", "--sweeps", "factor", "--tasks", "add", "--threads",
                       str(torch.get_num_threads()), "--output", str(out), "--plot", ""]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"]["factor"] for r in rows] == list(bench.FACTORS)
    assert all(r["method"] == r["config"]["strategy"] == "factor" for r in rows)


def test_the_factor_rows_are_plotted(bench, tmp_path):
    pytest.importorskip("matplotlib")  # the bench extra; the min-versions stack has none
    rows = [{"method": "factor", "sweep": "factor", "factor": f, "mean_nfe": 5 - f,
             "accuracy": 0.9, "n": 1, "tasks": ["add"]} for f in (0.5, 1.0)]
    png = tmp_path / "quality.png"
    bench.plot(rows, png, 0.7)
    assert png.stat().st_size > 0


@pytest.mark.parametrize("bad", [["--n", "0"], ["--threads", "0"], ["--tasks", "bogus"]])
def test_bad_flags_are_usage_errors(bench, bad):
    with pytest.raises(SystemExit) as exc:
        bench.main([*bad, "--output", "/nonexistent/q.jsonl", "--plot", ""])
    assert exc.value.code == 2
