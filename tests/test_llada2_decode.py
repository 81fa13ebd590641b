"""LLaDA2 decoded by `optimize()` and the eager reference: blocks aligned to positions from 0 (the
prompt's tail shares the first block), block-causal attention, and the exact block KV cache
(`kv_cache="block"`)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import credit_compile as cc
from credit_compile import reference
from credit_compile.decoding.loop import run_generation
from credit_compile.generation_setup import setup_generation
from credit_compile.models import build_model, get_config
from credit_compile.models.llada2_generate import llada2_generate
from credit_compile.runner import EagerStepRunner

BLOCK = 4
MASK = 126  # tiny-llada2's mask token
EOS = 125


@functools.cache
def llada2(layers: int = 2, dense: int = 1) -> torch.nn.Module:
    """tiny-llada2 trained (as it were) for blocks of 4, with weights of std 0.5: confidences far
    apart, so compiled and eager kernels' rounding never flips a decision (a near-uniform model
    puts them within 1e-7 of a threshold: docs/architecture.md, Exactness). `dense`: how many
    first layers have a dense MLP (the rest are MoE)."""
    config = get_config("tiny-llada2", block_length=BLOCK, initializer_range=0.5,
                        num_hidden_layers=layers, first_k_dense_replace=dense)
    return build_model(config, seed=1)


def prompt(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, EOS, (batch, length), generator=torch.Generator().manual_seed(seed))


def decode(**overrides) -> dict:
    return {"gen_length": 8, "block_length": BLOCK, **overrides}


# ----------------------------------------------------------------------------------------------
# The cache is exact: each step's logits are the uncached block-causal forward's
# ----------------------------------------------------------------------------------------------


def padded_pair(length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: a prompt of `length`, and one of `length - pad` left-padded by `pad`."""
    ids = torch.cat([prompt(length, 1), prompt(length, 2)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    ids[1, :pad] = EOS
    return ids, mask


@pytest.mark.parametrize("ids, mask", [
    (prompt(7), None),  # the prompt's tail of 3 shares block 0 with one mask
    (prompt(8), None),  # aligned: block 0 is all masks
    padded_pair(6, BLOCK),  # the padded row's blocks sit at the same canvas slots
], ids=["tail", "aligned", "padded"])
def test_every_cached_step_gets_the_uncached_block_causal_logits(ids, mask):
    """At every step of a generation on the block cache (prefill, each block's entering step, its
    cached steps) the logits the step decides on equal those of the whole canvas's forward
    without a cache, at the block's positions."""
    model = llada2()
    setup = setup_generation(model, ids, mask, cc.DecodeConfig(**decode(kv_cache="block",
                                                                        strategy="threshold")))
    state, seen = setup.state, []
    inner = setup.forward

    def recording(input_ids, attention_mask, position_ids, **cache):
        logits = inner(input_ids, attention_mask, position_ids, **cache)
        seen.append(logits[:, -BLOCK:] if "cache_positions" in cache else logits)
        return logits

    setup.forward = recording
    runner = EagerStepRunner(setup)
    phases = []
    with torch.no_grad():
        while not bool(state.done):
            block = int(state.block_index)
            positions = state.block_start + block * BLOCK + torch.arange(BLOCK)
            expected = model(state.x, state.attention_mask, block_length=BLOCK).logits[:, positions]
            phase = runner.schedule.next_phase()
            phases.append(phase)
            runner.run_phase(phase)
            got = seen[-1] if phase != "refresh" else seen[-1][:, positions]
            rows = slice(None) if mask is None else mask[:, 0].bool()  # a padding row: any logits
            torch.testing.assert_close(got[rows], expected[rows], atol=2e-5, rtol=1e-5)
            runner.synced()
    assert phases[0] == "refresh" and "enter" in phases and "cached" in phases
    assert phases.count("refresh") == 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 9), seed=st.integers(0, 3), gen_blocks=st.integers(1, 3),
       strategy=st.sampled_from(["credit", "threshold", "factor", "llada"]))
def test_decoding_on_the_block_cache_gives_the_uncached_tokens(length, seed, gen_blocks, strategy):
    """The same tokens and forward count as decoding without a cache, whatever the prompt's tail
    in its block (0 to 3 tokens)."""
    model, ids = llada2(), prompt(length, seed)
    config = decode(gen_length=BLOCK * gen_blocks, strategy=strategy)
    plain = reference.generate(model, ids, **config)
    cached = reference.generate(model, ids, kv_cache="block", **config)
    assert cached.sequences.tolist() == plain.sequences.tolist()
    assert cached.nfe == plain.nfe
    assert plain.sequences.shape == (1, length + BLOCK * gen_blocks)


@pytest.mark.parametrize("sync_every", [2, 3])
def test_host_checks_every_few_steps_give_the_same_tokens(sync_every):
    """As on CUDA: the host learns where a block begins only at its checks, so the cached steps
    after a block's end are idle until the next check runs the entering step."""
    model, ids = llada2(), prompt(7)
    config = cc.DecodeConfig(**decode(gen_length=12, kv_cache="block", strategy="credit"))
    expected = reference.generate(model, ids, config=config)
    runner = EagerStepRunner(setup_generation(model, ids, None, config))
    with torch.no_grad():
        out = run_generation(runner.step, runner.state, max_steps=runner.setup.max_steps(),
                             sync_every=sync_every, on_sync=runner.synced)
    assert out.sequences.tolist() == expected.sequences.tolist()
    assert out.nfe == expected.nfe


# ----------------------------------------------------------------------------------------------
# Blocks aligned to positions from 0
# ----------------------------------------------------------------------------------------------


def test_blocks_are_aligned_to_positions_from_zero():
    """A prompt of 7 leaves 3 tokens in block 0 of positions 4-7: the first step decodes position
    7 alone, and the last block runs on past gen_length (decoded, not returned)."""
    model, ids = llada2(), prompt(7)
    out = reference.generate(model, ids, trace=True, **decode(strategy="threshold"))
    assert out.sequences.shape == (1, 15) and out.prompt_length == 7
    committed = sorted(p for step in out.trace for p in step.committed[0])
    assert committed == list(range(7, 16))  # position 15: the last block's, past gen_length
    first = [p for step in out.trace if step.block == 0 for p in step.committed[0]]
    assert first == [7]
    blocks = []
    reference.generate(model, ids, on_block=blocks.append, **decode(strategy="threshold"))
    assert [(b.index, b.start, b.tokens.shape[1]) for b in blocks] == [(0, 7, 1), (1, 8, 4), (2, 12, 3)]
    assert torch.cat([b.tokens for b in blocks], 1).tolist() == out.generated.tolist()


def test_a_padded_row_decodes_as_it_does_alone():
    """Left padding by a multiple of the block keeps every row's blocks at the same canvas
    slots: each row gets the tokens it gets alone."""
    model = llada2()
    ids, mask = padded_pair(6, BLOCK)
    both = reference.generate(model, ids, mask, kv_cache="block", **decode())
    for row in range(2):
        real = ids[row:row + 1, mask[row].bool()]
        alone = reference.generate(model, real, kv_cache="block", **decode())
        assert both.generated[row].tolist() == alone.generated[0].tolist()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of these lengths, left-padded to the longest (the padding: end-of-text)."""
    width = max(lengths)
    ids = torch.full((len(lengths), width), EOS)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, width - length:] = prompt(length, seed + row)
        mask[row, width - length:] = 1
    return ids, mask


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 3),
       gen_length=st.integers(1, 9), kv_cache=st.sampled_from(["none", "block"]),
       strategy=st.sampled_from(["credit", "threshold", "llada2"]))
def test_a_batch_of_any_prompt_lengths_decodes_each_row_as_alone(lengths, seed, gen_length,
                                                                 kv_cache, strategy):
    """Rows whose prompts leave other tails in their first block, any gen_length: each row's
    tokens are those it gets alone (its prompt, as given, then its generated tokens)."""
    model = llada2()
    ids, mask = padded_batch(lengths, seed)
    config = decode(gen_length=gen_length, kv_cache=kv_cache, strategy=strategy)
    both = reference.generate(model, ids, mask, **config)
    assert both.sequences.shape == (len(lengths), max(lengths) + gen_length)
    for row in range(len(lengths)):
        alone = reference.generate(model, ids[row:row + 1, mask[row].bool()], **config)
        assert both.sequences[row, :max(lengths)].tolist() == ids[row].tolist()
        assert both.generated[row].tolist() == alone.generated[0].tolist()


def test_rows_of_other_tails_stream_and_trace_their_own_columns():
    """Prompts of 8 and 5 (tails 0 and 1): a block is streamed once every row's part of it is
    final, so the blocks' tokens put together are the generated tokens; a trace names each
    commit's column in `sequences`."""
    model = llada2()
    ids, mask = padded_batch([8, 5])
    blocks = []
    out = reference.generate(model, ids, mask, trace=True, on_block=blocks.append,
                             **decode(strategy="threshold", gen_length=6))
    assert [(b.index, b.start, b.last) for b in blocks] == [(0, 8, False), (1, 11, True)]
    assert torch.cat([b.tokens for b in blocks], 1).tolist() == out.generated.tolist()
    for row in range(2):
        committed = sorted(p for step in out.trace for p in step.committed[row])
        # Row 0's last block ends at its 8th token, row 1's at its 7th: decoded, not returned.
        assert committed == list(range(8, 16 if row == 0 else 15))


def test_a_tail_streams_one_block_more_than_the_config_counts_and_the_last_says_so():
    """A prompt of 7 and 4 tokens in blocks of 4: `DecodeConfig.num_blocks` is 1, the decode
    two blocks (1 token, then 3); `TextStream` flushes at the block that says it is the last."""
    model, ids = llada2(), prompt(7)
    config = decode(strategy="threshold", gen_length=4)
    assert cc.DecodeConfig(**config).num_blocks == 1
    stream, texts = cc.TextStream(Digits()), []
    out = reference.generate(model, ids, on_block=lambda b: texts.append((b.last, stream.add(b))),
                             **config)
    assert [last for last, _ in texts] == [False, True]
    assert "".join(text[0] for _, text in texts) == Digits().decode(out.generated[0].tolist())


class Digits:
    def decode(self, ids, **kwargs):
        return "".join(f"{i} " for i in ids)


# ----------------------------------------------------------------------------------------------
# The optimized model equals the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, kv_cache", [
    # Inductor compiles the block cache's three steps in minutes on 2 cores: main stack only.
    pytest.param("credit", "block", marks=pytest.mark.slow),
    # The uncached model graph is Inductor's in the sampling test below, the threshold op in the
    # LLaDA tests: the cheap backend.
    pytest.param("threshold", "none", marks=pytest.mark.cheap_compile)])
def test_the_compiled_step_equals_the_reference(strategy, kv_cache):
    """The compiled step's tokens: with the block cache, every phase (prefill, enter, cached)
    compiled by Inductor, on one dense layer (a token's experts are the same with or without the
    cache: the MoE layer's kernels are Inductor's in the sampling test below; the layers' cache
    slots are the model's, proven on two layers above)."""
    model, ids = (llada2(1) if kv_cache == "block" else llada2()), prompt(7)
    config = decode(strategy=strategy, kv_cache=kv_cache)
    fast = cc.optimize(model, **config)
    out = fast.generate(ids)
    expected = reference.generate(model, ids, **config)
    assert out.stats["runner"] == "compiled"
    assert out.sequences.tolist() == expected.sequences.tolist()
    assert out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_one_compiled_step_serves_every_prompt_of_a_bucket():
    """With prompt_bucket=8, prompts of 1 to 8 tokens, alone and in batches of mixed lengths (a
    batch_bucket of 2), all run the step `precompile` compiled, with the reference's tokens
    (without the cache: one graph to trace; the cache's three share the layout)."""
    model = llada2()
    config = decode(strategy="threshold", gen_length=6, prompt_bucket=8, batch_bucket=2)
    fast = cc.optimize(model, **config)
    fast.precompile(2, 8)
    for lengths in ([8, 5], [1], [7, 2], [3, 6]):
        ids, mask = padded_batch(lengths)
        out = fast.generate(ids, mask)
        expected = reference.generate(model, ids, mask, **config)
        assert out.sequences.tolist() == expected.sequences.tolist()
        assert out.nfe == expected.nfe and out.stats["compile_seconds"] == 0
    assert len(fast._steps) == 1


@pytest.mark.cheap_compile
def test_compiled_calls_of_several_shapes_equal_the_reference():
    """One optimized model: the threshold strategy on the block cache, prompts with other tails
    (a step each), a padded batch, and a second call reusing a compiled step."""
    model = llada2()
    fast = cc.optimize(model, **decode(strategy="threshold", kv_cache="block"))
    cases = [(prompt(5), None), (prompt(8), None), padded_pair(6, BLOCK), (prompt(5, seed=3), None)]
    for ids, mask in cases:
        out = fast.generate(ids, mask)
        expected = reference.generate(model, ids, mask, **decode(strategy="threshold", kv_cache="block"))
        assert out.sequences.tolist() == expected.sequences.tolist()
        assert out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_early_stop_ends_the_generation_at_end_of_text():
    """End-of-text settles in block 2 (of 4): the rest is filled with it, no block 3 step."""
    model, ids = llada2(), prompt(6, seed=1)
    kept = (5, 6, EOS, 127)  # few tokens left to propose: end-of-text comes soon
    config = decode(gen_length=12, strategy="credit", kv_cache="block", early_stop=True,
                    suppress_tokens=tuple(i for i in range(EOS) if i not in kept))
    expected = reference.generate(model, ids, **config)
    assert EOS in expected.generated[0, :10].tolist()  # blocks 0-2: generated columns 0-9
    assert expected.generated[0, 10:].eq(EOS).all()  # block 3, filled
    out = cc.optimize(model, **config).generate(ids)
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


# ----------------------------------------------------------------------------------------------
# What is refused, and what is warned about
# ----------------------------------------------------------------------------------------------


def test_optimize_takes_llada2_for_what_it_is():
    """Not a causal LM (a block sees itself whole), no warning with its trained block size."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = cc.optimize(llada2(), **decode(kv_cache="block"), compile=False)
        fast.generate(prompt(5))


@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
def test_approximate_caches_are_refused_naming_the_exact_one(kv_cache):
    with pytest.raises(ValueError, match="kv_cache='block'"):
        cc.optimize(llada2(), **decode(kv_cache=kv_cache))
    with pytest.raises(ValueError, match="kv_cache='block'"):
        reference.generate(llada2(), prompt(5), **decode(kv_cache=kv_cache))


def test_the_block_cache_is_refused_for_a_bidirectional_model():
    with pytest.raises(ValueError, match="block-causal"):
        cc.optimize(build_model("tiny"), **decode(kv_cache="block"))


def test_a_refresh_interval_is_refused_with_the_exact_cache():
    with pytest.raises(ValueError, match="exact"):
        cc.DecodeConfig(**decode(kv_cache="block", kv_cache_refresh=2))


def test_a_block_length_other_than_the_trained_one_is_warned_about():
    with pytest.warns(UserWarning, match=r"block_length=2 differs .* trained with \(4"):
        reference.generate(llada2(), prompt(5), gen_length=8, block_length=2)


def test_a_gen_length_off_the_blocks_is_refused_for_a_bidirectional_model():
    with pytest.raises(ValueError, match=r"gen_length=6 is not a multiple of block_length=4: .*"
                                         r"only a block-causal model \(LLaDA2\) takes any"):
        reference.generate(build_model("tiny"), prompt(5), gen_length=6, block_length=4)


def test_the_trained_block_length_is_checked_in_the_config():
    with pytest.raises(ValueError, match="block_length=0"):
        get_config("tiny-llada2", block_length=0)


# ----------------------------------------------------------------------------------------------
# LLaDA2's own sampler: the "llada2" strategy against the official rules (models.llada2_generate)
# ----------------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 9), seed=st.integers(0, 3), steps=st.sampled_from([1, 2, 3, 4]),
       tau=st.sampled_from([0.3, 0.95]), gen_length=st.integers(1, 10))
def test_the_llada2_strategy_follows_the_official_rules(length, seed, steps, tau, gen_length):
    """On the block cache, the "llada2" strategy's tokens and forwards are those of the official
    rules (the mask token out of the softmax, as in every strategy here), up to the first
    end-of-text token; early_stop stops where eos_early_stop does; any gen_length (the last
    block decoded whole, the tokens cut at gen_length). `steps` passed capped at gen_length,
    as the official generate() caps it."""
    model, ids = llada2(), prompt(length, seed)
    steps = min(steps, gen_length)
    expected, nfe = llada2_generate(model, ids, gen_length=gen_length, block_length=BLOCK,
                                    steps=steps, threshold=tau, eos_early_stop=True,
                                    mask_competes=False)
    out = reference.generate(model, ids, strategy="llada2", steps=steps, tau=tau, early_stop=True,
                             kv_cache="block", **decode(gen_length=gen_length))
    assert out.generated[0, :expected.shape[1]].tolist() == expected[0].tolist()
    assert out.nfe == nfe


@pytest.mark.cheap_compile
def test_the_compiled_llada2_strategy_equals_the_reference():
    model, ids = llada2(), prompt(7)
    config = decode(gen_length=12, strategy="llada2", steps=2, tau=0.5, kv_cache="block")
    out = cc.optimize(model, **config).generate(ids)
    expected = reference.generate(model, ids, **config)
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


def test_the_docs_decoding_example_runs(capsys):
    import re

    doc = (Path(__file__).parents[1] / "docs" / "llada2.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[1]
    exec(compile(code, "docs/llada2.md", "exec"), {})
    assert capsys.readouterr().out == "torch.Size([1, 15]) True\n"


# ----------------------------------------------------------------------------------------------
# LLaDA2's sampling: temperature, top-k, top-p
# ----------------------------------------------------------------------------------------------

SAMPLED = dict(strategy="llada2", temperature=1.0, top_k=20, top_p=0.9)


def test_a_seed_makes_llada2_sampling_reproducible():
    """The same seed, the same tokens (with or without the cache: the same draws, step for
    step); another seed, or greedy decoding, others."""
    model, ids = llada2(), prompt(7)
    config = decode(kv_cache="block", **SAMPLED)
    first = reference.generate(model, ids, seed=3, **config)
    assert reference.generate(model, ids, seed=3, **config).sequences.tolist() == first.sequences.tolist()
    uncached = reference.generate(model, ids, seed=3, **{**config, "kv_cache": "none"})
    assert uncached.sequences.tolist() == first.sequences.tolist()
    other = reference.generate(model, ids, seed=4, **config)
    greedy = reference.generate(model, ids, **decode(strategy="llada2"))
    assert first.generated.tolist() not in [other.generated.tolist(), greedy.generated.tolist()]


def test_greedy_llada2_ignores_the_filters_with_a_warning():
    model, ids = llada2(), prompt(6)
    greedy = reference.generate(model, ids, **decode(strategy="llada2"))
    with pytest.warns(UserWarning, match=r"top_k, top_p are read by strategy 'llada2' with "
                                         r"temperature > 0"):
        filtered = reference.generate(model, ids, top_k=1, top_p=0.5, **decode(strategy="llada2"))
    assert filtered.sequences.tolist() == greedy.sequences.tolist()


@pytest.mark.cheap_compile
def test_compiled_llada2_sampling_equals_the_reference_with_the_same_seed():
    """On the block cache (prefill, entering and cached steps), a prompt whose tail shares block
    0 and a padded batch: the same draws as the reference, step for step."""
    model = llada2()
    fast = cc.optimize(model, **decode(kv_cache="block", **SAMPLED))
    for seed, (ids, mask) in enumerate([(prompt(7), None), padded_pair(6, BLOCK)]):
        out = fast.generate(ids, mask, seed=seed)
        expected = reference.generate(model, ids, mask, seed=seed, **decode(kv_cache="block", **SAMPLED))
        assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


def test_inductors_llada2_sampling_equals_the_reference_with_the_same_seed():
    """Inductor's code for the filters and the float64 Gumbel draw (fallback_random: eager's
    random numbers)."""
    model, ids = llada2(), prompt(5)
    config = decode(temperature=0.7, strategy="llada2", top_k=8, top_p=0.8, seed=11)
    out = cc.optimize(model, **config).generate(ids)
    expected = reference.generate(model, ids, **config)
    assert out.stats["runner"] == "compiled"
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe
