"""optimize() decodes the eager reference's tokens, NFE and trace, through the whole path (api ->
generation_setup -> step cache -> backend and passes -> runner -> loop and step -> strategy -> op),
for each strategy and each feature (KV caches, compile_layers_once, the factor rule, token
options, streaming, buckets), on toy models and the shipped one.

Equality crosses every module on the path, so it has a module of its own; a failure here is
located by the tests of the module it names."""

from __future__ import annotations

import pytest
import torch
from helpers import StreamRecorder, assert_same_generation, assert_streamed
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc
from credit_compile.assets import has_default_model, load_default_model
from credit_compile.passes import pass_count

CONFIGS = st.sampled_from([
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense"),
    dict(strategy="credit", credit_layout="sparse"),
    dict(strategy="credit", alpha=1.5, beta=0.5, gamma=0.5, tau=0.7),
    dict(strategy="credit", credit_layout="sparse", credit_slots=2, tau=0.95),
    dict(strategy="threshold", tau=0.8),
    dict(strategy="factor", factor=2.0),
    dict(strategy="llada"),
    dict(strategy="llada", remasking="random", seed=3),
    dict(strategy="llada", temperature=0.7, seed=5, steps=8),
    dict(strategy="llada", cfg_scale=1.0),
    dict(strategy="credit", early_stop=True, eos_token_id=7),
])


# Shapes, paddings, buckets and host syncs over every strategy: what surrounds the step. Each
# config's graph is proven on Inductor below (the kv-cache table, factor, token options).
@pytest.mark.cheap_compile
@settings(max_examples=8)
@given(
    config=CONFIGS,
    batch=st.integers(1, 3),
    prompt_length=st.integers(1, 6),
    blocks=st.sampled_from([(8, 4), (8, 8), (16, 4)]),
    seed=st.integers(0, 2**16),
    padded=st.booleans(),
    sync_every=st.integers(1, 3),
    prompt_bucket=st.sampled_from([None, None, 4, 8]),
    batch_bucket=st.sampled_from([None, None, 2]),
)
def test_optimized_equals_reference(config, batch, prompt_length, blocks, seed, padded, sync_every,
                                    prompt_bucket, batch_bucket):
    gen_length, block_length = blocks
    model = ContextMixModel(seed=seed % 7)
    ids, mask = make_prompts(batch, prompt_length, seed, padded)
    kwargs = dict(config, gen_length=gen_length, block_length=block_length,
                  prompt_bucket=prompt_bucket, batch_bucket=batch_bucket)
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    fast = cc.optimize(model, sync_every=sync_every, **kwargs).generate(ids, mask)
    assert_same_generation(ref, fast)


@pytest.mark.cheap_compile
@pytest.mark.inductor
def test_no_graph_breaks_one_compile_and_none_on_second_call():
    torch._dynamo.reset()
    counters.clear()
    model = ContextMixModel()
    ids, mask = make_prompts(2, 5, seed=1, padded=True)
    fast = cc.optimize(model, gen_length=16, block_length=4, credit_layout="dense")
    first = fast.generate(ids, mask)
    assert first.nfe >= 4
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1  # one graph serves every step and block
    frames = counters["frames"]["ok"]
    second = fast.generate(ids.flip(0), mask.flip(0))
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["ok"] == frames  # no recompilation for the same shapes
    assert not torch.equal(first.sequences, second.sequences)
    assert pass_count("credit_fusion") == 1


@pytest.mark.cheap_compile
@pytest.mark.inductor
def test_trace_matches_reference():
    model = ContextMixModel(seed=4)
    ids, _ = make_prompts(1, 3, 0, padded=False)
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, trace=True)
    fast = cc.optimize(model, gen_length=8, block_length=4).generate(ids, trace=True)
    assert [t.committed for t in ref.trace] == [t.committed for t in fast.trace]
    assert len(fast.trace) == fast.nfe


LAYERS_ONCE_CONFIGS = st.sampled_from([
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense"),  # the credit-fusion pass's graph
    dict(strategy="threshold", tau=0.7),
    dict(strategy="llada"),
    dict(strategy="llada", temperature=0.8, seed=4),  # the Gumbel pass's graph
])


# Layer counts, batches and paddings under compile_layers_once over each strategy's graph: the
# passes see the same graphs on the cheap backend; Inductor's code for the shared layer is proven
# by the kv-cache table's credit-layers-once and the trained model below.
@pytest.mark.slow
@pytest.mark.cheap_compile
@settings(max_examples=4, deadline=None)
@given(config=LAYERS_ONCE_CONFIGS, layers=st.integers(1, 3), batch=st.integers(1, 2),
       prompt_length=st.integers(2, 6), padded=st.booleans(), seed=st.integers(0, 2**16))
def test_tokens_equal_the_reference(config, layers, batch, prompt_length, padded, seed):
    model = layered_model(layers, seed=seed % 7)
    ids, mask = token_prompts(batch, prompt_length, seed=seed, padded=padded)
    decode = dict(gen_length=8, block_length=4, **config)
    ref = cc.generate_reference(model, ids, mask, **decode)
    heads = pass_count("block_sliced_lm_head")
    out = cc.optimize(model, compile_layers_once=True, **decode).generate(ids, mask)
    assert torch.equal(ref.sequences, out.sequences) and ref.nfe == out.nfe
    assert pass_count("block_sliced_lm_head") == heads + 1  # the passes still see the head


@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_the_trained_model_decodes_the_same_tokens():
    from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

    model, tokenizer = load_default_model("cpu")
    batch = tokenizer([prompt for _, prompt, _ in held_out_set(6, seed=3)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    decode = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH)
    ref = cc.generate_reference(model, ids, mask, **decode)
    out = cc.optimize(model, compile_layers_once=True, **decode).generate(ids, mask)
    assert torch.equal(ref.sequences, out.sequences) and ref.nfe == out.nfe


# The min-versions CI stack runs the first, the Gumbel (float64 elision pass) and the
# layers-once configs; the others (`slow`) exercise no torch-version-specific path of their own.
_MAIN_STACK_ONLY = pytest.mark.slow
# A graph other Inductor proofs already cover (llada's is llada-gumbel's less the noise; a bucket
# pads; early stop is credit's with a host check; the doubled batch of cfg is proven on Inductor
# with the token options below; threshold's and the dense layout's cached steps are credit's
# cache with the op that the factor test and the dense token-options case compile): the cheap
# backend.
_HOST_SIDE = pytest.mark.cheap_compile


@pytest.mark.parametrize("config", [
    pytest.param(dict(strategy="credit"), id="credit"),
    pytest.param(dict(strategy="credit", credit_layout="dense", credit_slots=None),
                 id="credit-dense", marks=[_MAIN_STACK_ONLY, _HOST_SIDE]),
    pytest.param(dict(strategy="threshold", tau=0.7), id="threshold",
                 marks=[_MAIN_STACK_ONLY, _HOST_SIDE]),
    pytest.param(dict(strategy="llada", steps=8), id="llada", marks=_HOST_SIDE),
    pytest.param(dict(strategy="llada", cfg_scale=1.5), id="llada-cfg",
                 marks=[_MAIN_STACK_ONLY, _HOST_SIDE]),
    pytest.param(dict(strategy="llada", temperature=0.8, seed=7), id="llada-gumbel"),
    pytest.param(dict(strategy="credit", early_stop=True, eos_token_id=5),
                 id="credit-early-stop", marks=[_MAIN_STACK_ONLY, _HOST_SIDE]),
    pytest.param(dict(strategy="credit", prompt_bucket=8), id="credit-prompt-bucket",
                 marks=_HOST_SIDE),
    pytest.param(dict(strategy="credit", compile_layers_once=True), id="credit-layers-once"),
    # The prompt cache shares the dual cache's version-specific paths: main stack only.
    pytest.param(dict(strategy="credit", kv_cache="prompt"), id="prompt-credit",
                 marks=_MAIN_STACK_ONLY),
    pytest.param(dict(strategy="llada", cfg_scale=1.5, kv_cache="prompt"), id="prompt-llada-cfg",
                 marks=[_MAIN_STACK_ONLY, _HOST_SIDE]),
    # The same two graphs as "credit", found in Inductor's cache: cheaper than the cheap backend.
    pytest.param(dict(strategy="credit", kv_cache_refresh=2), id="credit-refresh-2",
                 marks=_MAIN_STACK_ONLY),
])
def test_the_optimized_model_with_a_kv_cache_equals_the_reference(config):
    # One layer, a quarter fewer kernels for Inductor to build than two (the layers' cache slots
    # are the model's code, on every backend alike); two where one compiled layer serves both.
    model = layered_model(2 if config.get("compile_layers_once") else 1, seed=1)
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


# The cache's graphs are proven on Inductor by the toy models above; this is the trained
# weights' decode through them.
@pytest.mark.slow
@pytest.mark.cheap_compile
@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_the_trained_model_with_the_cache_equals_its_reference():
    from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

    model, tokenizer = load_default_model("cpu")
    batch = tokenizer([prompt for _, prompt, _ in held_out_set(6, seed=3)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    decode = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, kv_cache="dual")
    ref = cc.generate_reference(model, ids, mask, **decode)
    out = cc.optimize(model, compile_layers_once=True, **decode).generate(ids, mask)
    assert torch.equal(ref.sequences, out.sequences) and ref.nfe == out.nfe


MASK_ID = 126  # the tiny preset's mask token


@pytest.mark.cheap_compile
def test_the_optimized_model_streams_what_the_reference_streams():
    # Prompt and batch buckets pad the canvas with columns and rows that the streamed blocks,
    # like the returned sequences, leave out.
    model = layered_model(2, seed=1)
    decode = dict(gen_length=16, block_length=4, prompt_bucket=8, batch_bucket=4)
    fast = cc.optimize(model, **decode)
    ids, mask = token_prompts(3, 6, seed=2)
    streamed, reference = StreamRecorder(), StreamRecorder()
    out = fast.generate(ids, mask, progress=streamed.progress, on_block=streamed.on_block)
    ref = cc.generate_reference(model, ids, mask, progress=reference.progress,
                                on_block=reference.on_block, **decode)
    assert fast.last_stats["runner"] == "compiled"
    assert torch.equal(out.sequences, ref.sequences)
    assert_streamed(streamed, out, 16, 4)
    assert [(at, b.index, b.start) for at, b in streamed.blocks] == [
        (at, b.index, b.start) for at, b in reference.blocks]
    assert all(torch.equal(a.tokens, b.tokens)
               for (_, a), (_, b) in zip(streamed.blocks, reference.blocks, strict=True))


def test_the_optimized_model_equals_the_reference_and_factor_is_part_of_the_step():
    model = ContextMixModel(seed=3, sharpness=6.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (3, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    fast = cc.optimize(model, strategy="factor", gen_length=16, block_length=8, sync_every=2)
    nfes = []
    for factor in (1.0, 3.0):
        ref = cc.generate_reference(model, ids, mask, strategy="factor", factor=factor,
                                    gen_length=16, block_length=8, trace=True)
        out = fast.generate(ids, mask, factor=factor, trace=True)
        assert fast.last_stats["runner"] == "compiled"
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        assert [s.committed for s in out.trace] == [s.committed for s in ref.trace]
        nfes.append(out.nfe)
    assert nfes[1] < nfes[0]  # the larger factor commits more per step: the value was read
    assert fast.cached_steps == 2  # a factor is baked into its step
    # tau is not read by "factor", nor factor by "threshold": no step of their own.
    fast.generate(ids, mask, factor=3.0, tau=0.5)
    threshold = fast.generate(ids, mask, strategy="threshold")
    assert fast.generate(ids, mask, strategy="threshold", factor=2.0).stats["compile_seconds"] == 0
    assert fast.cached_steps == 3
    assert torch.equal(threshold.sequences, cc.generate_reference(
        model, ids, mask, strategy="threshold", gen_length=16, block_length=8).sequences)


@pytest.mark.parametrize("config, commit_last", [
    (dict(strategy="credit", credit_layout="dense"), False),  # through the credit-fusion pass
    pytest.param(dict(strategy="credit", kv_cache="prompt"), False,  # the sparse op, cached
                 marks=[pytest.mark.slow, pytest.mark.cheap_compile]),
    (dict(strategy="llada", cfg_scale=1.5), True),  # cfg's doubled batch on Inductor
])
def test_the_optimized_model_with_token_options_equals_the_reference(config, commit_last):
    model = layered_model(1, seed=1)
    ids, mask = token_prompts(3, 6, seed=2)
    decode = dict(config, gen_length=8, block_length=4)
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    # Tokens the plain decode chose: options on them change the decode.
    chosen = sorted(set(plain[:, :2].flatten().tolist()))
    if commit_last:  # the first chosen token that, committed last, changes the decode
        late = next(token for token in chosen if not torch.equal(cc.generate_reference(
            model, ids, mask, commit_last_tokens=token, **decode).generated, plain))
        decode["commit_last_tokens"] = late
        chosen.remove(late)
    suppress = tuple(chosen)
    fusions = pass_count("credit_fusion")
    ref = cc.generate_reference(model, ids, mask, suppress_tokens=suppress, **decode)
    out = cc.optimize(model, suppress_tokens=suppress, **decode).generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    assert not torch.equal(ref.generated, plain)
    if config.get("credit_layout") == "dense":
        assert pass_count("credit_fusion") == fusions + 1  # the suppression does not hide it
