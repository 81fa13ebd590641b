"""bench_aot_step.py: the exported step equals the eager one, and the script's rows.

The in-process test exports the tiny model's step and loads the saved program back (no Inductor:
--cheap-compile's stand-in for the AOT package), a few seconds; the whole script, four Python
processes, is marked slow.
"""

from __future__ import annotations

import json
import time

import pytest
from test_bench_scripts import load, read_rows

SHAPE = {"preset": "tiny", "batch": 2, "prompt_length": 4, "gen_length": 8, "block_length": 4,
         "backend": "cheap"}


@pytest.fixture
def bench(monkeypatch):
    return load("bench_aot_step", monkeypatch)


def test_the_saved_exported_step_updates_the_state_as_the_eager_step(bench, tmp_path):
    spec = {**SHAPE, "package": str(tmp_path / "step.pt2")}
    cold = bench.measure_aot_cold({**spec, "mode": "aot-cold"})
    assert cold["package_bytes"] > 0 and cold["seconds"] >= cold["export_seconds"] > 0
    warm = bench.measure_aot_warm({**spec, "mode": "aot-warm", "launched": time.time()})
    assert warm["one_step_equal"] and warm["generation_equal"]
    assert warm["steps_compared"] >= 2


def test_the_step_module_changes_the_state_it_is_given(bench):
    import torch

    model, _, setup = bench.build(SHAPE)
    before = bench.state_copy(setup)
    after = bench.state_copy(setup)
    with torch.no_grad():
        bench.step_module(model, setup)(*after)
    names = list(setup.state.tensors())
    changed = {n for n, a, b in zip(names, before, after, strict=True) if not torch.equal(a, b)}
    assert {"x", "nfe", "last_commit"} <= changed
    assert setup.state.x.equal(before[0])  # the setup's own state is left alone


@pytest.mark.slow
def test_the_script_writes_a_row_per_mode(bench, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--preset", "tiny", "--cheap-compile", "--rounds", "1", "--batch", "2",
                       "--prompt-length", "4", "--gen-length", "8", "--block-length", "4",
                       "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r["mode"] for r in rows] == list(bench.MODES)
    for row in rows:
        assert row["backend"] == "cheap" and row["device"] == "cpu" and row["commit"]
        assert row["load_average"] >= 0 and row["process_seconds"] > 0
        json.dumps(row)
    warm = {r["mode"]: r for r in rows}
    assert warm["aot-warm"]["one_step_equal"] and warm["aot-warm"]["generation_equal"]
    assert warm["artifacts-warm"]["pass_rewrites"] > 0  # dynamo's graph: the passes run
    assert warm["artifacts-cold"]["generation_equal"]
