"""Streaming: `on_block` is given each block of the output once it is final, in order, while
decoding goes on (a server sends it to its client before the rest is decoded)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from toy_models import layered_model, token_prompts

import credit_compile as cc

MASK_ID = 126  # the tiny preset's mask token


class StreamRecorder:
    """Records each streamed block with the step count of the check that delivered it."""

    def __init__(self):
        self.steps = 0
        self.blocks: list[tuple[int, cc.FinishedBlock]] = []

    def progress(self, steps: int) -> None:
        self.steps = steps

    def on_block(self, block: cc.FinishedBlock) -> None:
        self.blocks.append((self.steps, block))


def assert_streamed(recorder: StreamRecorder, out: cc.GenerationOutput, gen_length: int,
                    block_length: int) -> None:
    """Every block once, in order, equal to its columns of the output, with no mask left; the
    first before decoding ended (not all of them at the end)."""
    blocks = [block for _, block in recorder.blocks]
    assert [b.index for b in blocks] == list(range(gen_length // block_length))
    for block in blocks:
        assert block.start == out.prompt_length + block.index * block_length
        assert torch.equal(block.tokens, out.sequences[:, block.start:block.start + block_length])
        assert not (block.tokens == MASK_ID).any()
    first_at, last_at = recorder.blocks[0][0], recorder.blocks[-1][0]
    assert first_at < last_at == out.steps_run


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


def test_a_callback_that_raises_ends_the_call_and_releases_the_model():
    # A server's client went away: the error reaches the caller, and the next call decodes as
    # if the first had never run, its timings its own (the first call's compile is not its).
    model = layered_model(1, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, mask = token_prompts(2, 4, seed=4)

    def hang_up(block):
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError, match="client went away"):
        fast.generate(ids, mask, on_block=hang_up)  # compiles, then the callback raises
    ref = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    out = fast.generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats["compile_seconds"] == 0.0 and out.stats["decode_seconds"] > 0


def test_generate_from_on_block_is_refused_naming_the_callback():
    model = layered_model(1, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids, mask = token_prompts(1, 4, seed=4)
    with pytest.raises(RuntimeError, match="on_block callback"):
        fast.generate(ids, mask, on_block=lambda block: fast.generate(ids, mask))
