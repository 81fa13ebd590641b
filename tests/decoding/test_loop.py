"""decoding/loop.py: the one generation loop. Its invariants, host checks every `sync_every` steps
changing no token, the error when nothing commits, and streaming: `on_block` is given each block
of the output once it is final, in order, while decoding goes on."""

from __future__ import annotations

import pytest
import torch
from decoding_cases import (
    decode_options,
    llada_steps,
    prompts,
    seeds,
    toy,
)
from helpers import StreamRecorder, assert_streamed
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc
from credit_compile import DecodeConfig
from credit_compile.decoding.loop import run_generation
from credit_compile.generation_setup import setup_generation


@pytest.mark.cheap_compile
def test_non_finite_logits_are_named_when_nothing_commits():
    class NaNLogits(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return super().forward(input_ids, attention_mask, position_ids) * float("nan")

    with pytest.raises(RuntimeError, match=r"no token was committed. Non-finite logits"):
        cc.generate_reference(NaNLogits(), make_prompts(1, 3, 0, padded=False)[0],
                              gen_length=8, block_length=4)


MASK_ID = 126  # the tiny preset's mask token


CONFIGS = [
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense", credit_slots=None),
    dict(strategy="threshold", tau=0.7),
    dict(strategy="llada"),
    dict(strategy="llada", temperature=0.7, seed=3),
    dict(strategy="credit", kv_cache="dual"),
    dict(strategy="threshold", kv_cache="prompt"),
]


@given(config=st.sampled_from(CONFIGS), batch=st.integers(1, 3), prompt_length=st.integers(3, 8),
       blocks=st.sampled_from([(8, 4), (12, 4), (16, 8)]), seed=st.integers(0, 3))
def test_the_reference_streams_every_block_once_in_order(config, batch, prompt_length, blocks,
                                                          seed):
    gen_length, block_length = blocks
    model = layered_model(1, seed=seed)
    ids, mask = token_prompts(batch, prompt_length, seed=seed)
    recorder = StreamRecorder()
    out = cc.generate_reference(model, ids, mask, gen_length=gen_length,
                                block_length=block_length, progress=recorder.progress,
                                on_block=recorder.on_block, **config)
    assert_streamed(recorder, out, gen_length, block_length)
    # Streaming reads the output; it changes nothing in it.
    plain = cc.generate_reference(model, ids, mask, gen_length=gen_length,
                                  block_length=block_length, **config)
    assert torch.equal(out.sequences, plain.sequences) and out.nfe == plain.nfe


def test_early_stop_streams_the_blocks_filled_with_end_of_text():
    # Once every row has settled an end-of-text token, the blocks after it are filled at once
    # and delivered together at the last check.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    plain = cc.generate_reference(model, ids, mask, gen_length=16, block_length=4)
    # Each row's first generated token as end-of-text: settled once it is committed.
    eos = tuple(int(t) for t in plain.generated[:, 0])
    recorder = StreamRecorder()
    out = cc.generate_reference(model, ids, mask, gen_length=16, block_length=4,
                                early_stop=True, eos_token_id=eos, progress=recorder.progress,
                                on_block=recorder.on_block)
    blocks = [block for _, block in recorder.blocks]
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    for block in blocks:
        assert torch.equal(block.tokens, out.sequences[:, block.start:block.start + 4])
    assert out.nfe < plain.nfe  # it did stop early


def test_streamed_blocks_are_copies_that_a_later_call_leaves_alone():
    # A server may send the blocks after the call returns; the optimized model decodes the next
    # call of the same shapes in the same static buffers, which must not rewrite them.
    model = layered_model(1, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids, mask = token_prompts(2, 4, seed=4)
    kept = []
    first = fast.generate(ids, mask, on_block=kept.append)
    second = fast.generate(token_prompts(2, 4, seed=5)[0], mask)
    assert not torch.equal(first.generated, second.generated)
    assert [block.index for block in kept] == [0, 1]
    for block in kept:
        assert torch.equal(block.tokens, first.sequences[:, block.start:block.start + 4])


@settings(max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    prompt_len=st.integers(1, 5),
    blocks=st.sampled_from([(8, 4), (8, 2), (12, 4), (8, 8)]),
    strategy=st.sampled_from(["credit", "threshold", "llada"]),
    tau=st.floats(0.2, 1.0),
)
def test_loop_properties(seed, batch, prompt_len, blocks, strategy, tau):
    gen_length, block_length = blocks
    model = ContextMixModel(seed=seed % 5, sharpness=1.0 + seed % 4)
    ids = torch.randint(0, 30, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    out = cc.generate_reference(model, ids, strategy=strategy, gen_length=gen_length,
                                block_length=block_length, tau=tau, trace=True)
    assert torch.equal(out.sequences[:, :prompt_len], ids)  # the prompt never changes
    assert (out.generated != 39).all()  # no mask left
    num_blocks = gen_length // block_length
    assert out.nfe >= num_blocks
    if strategy == "llada":
        assert out.nfe == gen_length
    else:
        assert out.nfe <= gen_length
    # A committed token never changes afterwards: every generated position is committed exactly
    # once over the whole trace, and blocks are decoded left to right.
    for row in range(batch):
        committed = [p for t in out.trace for p in t.committed[row]]
        assert sorted(committed) == list(range(prompt_len, prompt_len + gen_length))
    assert [t.block for t in out.trace] == sorted(t.block for t in out.trace)


def test_sync_every_does_not_change_tokens_or_nfe_on_one_model():
    from credit_compile.decoding.loop import run_generation

    model = ContextMixModel(seed=3)
    ids = torch.randint(0, 30, (2, 4))
    results = []
    for sync_every in (1, 3):
        setup = setup_generation(model, ids, None, DecodeConfig(gen_length=12, block_length=4))
        with torch.no_grad():
            results.append(run_generation(setup.step_function(), setup.state,
                                          max_steps=setup.strategy.max_steps(),
                                          sync_every=sync_every))
    assert torch.equal(results[0].sequences, results[1].sequences)
    assert results[0].nfe == results[1].nfe
    assert results[1].steps_run >= results[0].steps_run


MIX_MASK = 39


class RecordingModel(ContextMixModel):
    """ContextMixModel that keeps the canvas it was called with (the state before each step)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        return super().forward(input_ids, attention_mask)


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 6), kw=decode_options())
def test_loop_invariants(seed, batch, prompt_len, kw):
    model = toy(seed, RecordingModel)
    ids = prompts(seed, batch, prompt_len)
    out = cc.generate_reference(model, ids, trace=True, **kw)
    gen_length, block_length = kw["gen_length"], kw["block_length"]
    num_blocks = gen_length // block_length
    final = out.sequences

    # Shape, prompt untouched, no mask left.
    assert final.shape == (batch, prompt_len + gen_length)
    assert out.prompt_length == prompt_len
    assert torch.equal(final[:, :prompt_len], ids)
    assert not (out.generated == MIX_MASK).any()

    # NFE: one forward per counted step (a doubled batch with guidance), at least one step per
    # block.
    assert len(model.inputs) == out.nfe == len(out.trace)
    assert out.nfe >= num_blocks
    if kw.get("cfg_scale"):
        assert all(x.shape[0] == 2 * batch for x in model.inputs)
        for x in model.inputs:  # the unconditional half sees the prompt masked
            assert (x[batch:, :prompt_len] == MIX_MASK).all()
            assert torch.equal(x[batch:, prompt_len:], x[:batch, prompt_len:])
        model.inputs = [x[:batch] for x in model.inputs]
    if kw["strategy"] == "llada":
        assert out.nfe == llada_steps(kw)
    else:
        assert out.nfe <= gen_length

    # The canvas before each step is what the model saw; after the last step it is `final`.
    canvases = model.inputs + [final]
    for k, step in enumerate(out.trace):
        before, after = canvases[k], canvases[k + 1]
        assert torch.equal(before[:, :prompt_len], ids)
        lo = prompt_len + step.block * block_length
        for row in range(batch):
            positions = step.committed[row]
            assert all(lo <= p < lo + block_length for p in positions)
            for p in positions:
                assert before[row, p] == MIX_MASK and after[row, p] != MIX_MASK
                assert after[row, p] == final[row, p]  # committed tokens never change
            untouched = torch.ones(before.shape[1], dtype=torch.bool)
            untouched[positions] = False
            assert torch.equal(before[row, untouched], after[row, untouched])
            # Threshold-style strategies commit at least one token in a row that has masks in
            # the block; the best one when nothing reaches tau.
            if kw["strategy"] != "llada" and (before[row, lo:lo + block_length] == MIX_MASK).any():
                assert positions
            if kw["strategy"] != "llada" and positions:
                assert all(c >= min(kw["tau"], max(step.confidence[row])) - 1e-5
                           for c in step.confidence[row])
    # Every generated position is committed exactly once; blocks go left to right.
    for row in range(batch):
        every = sorted(p for t in out.trace for p in t.committed[row])
        assert every == list(range(prompt_len, prompt_len + gen_length))
    blocks = [t.block for t in out.trace]
    assert blocks == sorted(blocks) and set(blocks) == set(range(num_blocks))


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5), kw=decode_options(),
       sync_every=st.integers(2, 5), sample=st.booleans())
def test_sync_every_does_not_change_tokens_or_nfe(seed, batch, prompt_len, kw, sync_every, sample):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    if kw["strategy"] == "llada" and sample:
        kw.update(temperature=0.8, remasking="random")
    results = []
    for every in (1, 3, sync_every):
        setup = setup_generation(model, ids, None, DecodeConfig(seed=seed, **kw))
        with torch.no_grad():
            results.append(run_generation(setup.step_function(), setup.state,
                                          max_steps=setup.strategy.max_steps(),
                                          sync_every=every, trace=True))
    first = results[0]
    assert first.steps_run == first.nfe
    for other, every in zip(results[1:], (3, sync_every), strict=True):
        assert torch.equal(first.sequences, other.sequences)
        assert other.nfe == first.nfe
        assert other.steps_run >= other.nfe and other.steps_run % every == 0
        assert other.steps_run < other.nfe + every
        assert [t.committed for t in other.trace] == [t.committed for t in first.trace]
    assert not (first.sequences[:, prompt_len:] == MIX_MASK).any()
