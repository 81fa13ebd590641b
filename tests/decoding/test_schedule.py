"""decoding/schedule.py: with a KV cache, which step the host runs next: a block's refreshing first
step (the whole canvas) and its cached others (kv_cache="dual": the block; kv_cache="prompt":
the generated region), refreshes every `kv_cache_refresh` steps, and the host's checks placed so
that decoding with the cache equals decoding without it where nothing it keeps can go stale."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import layered_model, token_prompts

import credit_compile as cc
from credit_compile.decoding.loop import run_generation
from credit_compile.generation_setup import setup_generation
from credit_compile.runner import EagerStepRunner

DECODE_CONFIGS = st.sampled_from([
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense"),
    dict(strategy="threshold", tau=0.7),
    dict(strategy="llada"),
    dict(strategy="llada", cfg_scale=1.0),
    dict(strategy="llada", temperature=0.8, seed=4),
])


@settings(max_examples=12, deadline=None)
@given(config=DECODE_CONFIGS, kv_cache=st.sampled_from(["prompt", "dual"]),
       batch=st.integers(1, 3), prompt_length=st.integers(2, 7), padded=st.booleans(),
       block_length=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16))
def test_with_one_layer_the_cache_decodes_the_uncached_tokens(config, kv_cache, batch,
                                                              prompt_length, padded,
                                                              block_length, seed):
    model = layered_model(1, seed=seed % 7)
    ids, mask = token_prompts(batch, prompt_length, seed=seed, padded=padded)
    decode = dict(config, gen_length=16, block_length=block_length)
    uncached = cc.generate_reference(model, ids, mask, **decode)
    cached = cc.generate_reference(model, ids, mask, kv_cache=kv_cache, **decode)
    assert torch.equal(cached.sequences, uncached.sequences) and cached.nfe == uncached.nfe


@settings(max_examples=10, deadline=None)
@given(config=DECODE_CONFIGS, kv_cache=st.sampled_from(["prompt", "dual"]),
       layers=st.integers(2, 3), batch=st.integers(1, 3), padded=st.booleans(),
       block_length=st.sampled_from([4, 8]), seed=st.integers(0, 2**16))
def test_refreshing_at_every_step_decodes_the_uncached_tokens(config, kv_cache, layers, batch,
                                                              padded, block_length, seed):
    # Every step a refresh: every step sees the whole canvas as it is, stale nowhere.
    model = layered_model(layers, seed=seed % 7)
    ids, mask = token_prompts(batch, 5, seed=seed, padded=padded)
    decode = dict(config, gen_length=16, block_length=block_length)
    uncached = cc.generate_reference(model, ids, mask, **decode)
    cached = cc.generate_reference(model, ids, mask, kv_cache=kv_cache, kv_cache_refresh=1,
                                   **decode)
    assert torch.equal(cached.sequences, uncached.sequences) and cached.nfe == uncached.nfe


class ForwardLengths:
    """The sequence length of every forward the model runs."""

    def __init__(self, model):
        self.lengths = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs: self.lengths.append(args[0].shape[1]),
            with_kwargs=True)


@pytest.mark.parametrize("kv_cache, cached_length", [("dual", 8), ("prompt", 16)])
def test_a_block_runs_the_whole_canvas_once_then_its_span(kv_cache, cached_length):
    model = layered_model(2, seed=1)
    lengths = ForwardLengths(model)
    ids, mask = token_prompts(2, 6, seed=5)
    out = cc.generate_reference(model, ids, mask, gen_length=16, block_length=8,
                                kv_cache=kv_cache, trace=True)
    canvas = 6 + 16
    blocks = [step.block for step in out.trace]
    firsts = [i for i, block in enumerate(blocks) if i == 0 or blocks[i - 1] != block]
    assert lengths.lengths == [canvas if i in firsts else cached_length
                               for i in range(out.nfe)]
    assert out.nfe > len(firsts)  # cached steps ran


@pytest.mark.parametrize("refresh", [2, 3])
def test_refreshes_fall_on_the_blocks_steps_0_k_2k(refresh):
    model = layered_model(2, seed=1)
    lengths = ForwardLengths(model)
    ids, mask = token_prompts(2, 6, seed=5)
    out = cc.generate_reference(model, ids, mask, gen_length=16, block_length=8, kv_cache="dual",
                                kv_cache_refresh=refresh, steps=16, strategy="llada", trace=True)
    # The llada sampler's 8 steps per block: steps 0..7 of each block, twice.
    assert [step.block for step in out.trace] == [0] * 8 + [1] * 8
    assert lengths.lengths == [6 + 16 if i % 8 % refresh == 0 else 8 for i in range(16)]


@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
def test_a_cached_step_at_a_blocks_first_step_changes_nothing(kv_cache):
    # The host runs a refresh after its next check; the cached steps before it are idle.
    model = layered_model(2)
    for strategy in ("credit", "llada"):
        config = cc.DecodeConfig(strategy=strategy, gen_length=8, block_length=4,
                                 kv_cache=kv_cache)
        setup = setup_generation(model, *token_prompts(2, 5), config)
        steps = setup.step_functions()
        before = {name: t.clone() for name, t in setup.state.tensors().items()}
        with torch.no_grad():
            steps["cached"]()
        assert not setup.state.last_commit.any()
        # The last step's proposals (for traces) are the only record of it.
        for name, tensor in setup.state.tensors().items():
            if name != "last_conf":
                assert torch.equal(tensor, before[name]), name
        with torch.no_grad():
            steps["refresh"]()
        assert int(setup.state.nfe) == 1


@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
@pytest.mark.parametrize("strategy", [
    dict(strategy="credit"), dict(strategy="threshold"), dict(strategy="llada"),
    # One step per block: every step leaves its block, so an idle cached step at a block's first
    # step must not move decoding on (it did, skipping blocks, when a mutant let it).
    dict(strategy="llada", steps=4)], ids=["credit", "threshold", "llada", "llada-1-per-block"])
def test_windows_of_unchecked_steps_decode_as_checking_every_step(strategy, kv_cache):
    # Blocks end inside windows of 3: the idle cached steps after them wait for the refresh.
    model = layered_model(2, seed=3)
    ids, mask = token_prompts(3, 5, seed=6)
    config = cc.DecodeConfig(**strategy, gen_length=16, block_length=4, kv_cache=kv_cache)
    ref = cc.generate_reference(model, ids, mask, config, trace=True)
    runner = EagerStepRunner(setup_generation(model, ids, mask, config))
    out = run_generation(runner.step, runner.state, max_steps=config.gen_length, sync_every=3,
                         on_sync=runner.synced, trace=True)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    assert out.steps_run > out.nfe  # some steps were idle
    # The trace leaves the idle steps out: step for step the reference's.
    assert [(s.block, s.committed) for s in out.trace] == [
        (s.block, s.committed) for s in ref.trace]


@pytest.mark.parametrize("strategy", [dict(strategy="threshold", tau=0.99),
                                      dict(strategy="credit"),
                                      dict(strategy="llada", steps=12)])
@pytest.mark.parametrize("sync_every, refresh, window", [(4, 2, 2), (6, 3, 3), (4, 3, 1)])
def test_with_refreshes_the_host_checks_where_each_refresh_opens_a_window(strategy, sync_every,
                                                                           refresh, window):
    model = layered_model(2, seed=3)
    ids, mask = token_prompts(3, 5, seed=6)
    config = cc.DecodeConfig(**strategy, gen_length=16, block_length=8, kv_cache="prompt",
                             kv_cache_refresh=refresh, sync_every=sync_every)
    assert config.host_sync_every == window
    ref = cc.generate_reference(model, ids, mask, config)
    runs = {}
    for every in (window, sync_every):
        runner = EagerStepRunner(setup_generation(model, ids, mask, config))
        runs[every] = run_generation(runner.step, runner.state, max_steps=config.gen_length,
                                     sync_every=every, on_sync=runner.synced)
    out = runs[window]
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    if window != sync_every and strategy["strategy"] == "threshold":
        # Windows of sync_every steps would miss refreshes (tau 0.99: blocks last long enough).
        assert not torch.equal(runs[sync_every].sequences, ref.sequences)


def test_refreshing_at_every_step_compiles_no_cached_step():
    model = layered_model(2)
    config = cc.DecodeConfig(gen_length=8, block_length=4, kv_cache="dual", kv_cache_refresh=1)
    runner = EagerStepRunner(setup_generation(model, *token_prompts(2, 5), config))
    assert runner.schedule.phases == ("refresh",)
    assert [runner.schedule.next_phase() for _ in range(3)] == ["refresh"] * 3
    assert runner.schedule.following("refresh") == "refresh"
