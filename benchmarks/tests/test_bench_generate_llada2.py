"""bench_generate.py on the LLaDA2 presets: the official generate() as the baseline of its run,
the modes' configs, the rows' checks, and llada2-mini (the GPU stages' model) built on the meta
device at the stages' shapes.

Eager and tiny; the compiled modes are stood in for where only the bookkeeping is under test
(benchmarks/tests/test_gpu_session.py runs the llada2 stages dry, for real)."""

from __future__ import annotations

import pytest
import torch
from test_bench_scripts import load, read_rows

import credit_compile as cc

GEN, BLOCK, PROMPT = 8, 4, 6


@pytest.fixture
def bench(monkeypatch):
    module = load("bench_generate", monkeypatch)
    # The floor's compile is the dry-run stages' to pay (test_gpu_session.py).
    monkeypatch.setattr(module, "bare_block_forward_ms", lambda *args: (0.5, False))
    return module


def run(bench, tmp_path, *modes, batch=2) -> list[dict]:
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--preset", "tiny-llada2", "--device", "cpu", "--batch", str(batch),
                       "--gen-length", str(GEN), "--block-length", str(BLOCK),
                       "--prompt-length", str(PROMPT), "--repeats", "1", "--modes", *modes,
                       "--out", str(out)]) == 0
    return read_rows(out)


def test_llada2_rows_are_ranked_against_the_official_generate_of_their_run(bench, tmp_path):
    # Asked for in reverse: the baseline still runs first, and is its own ratio's 1.
    baseline, credit = run(bench, tmp_path, "credit-block-eager", "llada2-eager")
    assert (baseline["mode"], credit["mode"]) == ("llada2-eager", "credit-block-eager")
    assert baseline["speedup_vs_llada2_eager"] == 1.0
    assert credit["speedup_vs_llada2_eager"] == pytest.approx(
        credit["tokens_per_s"] / baseline["tokens_per_s"])
    assert all(r["preset"] == "tiny-llada2" and r["init_std"] == 0.5 and r["dtype"] == "float32"
               for r in (baseline, credit))
    # The official generate() decodes batch 1: two rows are two generations, their forwards
    # summed; each decodes 10 masks (2 in the prompt's block, then 4 and 4), at least one a step
    # (threshold 0.95, steps = block), and its first step the prompt's block.
    assert baseline["config"] == {"gen_length": GEN, "block_length": BLOCK, "steps": BLOCK,
                                  "threshold": 0.95, "eos_id": -1}
    assert 2 * 3 <= baseline["nfe"] <= 2 * 10 and baseline["first_block_ms"] is None
    assert credit["config"]["kv_cache"] == "block" and credit["config"]["strategy"] == "credit"
    assert credit["first_block_ms"] > 0
    for row in (baseline, credit):
        assert row["tokens_per_s"] == pytest.approx(2 * GEN / row["seconds"])
        assert row["step_over_bare_forward"] == pytest.approx(row["ms_per_step"] / 0.5)
        assert row["bare_block_forward_ms"] == 0.5 and row["bare_forward_graphed"] is False


def test_the_baseline_decodes_each_row_with_the_official_rules(bench):
    from credit_compile.models.llada2_generate import llada2_generate

    model = bench.bench_model("tiny-llada2", "cpu", block_length=BLOCK)
    ids = torch.randint(0, 125, (2, 5), generator=torch.Generator().manual_seed(0))
    base = cc.DecodeConfig(gen_length=GEN, block_length=BLOCK)
    call, settings = bench.official_llada2_call(model, ids, base)
    out = call()
    rows = [llada2_generate(model, ids[i:i + 1], **settings) for i in range(2)]
    assert out.generated.tolist() == [tokens[0].tolist() for tokens, _ in rows]
    assert out.nfe == sum(nfe for _, nfe in rows)
    assert out.generated.shape == (2, GEN)  # no end-of-text cuts a row short


@pytest.mark.parametrize("mode, strategy, compiled, graphs", [
    ("credit-block-eager", "credit", False, "off"),
    ("credit-compiled-block", "credit", True, "off"),
    ("threshold-graphs-block", "threshold", True, "on"),
    ("llada2-compiled-block", "llada2", True, "off"),
    ("llada2-graphs-block", "llada2", True, "on"),
])
def test_each_mode_decodes_on_the_block_cache_with_its_strategy(bench, mode, strategy, compiled,
                                                                 graphs):
    base = cc.DecodeConfig(gen_length=GEN, block_length=BLOCK, sync_every=8)
    cfg = bench.llada2_mode_config(mode, base)
    assert (cfg.strategy, cfg.kv_cache, cfg.compile, cfg.cuda_graphs) == (strategy, "block",
                                                                         compiled, graphs)
    assert cfg.sync_every == (8 if compiled else 1)
    assert cfg.tau == (0.95 if strategy == "llada2" else base.tau)


def test_compiled_rows_are_checked_against_their_references(bench, tmp_path, monkeypatch):
    # Stand-in for run_llada2_mode: the compiled modes' bookkeeping, without compiling.
    tokens = {"llada2-eager": [[1, 2], [3, 4]], "credit-block-eager": [[5, 6], [7, 8]],
              "credit-compiled-block": [[5, 6], [7, 8]], "threshold-compiled-block": [[0, 0], [0, 0]],
              "llada2-compiled-block": [[1, 2], [3, 0]]}

    def fake_mode(mode, model, ids, base, repeats):
        return {"mode": mode, "nfe": 4, "seconds": 0.01 if mode == "llada2-eager" else 0.002,
                "tokens_per_s": 4 / (0.01 if mode == "llada2-eager" else 0.002),
                "ms_per_step": 1.0, "first_block_ms": None, "compile_seconds": 0.0,
                "peak_memory_gb": None, "config": {}, "generated": torch.tensor(tokens[mode])}

    monkeypatch.setattr(bench, "run_llada2_mode", fake_mode)
    rows = {r["mode"]: r for r in run(bench, tmp_path, *tokens)}
    assert list(rows) == [m for m in bench.LLADA2_MODES if m in tokens]
    assert rows["credit-compiled-block"]["equals_credit_block_eager"] is True
    assert "equals_credit_block_eager" not in rows["credit-block-eager"]
    assert "equals_credit_block_eager" not in rows["threshold-compiled-block"]
    assert rows["llada2-compiled-block"]["token_agreement_with_llada2_eager"] == 0.75
    assert rows["credit-compiled-block"]["speedup_vs_llada2_eager"] == pytest.approx(5.0)


def test_the_bare_block_forward_computes_a_cached_steps_logits(bench):
    """The floor the steps are measured against is what a cached step runs: the first generated
    block's logits, equal to the uncached block-causal forward's."""
    model = bench.bench_model("tiny-llada2", "cpu", block_length=BLOCK)
    ids = torch.randint(0, 125, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    base = cc.DecodeConfig(gen_length=GEN, block_length=BLOCK)
    canvas = bench.llada2_canvas(model, ids, base)
    assert canvas.shape == (2, 16)  # 6 + 8 rounded up to whole blocks from position 0
    with torch.no_grad():
        expected = model(canvas, block_length=BLOCK).logits[:, 4:8]
        got = bench.bare_block_forward(model, ids, base)()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("preset, modes", [
    ("tiny-llada2", ["credit-eager"]), ("tiny", ["llada2-eager"]),
    # A list given before the one that runs (a gpu_session.sh stage's, under its dry run's).
    ("tiny-llada2", ["credit-eager", "--modes", "llada2-eager"])])
def test_modes_of_the_other_family_are_refused_before_the_model_loads(bench, preset, modes,
                                                                      monkeypatch, capsys):
    monkeypatch.setattr(bench, "bench_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--preset", preset, "--modes", *modes, "--out", "/nonexistent/rows.jsonl"])
    assert exc.value.code == 2
    assert f"are not run on preset {preset!r}" in capsys.readouterr().err


def test_the_gpu_stages_llada2_mini_runs_on_the_meta_device(bench):
    """llada2-mini as the gpu_session.sh stages build it (LLaDA2.0-mini's shapes, bf16, the
    stage's block length), on the meta device: its weights fit an H100, and the prefill with the
    cache and a cached block's forward run through at the B=8 stage's shapes."""
    from benchutil import bench_dtype, bench_model_config

    from credit_compile.models import LLaDA2ModelLM

    config = bench_model_config("llada2-mini", block_length=32)
    with torch.device("meta"):
        model = LLaDA2ModelLM(config).to(bench_dtype("llada2-mini")).eval()
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    assert 30 < weight_gb < 34  # 16B parameters
    base = cc.DecodeConfig(gen_length=256, block_length=32)
    ids = torch.zeros(8, 32, dtype=torch.long, device="meta")
    canvas = bench.llada2_canvas(model, ids, base)
    with torch.no_grad():
        logits = bench.bare_block_forward(model, ids, base)()
    assert canvas.shape == (8, 288) and logits.shape == (8, 32, 157184)
    assert logits.dtype == torch.bfloat16
