"""The KV caches, kv_cache="dual" (Fast-dLLM's DualCache: a block's later steps run its tokens
only) and kv_cache="prompt" (they run the generated region, only the prompt's keys and values
kept): the model's cached forward against an independent oracle, its exactness where nothing it
keeps can go stale, and the fast paths equal to the eager reference decoding with them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import ContextMixModel, layered_model, token_prompts

import credit_compile as cc
from credit_compile.assets import has_default_model, load_default_model
from credit_compile.decoding.loop import run_generation
from credit_compile.generation_setup import setup_generation
from credit_compile.passes import pass_count
from credit_compile.runner import EagerStepRunner


def empty_cache(model, batch, length):
    # NaN-filled: a read of anything the forward did not write shows in its output.
    shape = model.kv_cache_shape(batch, length)
    return torch.full(shape, float("nan")), torch.full(shape, float("nan"))


# --- the model's forward with a cache -------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
@torch.no_grad()
def test_refresh_returns_the_plain_logits_and_fills_the_cache(preset):
    model = layered_model(2, preset=preset)
    ids, mask = token_prompts(2, 12, seed=1)
    keys, values = empty_cache(model, 2, 12)
    refreshed = model(ids, mask, kv_cache=(keys, values)).logits
    assert torch.equal(refreshed, model(ids, mask).logits)
    assert not keys.isnan().any() and not values.isnan().any()


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
@settings(max_examples=10, deadline=None)
@given(start=st.integers(0, 11), length=st.integers(1, 6), padded=st.booleans(),
       seed=st.integers(0, 2**16))
@torch.no_grad()
def test_cached_forward_of_an_unchanged_sequence_equals_the_plain_one(preset, start, length,
                                                                       padded, seed):
    # Nothing is stale: the kept keys and values are the sequence's own.
    model = layered_model(2, seed=seed % 5, preset=preset)
    ids, mask = token_prompts(2, 18, seed=seed, padded=padded)
    cache = empty_cache(model, 2, 18)
    plain = model(ids, mask, kv_cache=cache).logits
    positions = torch.arange(start, start + length)
    cached = model(ids[:, positions], mask, kv_cache=cache, cache_positions=positions).logits
    # Float rounding only: the GEMMs and attention kernels see other row counts (measured up to
    # 7e-6 of the logits' scale, through two layers of init_std 0.5); a wrong key or position
    # moves logits by a large fraction of it.
    scale = plain.abs().max().item()
    torch.testing.assert_close(cached, plain[:, positions], atol=2e-5 * scale, rtol=0)


@torch.no_grad()
def test_one_layer_cache_is_exact_after_the_block_changes_and_two_layers_are_not():
    # In one layer the kept keys and values of the rest depend on their own tokens only, so new
    # tokens in the block leave nothing stale; from the second layer on they do.
    positions = torch.arange(8, 14)
    ids, mask = token_prompts(2, 20, seed=3)
    changed = ids.clone()
    changed[:, positions] = torch.randint(0, 120, (2, len(positions)),
                                          generator=torch.Generator().manual_seed(4))
    errors = {}
    for layers in (1, 2):
        model = layered_model(layers, seed=2)
        cache = empty_cache(model, 2, 20)
        model(ids, mask, kv_cache=cache)
        cached = model(changed[:, positions], mask, kv_cache=cache,
                       cache_positions=positions).logits
        exact = model(changed, mask).logits[:, positions]
        errors[layers] = ((cached - exact).abs().max() / exact.abs().max()).item()
    assert errors[1] < 2e-6
    assert errors[2] > 1e-3  # the approximation this test would see in one layer


@pytest.mark.parametrize("span", ["block", "generated"])
@torch.no_grad()
def test_a_cached_forward_sees_the_rest_as_the_refresh_left_it(span):
    # The oracle: a plain forward of the changed sequence whose key and value projections
    # outside the recomputed span are replaced, in every layer, by the refresh's. A cache that
    # kept a row it should recompute, or recomputed one it should keep, differs from it.
    model = layered_model(3, seed=5, preset="tiny-gqa")
    ids, mask = token_prompts(2, 20, seed=8)
    recomputed = torch.arange(8, 12) if span == "block" else torch.arange(8, 20)
    changed = ids.clone()
    changed[:, 8:12] = torch.randint(0, 120, (2, 4), generator=torch.Generator().manual_seed(9))
    kept = torch.ones(20, dtype=torch.bool)
    kept[recomputed] = False

    projections, handles = {}, []
    for layer, block in enumerate(model.model.transformer.blocks):
        for name in ("k_proj", "v_proj"):
            def hook(module, args, output, key=(layer, name)):
                if key not in projections:  # the refresh: record
                    projections[key] = output
                    return output
                return torch.where(kept[None, :, None], projections[key], output)
            handles.append(getattr(block, name).register_forward_hook(hook))
    cache = empty_cache(model, 2, 20)
    model(ids, mask, kv_cache=cache)
    oracle = model(changed, mask).logits[:, recomputed]
    for handle in handles:
        handle.remove()

    cached = model(changed[:, recomputed], mask, kv_cache=cache,
                   cache_positions=recomputed).logits
    scale = oracle.abs().max().item()
    torch.testing.assert_close(cached, oracle, atol=2e-5 * scale, rtol=0)
    exact = model(changed, mask).logits[:, recomputed]
    assert (exact - oracle).abs().max() > 1e-2 * scale  # the test sees stale rows


def test_a_cache_of_the_wrong_shape_names_the_fix():
    model = layered_model(2)
    ids = torch.randint(0, 120, (2, 10))
    keys, values = empty_cache(model, 1, 10)
    with pytest.raises(ValueError, match=r"kv_cache keys of shape .*model.kv_cache_shape"):
        model(ids, kv_cache=(keys, values))
    keys, values = empty_cache(model, 2, 10)
    with pytest.raises(ValueError, match=r"one canvas position per input token"):
        model(ids[:, :3], kv_cache=(keys, values), cache_positions=torch.arange(4))
    with pytest.raises(ValueError, match=r"cache_positions without kv_cache"):
        model(ids[:, :3], cache_positions=torch.arange(3))


@torch.no_grad()
def test_a_cache_that_would_decode_wrong_logits_is_refused():
    # Each of these ran before and gave logits off by about 10 from the plain forward's.
    model = layered_model(2)
    ids, mask = token_prompts(2, 10, seed=1)
    shape, block = model.kv_cache_shape(2, 10), torch.arange(6, 10)
    one = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"share their memory: allocate two tensors"):
        model(ids, mask, kv_cache=(one, one))
    as_ints = (torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dtype torch.int64 .*floating-point"):
        model(ids, mask, kv_cache=as_ints)
    with pytest.raises(ValueError, match=r"keys of dtype torch.float32 and values of dtype "
                                         r"torch.bfloat16"):
        model(ids, mask, kv_cache=(torch.zeros(shape), torch.zeros(shape, dtype=torch.bfloat16)))
    cache = empty_cache(model, 2, 10)
    model(ids, mask, kv_cache=cache)
    with pytest.raises(ValueError, match=r"give the whole sequence's \[B, T\] = \(2, 10\) mask"):
        model(ids[:, block], mask[:, block], kv_cache=cache, cache_positions=block)
    # Two views of one allocation are two tensors: accepted, and exact.
    pair = torch.zeros(2, *shape)
    model(ids, mask, kv_cache=(pair[0], pair[1]))
    cached = model(ids[:, block], mask, kv_cache=(pair[0], pair[1]), cache_positions=block)
    assert torch.allclose(cached.logits, model(ids, mask).logits[:, block], atol=1e-5)


# --- decoding with the cache ----------------------------------------------------------------

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


def test_a_call_turning_the_cache_off_drops_its_refresh():
    model = layered_model(2, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, kv_cache="prompt",
                       kv_cache_refresh=2, compile=False)
    out = fast.generate(ids, mask, kv_cache="none")
    assert fast.resolved_config(kv_cache="none").kv_cache_refresh is None
    ref = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, ref.sequences)
    with pytest.raises(ValueError, match=r"kv_cache_refresh=2 with kv_cache='none'"):
        fast.generate(ids, mask, kv_cache="none", kv_cache_refresh=2)  # asked for: refused


# The min-versions CI stack runs the first, the Gumbel (float64 elision pass) and the
# layers-once configs; the others (`slow`) exercise no torch-version-specific path of their own.
_MAIN_STACK_ONLY = pytest.mark.slow


@pytest.mark.parametrize("config", [
    pytest.param(dict(strategy="credit"), id="credit"),
    pytest.param(dict(strategy="credit", credit_layout="dense", credit_slots=None),
                 id="credit-dense", marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="threshold", tau=0.7), id="threshold", marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="llada", steps=8), id="llada", marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="llada", cfg_scale=1.5), id="llada-cfg", marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="llada", temperature=0.8, seed=7), id="llada-gumbel"),
    pytest.param(dict(strategy="credit", early_stop=True, eos_token_id=5),
                 id="credit-early-stop", marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="credit", prompt_bucket=8), id="credit-prompt-bucket",
                 marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="credit", compile_layers_once=True), id="credit-layers-once"),
    # The prompt cache shares the dual cache's version-specific paths: main stack only.
    pytest.param(dict(strategy="credit", kv_cache="prompt"), id="prompt-credit",
                 marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="llada", cfg_scale=1.5, kv_cache="prompt"), id="prompt-llada-cfg",
                 marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="credit", kv_cache_refresh=2), id="credit-refresh-2",
                 marks=_MAIN_STACK_ONLY),
])
def test_the_optimized_model_equals_the_reference(config):
    model = layered_model(2, seed=1)
    decode = {"kv_cache": "dual", **config, "gen_length": 16, "block_length": 4}
    fast = cc.optimize(model, **decode)
    for seed in (1, 2):  # the second call reloads new prompts into the same buffers
        ids, mask = token_prompts(3, 6, seed=seed)
        ref = cc.generate_reference(model, ids, mask, trace=True, **decode)
        out = fast.generate(ids, mask, trace=True)
        assert fast.last_stats["runner"] == "compiled"
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        assert [s.committed for s in out.trace] == [s.committed for s in ref.trace]
    assert fast.cached_steps == 1


@pytest.mark.parametrize("kv_cache, sliced_heads", [
    ("dual", 1), pytest.param("prompt", 2, marks=_MAIN_STACK_ONLY)])
def test_the_passes_fire_in_both_steps(kv_cache, sliced_heads):
    model = layered_model(2)
    heads, fusions = pass_count("block_sliced_lm_head"), pass_count("credit_fusion")
    cc.optimize(model, gen_length=8, block_length=4, kv_cache=kv_cache,
                credit_layout="dense").generate(token_prompts(1, 5)[0])
    # The refresh slices the LM head to the block. The dual cache's cached step computes the
    # block only; the prompt cache's computes the generated region, sliced to the block too.
    assert pass_count("block_sliced_lm_head") == heads + sliced_heads
    assert pass_count("credit_fusion") == fusions + 2


@pytest.mark.slow  # the min-versions stack leaves it out (CI time); the main stack runs it
def test_the_cache_is_allocated_once_and_not_reloaded():
    model = layered_model(2)
    fast = cc.optimize(model, gen_length=8, block_length=4, kv_cache="dual")
    fast.generate(token_prompts(2, 5, seed=1)[0])
    (runner,) = fast._steps.runners()
    keys, values = runner.state.kv_cache
    assert keys.shape == model.kv_cache_shape(2, 13) == values.shape
    assert not any(t is keys or t is values for t in runner.state.tensors().values())
    pointer = keys.data_ptr()
    fast.generate(token_prompts(2, 5, seed=2)[0])
    assert runner.state.kv_cache[0].data_ptr() == pointer


@pytest.mark.cheap_compile
def test_it_is_part_of_the_step_key():
    fast = cc.optimize(layered_model(2), gen_length=8, block_length=4)
    ids = token_prompts(1, 5)[0]
    fast.generate(ids)
    fast.generate(ids, kv_cache="dual")
    fast.generate(ids, kv_cache="prompt")
    assert fast.cached_steps == 3


@pytest.mark.cheap_compile
def test_calls_differing_only_in_the_refresh_interval_share_a_step():
    # The host places the refreshes; only an interval of 1 (no cached step) compiles anew.
    model = layered_model(2, seed=1)
    decode = dict(gen_length=16, block_length=8, kv_cache="dual", strategy="llada", steps=16)
    fast = cc.optimize(model, **decode)
    ids, mask = token_prompts(3, 6, seed=2)
    outputs = {}
    for refresh, cached_steps in ((2, 1), (3, 1), (None, 1), (1, 2), (3, 2)):
        out = fast.generate(ids, mask, kv_cache_refresh=refresh)
        assert fast.cached_steps == cached_steps
        ref = cc.generate_reference(model, ids, mask, kv_cache_refresh=refresh, **decode)
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        outputs[refresh] = out.sequences
    # The intervals decode differently here, so a schedule left at the first call's would fail.
    assert not torch.equal(outputs[2], outputs[3]) and not torch.equal(outputs[3], outputs[None])


def test_random_draws_are_checked_after_every_step():
    gumbel = cc.DecodeConfig(strategy="llada", temperature=0.5, kv_cache="dual", sync_every=4)
    assert gumbel.host_sync_every == 1
    assert gumbel.replace(remasking="random", temperature=0.0).host_sync_every == 1
    assert gumbel.replace(temperature=0.0).host_sync_every == 4  # greedy: no draws
    assert gumbel.replace(kv_cache="none").host_sync_every == 4
    assert gumbel.replace(kv_cache_refresh=6).host_sync_every == 1  # draws: every step anyway
    # Every step a refresh: no cached step, so none idle and none for the host to place.
    assert gumbel.replace(kv_cache_refresh=1).host_sync_every == 4
    greedy = gumbel.replace(temperature=0.0)
    assert [greedy.replace(kv_cache_refresh=k).host_sync_every for k in (1, 2, 3, 4, 8, 6)] == \
        [4, 2, 1, 4, 4, 2]


def test_other_models_are_refused_naming_the_fix():
    model = ContextMixModel(seed=1)
    ids = torch.randint(0, 30, (1, 4))
    match = r"kv_cache='dual' needs credit_compile's own LLaDA model.*from_pretrained"
    with pytest.raises(ValueError, match=match):
        cc.generate_reference(model, ids, gen_length=8, block_length=4, kv_cache="dual")
    with pytest.raises(ValueError, match=match):  # at optimize(), not at the first request
        cc.optimize(model, gen_length=8, block_length=4, kv_cache="dual")
    with pytest.raises(ValueError, match=match):  # and as a call's override
        cc.optimize(model, gen_length=8, block_length=4).generate(ids, kv_cache="dual")


@pytest.mark.slow  # cold, a minute: the min-versions stack leaves it out; the main stack runs it
@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_the_trained_model_with_the_cache_equals_its_reference():
    from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

    model, tokenizer = load_default_model("cpu")
    batch = tokenizer([prompt for _, prompt, _ in held_out_set(6, seed=3)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    decode = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, kv_cache="dual")
    ref = cc.generate_reference(model, ids, mask, **decode)
    out = cc.optimize(model, **decode).generate(ids, mask)
    assert torch.equal(ref.sequences, out.sequences) and ref.nfe == out.nfe


def test_precompile_compiles_both_steps():
    model = layered_model(2)
    fast = cc.optimize(model, gen_length=8, block_length=4, kv_cache="dual")
    assert fast.precompile(2, 5) > 0
    ids = token_prompts(2, 5, seed=4)[0]
    out = fast.generate(ids)
    assert fast.last_stats["compile_seconds"] == 0.0  # neither step compiled in the call
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, kv_cache="dual")
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe


def test_verify_decodes_both_paths_with_the_cache():
    model = layered_model(2, seed=2)
    report = cc.verify(model, token_prompts(2, 5, seed=3)[0], gen_length=8, block_length=4,
                       kv_cache="dual")
    assert report.ok and report.tokens_equal


def test_under_autocast_the_cache_keeps_the_lower_precision_values():
    # A float32 model under bfloat16 autocast: its keys come out in bfloat16 and the float32
    # cache holds them exactly; the cached step casts them back, as the reference does.
    model = layered_model(2, seed=4)
    ids, mask = token_prompts(2, 6, seed=7)
    decode = dict(gen_length=16, block_length=4, kv_cache="dual")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = cc.generate_reference(model, ids, mask, **decode)
        out = cc.optimize(model, **decode).generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        keys, values = empty_cache(model, 2, 6)
        model(ids, mask, kv_cache=(keys, values))
    assert torch.equal(keys, keys.bfloat16().float())  # bfloat16 values, stored exactly
