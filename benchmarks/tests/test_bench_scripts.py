"""The benchmark scripts' own logic: mode order, recorded configs, flags, the plot's input checks.

Tiny and mostly eager (a second or so each); the compiled modes are stood in for where only the
bookkeeping around them is under test, and the one that compiles is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1]


def load(name: str, monkeypatch):
    """benchmarks/<name>.py as a module; sys.path as the script sees it, restored afterwards."""
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
    # A sibling imported by another test from elsewhere must not be the one used here.
    for sibling in ("provenance", "benchutil"):
        monkeypatch.delitem(sys.modules, sibling, raising=False)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# bench_generate.py
# ------------------------------------------------------------------------------------------------

GEN, BLOCK = 16, 4
EAGER_REVERSED = ["credit-eager", "threshold-eager", "llada-eager"]


@pytest.fixture
def bench_generate(monkeypatch):
    return load("bench_generate", monkeypatch)


@pytest.fixture
def eager_rows(bench_generate, tmp_path):
    """The eager modes on the tiny preset, asked for in reverse order."""
    out = tmp_path / "rows.jsonl"
    assert bench_generate.main(["--preset", "tiny", "--device", "cpu", "--modes", *EAGER_REVERSED,
                                "--gen-length", str(GEN), "--block-length", str(BLOCK),
                                "--repeats", "1", "--out", str(out)]) == 0
    return read_rows(out)


def test_generate_on_the_trained_model_decodes_its_held_out_prompts(bench_generate, tmp_path):
    # The one model whose confidence means something: threshold decoding commits several tokens
    # per step, the LLaDA baseline one, on a left-padded batch of real task prompts.
    out = tmp_path / "rows.jsonl"
    assert bench_generate.main(["--preset", "trained", "--device", "cpu", "--batch", "3",
                                "--modes", "llada-eager", "threshold-eager", "--repeats", "1",
                                "--out", str(out)]) == 0
    llada, threshold = read_rows(out)
    assert llada["weights"] == "trained" and llada["init_std"] is None
    assert llada["nfe"] == llada["gen_length"] == 16
    assert threshold["nfe"] < llada["nfe"]
    assert threshold["prompt_length"] == llada["prompt_length"] > 1


def test_generate_runs_modes_in_canonical_order(eager_rows):
    assert [r["mode"] for r in eager_rows] == ["llada-eager", "threshold-eager", "credit-eager"]
    # Every row has the baseline of its own run, the baseline itself included.
    assert all("speedup_vs_llada_eager" in r for r in eager_rows)
    assert eager_rows[0]["speedup_vs_llada_eager"] == 1.0


def test_generate_credit_eager_is_not_compared_with_itself(eager_rows):
    assert all("equals_credit_eager" not in r for r in eager_rows)


def test_generate_checks_do_not_depend_on_modes_order(bench_generate, tmp_path, monkeypatch):
    # Stand-in for run_mode: the compiled mode's bookkeeping, without compiling.
    ran = []

    def fake_run_mode(mode, model, ids, mask, base, repeats):
        ran.append(mode)
        return {"mode": mode, "nfe": 1, "seconds": 1.0, "tokens_per_s": float(len(ran)),
                "ms_per_step": 1.0, "compile_seconds": 0.0, "peak_memory_gb": None,
                "config": {}, "sequences": ids}

    monkeypatch.setattr(bench_generate, "run_mode", fake_run_mode)
    out = tmp_path / "rows.jsonl"
    bench_generate.main(["--device", "cpu", "--modes", "credit-compiled", "credit-eager",
                         "llada-eager", "--gen-length", "8", "--block-length", "4",
                         "--repeats", "1", "--out", str(out)])
    assert ran == ["llada-eager", "credit-eager", "credit-compiled"]
    compiled = read_rows(out)[-1]
    assert compiled["mode"] == "credit-compiled"
    assert compiled["equals_credit_eager"] is True
    assert compiled["speedup_vs_llada_eager"] == 3.0


def test_generate_rows_record_the_decode_config(eager_rows):
    configs = {r["mode"]: r["config"] for r in eager_rows}
    assert {c["strategy"] for c in configs.values()} == {"llada", "threshold", "credit"}
    for config in configs.values():
        assert config["gen_length"] == GEN and config["block_length"] == BLOCK
        assert config["compile"] is False and config["cuda_graphs"] == "off"
        assert {"alpha", "beta", "gamma", "tau", "sync_every", "credit_layout"} <= set(config)
    assert configs["llada-eager"]["steps"] == GEN
    assert configs["credit-eager"]["credit_layout"] == "dense"


@pytest.mark.parametrize("mode, layers_once, graphs, layout, kv_cache", [
    ("credit-compiled", False, "off", "dense", "none"),
    ("credit-compiled-sparse", False, "off", "sparse", "none"),
    ("credit-compiled-layers-once", True, "off", "sparse", "none"),
    ("credit-graphs", False, "on", "sparse", "none"),
    ("credit-graphs-dense", False, "on", "dense", "none"),
    ("credit-graphs-layers-once", True, "on", "sparse", "none"),
    ("credit-compiled-dual-cache", False, "off", "sparse", "dual"),
    ("credit-graphs-dual-cache", False, "on", "sparse", "dual"),
    ("credit-compiled-prompt-cache", False, "off", "sparse", "prompt"),
    ("credit-graphs-prompt-cache", False, "on", "sparse", "prompt"),
])
def test_generate_compiled_modes_configure_what_they_name(bench_generate, monkeypatch, mode,
                                                          layers_once, graphs, layout, kv_cache):
    seen = []

    class Configured(Exception):
        pass

    def optimize_stand_in(model, config):
        seen.append(config)
        raise Configured

    monkeypatch.setattr(bench_generate.cc, "optimize", optimize_stand_in)
    with pytest.raises(Configured):
        bench_generate.run_mode(mode, None, torch.zeros(1, 2, dtype=torch.long), None,
                                bench_generate.cc.DecodeConfig(gen_length=8, block_length=4), 1)
    (config,) = seen
    assert (config.compile_layers_once, config.cuda_graphs, config.credit_layout,
            config.kv_cache) == (layers_once, graphs, layout, kv_cache)
    assert config.compile and config.strategy == "credit"


@pytest.mark.usefixtures("cheap_compile")  # the bench's logic, not Inductor's code
def test_generate_dual_cache_rows_are_checked_against_their_own_reference(bench_generate,
                                                                           tmp_path):
    out = tmp_path / "rows.jsonl"
    assert bench_generate.main(["--preset", "tiny", "--device", "cpu", "--modes", "credit-eager",
                                "credit-dual-cache-eager", "credit-compiled-dual-cache",
                                "--gen-length", str(GEN), "--block-length", str(BLOCK),
                                "--repeats", "1", "--out", str(out)]) == 0
    exact, cached_eager, cached = read_rows(out)
    assert cached_eager["config"]["kv_cache"] == "dual" and not cached_eager["config"]["compile"]
    assert cached["equals_credit_dual_cache_eager"] is True
    assert "equals_credit_eager" not in cached  # approximate: agreement is reported instead
    assert 0 <= cached["token_agreement_with_credit_eager"] <= 1
    # A cached step reads the cache and runs fewer tokens than a full one: fewer FLOPs per step.
    assert cached["kv_cache_bytes"] > 0 and cached["step_flops"] < exact["step_flops"]


def test_cache_roofline_averages_full_and_cached_steps(bench_generate):
    from credit_compile.models import build_model

    model = build_model("tiny")
    full = bench_generate.step_roofline(model, 2, 48, 16)
    block = bench_generate.step_roofline(model, 2, 48, 16, tokens=16)
    # 3 blocks, 9 steps: 3 full steps and 6 cached ones.
    mixed = bench_generate.cached_roofline(model, 2, 48, 16, nfe=9, num_blocks=3,
                                           cached_tokens=16)
    assert mixed["step_flops"] == pytest.approx((3 * full["step_flops"] + 6 * block["step_flops"]) / 9)
    # keys and values: 2 layers x 2 rows x 48 positions x 32 channels x 4 bytes, each.
    assert mixed["kv_cache_bytes"] == 2 * 2 * 2 * 48 * 32 * 4
    assert mixed["weight_bytes"] == full["weight_bytes"] + mixed["kv_cache_bytes"] * 6 / 9
    # The prompt cache's cached steps run the generated region: between the two.
    region = bench_generate.cached_roofline(model, 2, 48, 16, nfe=9, num_blocks=3,
                                            cached_tokens=32)
    assert mixed["step_flops"] < region["step_flops"] < full["step_flops"]


def test_every_cache_mode_names_its_cache_and_its_eager_reference(bench_generate):
    for mode in bench_generate.MODES:
        cache = bench_generate.kv_cache_of(mode)
        assert cache == ("dual" if "dual" in mode else "prompt" if "prompt" in mode else "none")
        assert cache == "none" or bench_generate.CACHED_EAGER[cache] in bench_generate.MODES


def test_generate_tiny_preset_nfe_is_not_the_whole_block_artefact(eager_rows):
    # The tiny preset's own init (0.02) ties every confidence: one step per block (NFE 4 here).
    nfe = {r["mode"]: r["nfe"] for r in eager_rows}
    assert nfe["llada-eager"] == GEN
    assert nfe["threshold-eager"] > GEN // BLOCK
    assert nfe["credit-eager"] > GEN // BLOCK
    assert all(r["init_std"] == 0.5 for r in eager_rows)


def test_generate_repeats_default_and_non_positive(bench_generate, tmp_path, monkeypatch, capsys):
    seen = []

    def fake_run_mode(mode, model, ids, mask, base, repeats):
        seen.append(repeats)
        return {"mode": mode, "nfe": 1, "seconds": 1.0, "tokens_per_s": 1.0, "ms_per_step": 1.0,
                "compile_seconds": 0.0, "peak_memory_gb": None, "config": {}, "sequences": ids}

    monkeypatch.setattr(bench_generate, "run_mode", fake_run_mode)
    args = ["--device", "cpu", "--modes", "llada-eager", "--gen-length", "8", "--block-length",
            "4", "--out", str(tmp_path / "rows.jsonl")]
    bench_generate.main(args)
    bench_generate.main([*args, "--repeats", "2"])
    assert seen == [3, 2]  # tiny's default, then as asked
    for bad in (["--repeats", "0"], ["--repeats", "-1"], ["--block-length", "0"],
                ["--block-length", "3"], ["--preset", "bogus"]):
        with pytest.raises(SystemExit) as exc:
            bench_generate.main([*args, *bad])
        assert exc.value.code == 2, bad
    assert seen == [3, 2]  # nothing ran
    assert "not a positive integer" in capsys.readouterr().err


def test_step_roofline_counts_weight_bytes_and_flops(bench_generate):
    # Written out from the config, not from the parameters the function sums: per layer the
    # q/k/v/out projections (k and v have n_kv_heads heads) and the three MLP matrices.
    from credit_compile.models import build_model, get_config

    cfg = get_config("tiny-gqa", n_layers=3, mlp_hidden_size=48)
    d, kv, hidden, vocab = cfg.d_model, cfg.effective_n_kv_heads * cfg.head_dim, 48, cfg.vocab_size
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * hidden
    params = vocab * d * 2 + 3 * (per_layer + 2 * d) + d  # wte, ff_out, norms
    batch, seq, block = 3, 40, 8
    flops = 2 * 3 * per_layer * batch * seq + 4 * batch * seq * seq * d * 3 + 2 * d * vocab * batch * block
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = build_model(cfg, dtype=dtype)
        assert sum(p.numel() for p in model.parameters()) == params
        roof = bench_generate.step_roofline(model, batch, seq, block)
        assert roof == {"weight_bytes": params * size, "step_flops": flops}, dtype
    # A config without embedding_size (the official default) reads the vocabulary size instead.
    model = build_model(get_config("tiny-gqa", n_layers=3, mlp_hidden_size=48,
                                   embedding_size=None))
    assert bench_generate.step_roofline(model, batch, seq, block)["step_flops"] == flops


def test_generate_rows_hold_the_roofline_and_ratios(bench_generate, tmp_path, monkeypatch):
    # The figures only a CUDA run records, from stand-in peaks, step times and a bare forward.
    def fake_run_mode(mode, model, ids, mask, base, repeats):
        return {"mode": mode, "nfe": 4, "seconds": 0.008, "tokens_per_s": 8 / 0.008,
                "ms_per_step": 2.0, "compile_seconds": 0.0, "peak_memory_gb": None,
                "config": {}, "sequences": ids}

    monkeypatch.setattr(bench_generate, "run_mode", fake_run_mode)
    monkeypatch.setattr(bench_generate, "measure_peaks",
                        lambda device: {"peak_gbps": 100.0, "peak_tflops": 2.0})
    monkeypatch.setattr(bench_generate, "bare_forward_graphed_ms", lambda *args: 0.5)
    out = tmp_path / "rows.jsonl"
    bench_generate.main(["--device", "cpu", "--modes", "llada-eager", "--batch", "2",
                         "--gen-length", "8", "--block-length", "4", "--prompt-length", "6",
                         "--repeats", "1", "--out", str(out)])
    (row,) = read_rows(out)
    from benchutil import bench_model

    roof = bench_generate.step_roofline(bench_model("tiny", "cpu"), 2, 6 + 8, 4)
    assert (row["weight_bytes"], row["step_flops"]) == (roof["weight_bytes"], roof["step_flops"])
    assert row["achieved_gbps"] == pytest.approx(roof["weight_bytes"] / 2e-3 / 1e9)
    assert row["fraction_of_peak_bw"] == pytest.approx(row["achieved_gbps"] / 100.0)
    assert row["achieved_tflops"] == pytest.approx(roof["step_flops"] / 2e-3 / 1e12)
    assert row["fraction_of_peak_flops"] == pytest.approx(row["achieved_tflops"] / 2.0)
    assert row["step_over_bare_forward"] == pytest.approx(4.0)
    assert row["bare_forward_graphed_ms"] == 0.5


def test_run_mode_reports_the_median_run(bench_generate, monkeypatch):
    # Three timed runs of 3, 1 and 2 s, their first blocks streamed after 1, 0.5 and 0.2 s: the
    # row has the medians (2 s, 0.5 s), whatever the order.
    import types

    clock = iter([0.0, 1.0, 3.0, 10.0, 10.5, 11.0, 20.0, 20.2, 22.0])
    monkeypatch.setattr(bench_generate, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    generated = torch.zeros(3, 8, dtype=torch.long)
    result = types.SimpleNamespace(generated=generated, nfe=5, sequences=generated)

    def generate_streaming(*args, on_block, **kwargs):
        on_block(None)  # the first block arrives (the clock's middle reading)
        return result

    monkeypatch.setattr(bench_generate.cc, "generate_reference", generate_streaming)
    ids = torch.zeros(3, 2, dtype=torch.long)
    row = bench_generate.run_mode("threshold-eager", None, ids, None,
                                  bench_generate.cc.DecodeConfig(gen_length=8, block_length=4), 3)
    assert row["seconds"] == 2.0
    assert row["tokens_per_s"] == pytest.approx(3 * 8 / 2.0)  # every row's tokens
    assert row["ms_per_step"] == pytest.approx(1e3 * 2.0 / 5)
    assert row["nfe"] == 5 and row["compile_seconds"] == 0.0
    assert row["first_block_ms"] == pytest.approx(500.0)


def test_generate_runs_the_dream_preset_with_its_caches_but_not_layers_once(bench_generate,
                                                                             tmp_path, capsys):
    """tiny-dream: the eager modes decode, its dual cache included (its own init drawn at
    TINY_INIT_STD); the layers-once modes, which only LLaDA's marked layers take, are skipped
    with a note."""
    out = tmp_path / "rows.jsonl"
    assert bench_generate.main(["--preset", "tiny-dream", "--device", "cpu", "--modes",
                                "threshold-eager", "credit-dual-cache-eager",
                                "credit-compiled-layers-once", "--gen-length", "8",
                                "--block-length", str(BLOCK), "--repeats", "1",
                                "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [row["mode"] for row in rows] == ["threshold-eager", "credit-dual-cache-eager"]
    for row in rows:
        assert (row["preset"], row["init_std"]) == ("tiny-dream", 0.5)
        assert row["nfe"] >= 2 and row["step_flops"] > 0
    assert "skipping the layers-once" in capsys.readouterr().err


def test_generate_prompts_never_hold_the_mask_or_spare_ids(bench_generate):
    ids, mask = bench_generate.make_prompts(4, 64, vocab=128, mask_id=7, device="cpu")
    assert ids.shape == (4, 64) and bool(mask.eq(1).all())
    assert int(ids.max()) < 7 and len(ids.unique()) == 7


def test_benchutil_presets_dtypes_and_int_flags(monkeypatch):
    load("bench_generate", monkeypatch)  # puts benchmarks/ on sys.path
    import argparse

    import benchutil

    assert [benchutil.is_tiny(p) for p in ("tiny", "tiny-gqa", "llada-8b")] == [True, True, False]
    assert benchutil.bench_dtype("tiny-gqa") == torch.float32
    assert benchutil.bench_dtype("llada-8b") == benchutil.bench_dtype("llada-moe-active") == torch.bfloat16
    assert benchutil.bench_model_config("tiny-gqa").init_std == benchutil.TINY_INIT_STD
    assert benchutil.bench_model_config("llada-8b").init_std == 0.02  # the preset's own
    assert benchutil.bench_model_config("tiny-dream").initializer_range == benchutil.TINY_INIT_STD
    assert benchutil.positive_int("1") == 1 and benchutil.non_negative_int("0") == 0
    for parse, bad in ((benchutil.positive_int, "0"), (benchutil.non_negative_int, "-1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_check_flags_checks_as_a_run_would_and_runs_nothing(bench_generate, monkeypatch, capsys):
    monkeypatch.setattr(bench_generate, "bench_model", lambda *a, **k: pytest.fail("a model was built"))
    assert bench_generate.main(["--preset", "llada-8b", "--gen-length", "256", "--modes",
                                "llada-eager", "credit-graphs", "--check-flags"]) == 0
    assert "flags ok: preset llada-8b, modes llada-eager credit-graphs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a part block: what a run refuses
        bench_generate.main(["--preset", "llada-8b", "--gen-length", "250", "--check-flags"])
    assert exc.value.code == 2 and "gen_length=250" in capsys.readouterr().err


def test_cheap_compile_swaps_the_backend_and_rows_can_say_so(monkeypatch):
    load("bench_generate", monkeypatch)  # puts benchmarks/ on sys.path
    import importlib

    import benchutil

    from credit_compile import backend, step_cache

    verify = importlib.import_module("credit_compile.verify")
    for module in (step_cache, verify):  # undone after the test
        monkeypatch.setattr(module, "make_backend", backend.make_backend)
    assert benchutil.use_backend(False) == benchutil.backend_name() == "inductor"
    assert benchutil.use_backend(True) == benchutil.backend_name() == "cheap"
    for module in (step_cache, verify):
        assert module.make_backend.func is backend.make_backend
        assert module.make_backend.keywords == {"inductor": False}
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    benchutil.compile_fn(abs, fullgraph=True)
    assert calls == [{"backend": "eager", "fullgraph": True}]


# ------------------------------------------------------------------------------------------------
# bench_prompt_buckets.py, bench_credit_op.py
# ------------------------------------------------------------------------------------------------


def test_prompt_buckets_rows_record_the_decode_config(tmp_path, monkeypatch):
    bench = load("bench_prompt_buckets", monkeypatch)

    def fake_setting(argv, bucket, cold_cache=True):  # no worker processes, no compiles
        return {"compiled_steps": 1, "total_seconds": 1.0, "compile_seconds": 0.5,
                "decode_seconds": 0.5, "tokens_per_s": 1.0, "decode_tokens_per_s": 1.0, "nfe": 1,
                "max_latency_s": 1.0, "outputs": [[1]]}

    monkeypatch.setattr(bench, "run_setting", fake_setting)
    out = tmp_path / "rows.jsonl"
    bench.main(["--requests", "2", "--min-length", "2", "--max-length", "3", "--buckets", "4",
                "--gen-length", "8", "--block-length", "4", "--out", str(out)])
    rows = read_rows(out)
    assert [r["config"]["prompt_bucket"] for r in rows] == [None, 4]
    assert all(r["config"]["gen_length"] == 8 and r["config"]["block_length"] == 4 for r in rows)
    assert all(r["init_std"] == 0.5 for r in rows)


@pytest.mark.parametrize("bad", [["--gen-length", "0"], ["--requests", "0"], ["--buckets", "-4"],
                                 ["--min-length", "9", "--max-length", "8"],
                                 ["--gen-length", "8", "--block-length", "3"]])
def test_prompt_buckets_refuses_bad_flags(bad, tmp_path, monkeypatch):
    bench = load("bench_prompt_buckets", monkeypatch)
    monkeypatch.setattr(bench, "run_setting", lambda *a, **k: pytest.fail("a setting ran"))
    with pytest.raises(SystemExit) as exc:
        bench.main([*bad, "--out", str(tmp_path / "rows.jsonl")])
    assert exc.value.code == 2


def test_credit_op_refuses_an_unknown_dtype(monkeypatch, capsys):
    bench = load("bench_credit_op", monkeypatch)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--dtype", "bogus", "--out", "/nonexistent/rows.jsonl"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# plot_generate.py
# ------------------------------------------------------------------------------------------------


def row(mode, tokens_per_s, **fields):
    return {"device": "cpu", "preset": "tiny", "batch": 1, "gen_length": 8, "mode": mode,
            "tokens_per_s": tokens_per_s, **fields}


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.size[0]


@pytest.mark.parametrize("rows, preset", [([], None), ([row("llada-eager", 1.0)], "llada-8b"),
                                          ([row("llada-eager", 1.0, backend="cheap")], None)],
                         ids=["empty", "preset-matches-nothing", "cheap-backend"])
def test_plot_without_matching_rows_says_so(rows, preset, tmp_path, monkeypatch):
    plot = load("plot_generate", monkeypatch)
    data = write_rows(tmp_path / "rows.jsonl", rows)
    output = tmp_path / "plot.png"
    args = ["--input", str(data), "--output", str(output)] + (["--preset", preset] if preset else [])
    with pytest.raises(SystemExit, match="no rows.* to plot"):
        plot.main(args)
    assert not output.exists()


def test_plot_tolerates_rows_without_commit_or_preset(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    plot = load("plot_generate", monkeypatch)
    rows = [row("llada-eager", 1.0), row("credit-eager", 2.0, speedup_vs_llada_eager=2.0)]
    del rows[0]["preset"]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    output = tmp_path / "plot.png"
    assert plot.main(["--input", str(data), "--output", str(output)]) == 0
    assert output.stat().st_size > 0


def test_plot_keeps_runs_of_other_commits_dtypes_and_blocks_apart(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    plot = load("plot_generate", monkeypatch)
    run = dict(commit="aaaa", dtype="float32", block_length=4)
    rows = [row("llada-eager", 1.0, **run), row("credit-eager", 2.0, **run),
            row("credit-eager", 9.0, **{**run, "commit": "bbbb"}),
            row("credit-eager", 9.0, **{**run, "dtype": "bfloat16"}),
            row("credit-eager", 9.0, **{**run, "block_length": 8})]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    output = tmp_path / "plot.png"
    plot.main(["--input", str(data), "--output", str(output)])
    assert png_width(output) == 4 * 5 * 120  # four panels of 5 inches at 120 dpi


# ------------------------------------------------------------------------------------------------
# bench_compile_time.py
# ------------------------------------------------------------------------------------------------

# A cold compile per setting, in processes of their own: benchmarks/tests/test_gpu_session.py
# checks the rows of the `compile` stage's dry run (the same script and flags), not run twice.


def test_compile_time_ratios_are_against_the_same_layer_count(tmp_path, monkeypatch):
    bench = load("bench_compile_time", monkeypatch)
    seconds = {(2, False): 8.0, (2, True): 4.0, (8, False): 30.0, (8, True): 6.0}

    def fake_child(spec):  # no processes, no compiles
        return {"compile_seconds": seconds[spec["layers"], spec["compile_layers_once"]],
                "ms_per_step": 2.0 if spec["compile_layers_once"] else 4.0, "nfe": 3,
                "runner": "compiled", "tokens_equal_reference": True, "dtype": "float32",
                "device_name": "cpu", "torch": "x"}

    monkeypatch.setattr(bench, "run_child", fake_child)
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--layers", "2", "8", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r.get("compile_speedup") for r in rows] == [None, 2.0, None, 5.0]
    assert [r.get("step_time_ratio") for r in rows] == [None, 0.5, None, 0.5]


def test_compile_time_refuses_a_block_that_does_not_divide(tmp_path, monkeypatch):
    bench = load("bench_compile_time", monkeypatch)
    monkeypatch.setattr(bench, "run_child", lambda spec: pytest.fail("a child ran"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--gen-length", "8", "--block-length", "3", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2


def test_generate_runs_the_lladamoe_preset(bench_generate, tmp_path):
    """LLaDA-MoE's tiny preset through an eager mode and its dual cache: drawn at the tiny std,
    its roofline counted over its layers (every expert: the dense MoE runs them all)."""
    out = tmp_path / "rows.jsonl"
    assert bench_generate.main(["--preset", "tiny-lladamoe", "--device", "cpu", "--modes",
                                "llada-eager", "credit-dual-cache-eager", "--gen-length", "8",
                                "--block-length", str(BLOCK), "--repeats", "1", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r["mode"] for r in rows] == ["llada-eager", "credit-dual-cache-eager"]
    assert all(r["preset"] == "tiny-lladamoe" and r["init_std"] == 0.5 for r in rows)
    assert rows[0]["nfe"] == 8 and rows[1]["kv_cache_bytes"] > 0
    from credit_compile.models import build_model

    model = build_model("tiny-lladamoe")
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert rows[0]["step_flops"] > 2 * experts * rows[0]["prompt_length"]
