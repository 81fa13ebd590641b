"""verify.py: `verify()` compares the eager reference and the optimized path on a model and its
prompts: tokens, NFE, logits, timing."""

from __future__ import annotations

import pytest
import torch
from helpers import layer_calls, record_graphs
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc

MASK = 39


@pytest.mark.cheap_compile
def test_verify_report():
    model = ContextMixModel(seed=6)
    ids, mask = make_prompts(2, 4, seed=0, padded=True)
    report = cc.verify(model, ids, mask, gen_length=8, block_length=4)
    assert report.ok and report.tokens_equal and report.first_difference is None
    assert report.nfe_reference == report.nfe_optimized
    assert report.max_logit_difference < 1e-4
    assert "OK" in str(report)


@pytest.mark.cheap_compile
def test_verify_times_several_calls_and_reports_their_median():
    # One timed call each made contradictory speedups on a busy machine.
    report = cc.verify(ContextMixModel(seed=6), torch.randint(0, 30, (1, 4)), gen_length=8,
                       block_length=4, compile=False, timed_calls=4)
    assert report.ok and report.reference_calls >= 4 and report.optimized_calls >= 4
    assert report.reference_seconds > 0 and report.optimized_seconds > 0
    assert (f"(medians of {report.reference_calls} eager and {report.optimized_calls} optimized "
            f"calls, each path's first call untimed)") in str(report)
    with pytest.raises(ValueError, match=r"timed_calls=0: use a positive number of calls"):
        cc.verify(ContextMixModel(seed=6), torch.randint(0, 30, (1, 4)), timed_calls=0)


@pytest.mark.cheap_compile
def test_time_calls_times_fast_calls_many_times_and_slow_ones_a_few_after_an_untimed_one():
    from credit_compile.verify import time_calls

    calls = []

    def generate():
        calls.append(1)
        return len(calls)

    outputs, median = time_calls(generate, torch.device("cpu"), min_calls=1, budget_seconds=0.0)
    assert (outputs, len(calls)) == ([1, 2], 2) and median >= 0  # the untimed call, then one
    calls.clear()
    outputs, _ = time_calls(generate, torch.device("cpu"), min_calls=3, budget_seconds=60.0,
                            max_calls=20)
    assert len(outputs) == len(calls) == 21  # calls of microseconds: up to max_calls


@pytest.mark.cheap_compile
def test_verify_an_optimized_model_with_a_config_and_its_mask_id():
    class NoMaskInConfig(ContextMixModel):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.config.mask_token_id = None

    model = NoMaskInConfig(seed=6)
    fast = cc.optimize(model, mask_id=MASK, gen_length=8, block_length=4)
    ids, mask = make_prompts(2, 4, seed=0, padded=True)
    llada = cc.DecodeConfig(strategy="llada", gen_length=8, block_length=4, mask_id=MASK)
    report = cc.verify(fast, ids, mask, config=llada)  # both paths decode llada, not the default
    assert report.ok and report.nfe_optimized == report.nfe_reference == 8
    assert cc.verify(fast, ids, mask).ok  # the mask token given to optimize() reaches both


@pytest.mark.cheap_compile
def test_verify_detects_a_difference(monkeypatch):
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (1, 4))
    fast = cc.optimize(model, gen_length=8, block_length=4)
    original = fast.generate

    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sequences[0, -1] = (out.sequences[0, -1] + 1) % 30
        return out

    monkeypatch.setattr(fast, "generate", corrupted)
    report = cc.verify(fast, ids)
    assert not report.ok
    assert report.first_difference == (0, ids.shape[1] + 7)


@pytest.mark.cheap_compile
def test_verify_names_the_first_of_several_differences(monkeypatch):
    # (row, position) of the first differing token in row-major order, not any other one.
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(0))
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    original = fast.generate

    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        for row, column in ((0, 6), (0, 11), (1, 5)):
            out.sequences[row, column] = (out.sequences[row, column] + 1) % 30
        return out

    monkeypatch.setattr(fast, "generate", corrupted)
    assert cc.verify(fast, ids).first_difference == (0, 6)


@pytest.mark.cheap_compile
def test_verify_of_an_optimized_model_decodes_with_the_config_given():
    # A `config` replaces the optimized model's own for both paths (here llada in 2 steps, an
    # NFE the model's default credit decoding does not have).
    model = ContextMixModel(seed=6)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    llada = cc.DecodeConfig(strategy="llada", steps=2, gen_length=8, block_length=4,
                            compile=False)
    assert cc.generate_reference(model, ids, gen_length=8, block_length=4).nfe != 2
    report = cc.verify(fast, ids, config=llada)
    assert report.ok and report.nfe_reference == report.nfe_optimized == 2


@pytest.mark.cheap_compile
@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(remasking="random")])
def test_verify_a_sampling_config_without_a_seed(sampling):
    # Unseeded, the two paths draw different numbers: verify compares them at seed 0.
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(0))
    report = cc.verify(model, ids, strategy="llada", gen_length=8, block_length=4, **sampling)
    assert report.ok, report


@pytest.mark.cheap_compile
def test_verify_leaves_the_callers_rng_alone():
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (1, 4))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cc.verify(model, ids, strategy="llada", temperature=1.0, gen_length=8, block_length=4)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.cheap_compile
def test_verify_sees_a_first_call_that_differs_from_the_second(monkeypatch):
    # The first (compiling) call's tokens must equal too, not only the second's.
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (1, 4), generator=torch.Generator().manual_seed(0))
    fast = cc.optimize(model, gen_length=8, block_length=4)
    original, calls = fast.generate, []

    def first_call_corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            out.sequences[0, -1] = (out.sequences[0, -1] + 1) % 30
        return out

    monkeypatch.setattr(fast, "generate", first_call_corrupted)
    report = cc.verify(fast, ids)
    assert not report.tokens_equal and not report.ok


@pytest.mark.cheap_compile
def test_verify_reports_the_first_calls_compile_seconds():
    # compile_seconds is the first call's compile time (the second compiles nothing).
    report = cc.verify(ContextMixModel(seed=6), torch.randint(0, 30, (1, 4)), gen_length=8,
                       block_length=4)
    assert report.ok and report.compile_seconds > 0 and report.runner == "compiled"


@pytest.mark.cheap_compile
def test_verify_sees_an_nfe_difference(monkeypatch):
    # Same tokens but another NFE is a mismatch.
    model = ContextMixModel(seed=6)
    ids = torch.randint(0, 30, (1, 4), generator=torch.Generator().manual_seed(0))
    fast = cc.optimize(model, gen_length=8, block_length=4)
    original = fast.generate

    def more_forwards(*args, **kwargs):
        out = original(*args, **kwargs)
        out.nfe += 1
        return out

    monkeypatch.setattr(fast, "generate", more_forwards)
    report = cc.verify(fast, ids)
    assert report.tokens_equal and report.nfe_optimized == report.nfe_reference + 1
    assert not report.ok


@pytest.mark.cheap_compile
def test_verify_measures_the_compiled_forward(monkeypatch):
    # max_logit_difference compares the eager forward with the compiled one; a backend whose
    # compiled forward is off by 0.5 must show in it.
    import importlib

    # The submodule: the package's `verify` attribute is the function.
    verify_module = importlib.import_module("credit_compile.verify")

    def off_by_half(passes=None, **kwargs):
        def backend(gm, example_inputs):
            def run(*args):
                return [o + 0.5 if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                        for o in gm(*args)]
            return run
        return backend

    monkeypatch.setattr(verify_module, "make_backend", off_by_half)
    ids = torch.randint(0, 30, (1, 4))
    report = cc.verify(ContextMixModel(seed=6), ids, gen_length=8, block_length=4)
    assert report.max_logit_difference == pytest.approx(0.5, abs=1e-4)
    eager = ContextMixModel(seed=6)(torch.cat([ids, torch.full((1, 8), MASK)], 1))
    assert report.max_logit_magnitude == pytest.approx(float(eager.abs().max()), rel=1e-6)
    assert f"relative logit difference: {0.5 / report.max_logit_magnitude:.2e}" in str(report)


@pytest.mark.cheap_compile
def test_verify_measures_the_forward_compiled_as_configured(monkeypatch):
    import importlib

    # The submodule: the package's `verify` attribute is the function.
    graphs = record_graphs(monkeypatch, importlib.import_module("credit_compile.verify"))
    report = cc.verify(layered_model(2), torch.randint(0, 120, (1, 5)), gen_length=8,
                       block_length=4, compile_layers_once=True)
    assert report.ok and report.max_logit_difference < 1e-4
    (gm,) = graphs
    assert layer_calls(gm) == ["subgraph_0"] * 2


@pytest.mark.cheap_compile
def test_verify_decodes_both_paths_with_the_cache():
    model = layered_model(2, seed=2)
    report = cc.verify(model, token_prompts(2, 5, seed=3)[0], gen_length=8, block_length=4,
                       kv_cache="dual")
    assert report.ok and report.tokens_equal
