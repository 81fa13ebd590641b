"""decoding/state.py: the static decoding state. Padding positions (a left-padded batch decodes each
prompt as alone) and the KV cache allocated once."""

from __future__ import annotations

import pytest
import torch
from decoding_cases import (
    decode_options,
    llada_steps,
    seeds,
    toy,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import ContextMixModel, layered_model, token_prompts

import credit_compile as cc


@pytest.mark.cheap_compile
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


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(["credit", "threshold", "llada"]))
def test_padded_batch_equals_each_prompt_alone(seed, strategy):
    model = ContextMixModel(seed=seed % 5)
    g = torch.Generator().manual_seed(seed)
    short, long = torch.randint(0, 30, (1, 2), generator=g), torch.randint(0, 30, (1, 5), generator=g)
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    kw = dict(strategy=strategy, gen_length=8, block_length=4)
    together = cc.generate_reference(model, batch, mask, **kw)
    alone = [cc.generate_reference(model, p, **kw) for p in (short, long)]
    assert torch.equal(together.generated[0], alone[0].generated[0])
    assert torch.equal(together.generated[1], alone[1].generated[0])


MIX_MASK = 39


VOCAB = 40


@given(seed=seeds, lengths=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       kw=decode_options())
def test_left_padded_batch_equals_each_prompt_alone(seed, lengths, kw):
    model = toy(seed)
    g = torch.Generator().manual_seed(seed)
    lengths = lengths + [6]  # the longest row: every other row is padded
    width = max(lengths)
    rows, mask, alone = [], [], []
    for n in lengths:
        prompt = torch.randint(0, MIX_MASK, (1, n), generator=g)
        pad = torch.randint(0, VOCAB, (1, width - n), generator=g)  # pad ids must not matter
        rows.append(torch.cat([pad, prompt], 1))
        mask.append(torch.cat([torch.zeros(1, width - n), torch.ones(1, n)], 1).long())
        alone.append(cc.generate_reference(model, prompt, **kw))
    together = cc.generate_reference(model, torch.cat(rows), torch.cat(mask), **kw)
    assert torch.equal(together.sequences[:, :width], torch.cat(rows))
    for row, single in enumerate(alone):
        assert torch.equal(together.generated[row], single.generated[0]), row
    if kw["strategy"] == "llada":
        assert together.nfe == llada_steps(kw) == alone[0].nfe
    else:  # the batch waits for its slowest row in every block
        assert together.nfe >= max(a.nfe for a in alone)


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 11), min_size=1, max_size=4), block=st.integers(1, 5),
       gen_length=st.integers(1, 9), bucket=st.booleans())
def test_aligned_blocks_share_the_canvas_columns_of_every_row(lengths, block, gen_length, bucket):
    """Blocks aligned to positions from 0 (LLaDA2), prompts of any lengths: every block starts
    at a position that is a multiple of block_length in every row, each row's prompt is kept
    in order and followed by its gen_length masks (to the end of its last block, the rest
    filled), and with a bucket the canvas's shape depends on the padded length only."""
    from credit_compile.decoding.state import prepare_state

    width = max(lengths) + (2 if bucket else 0)
    ids = torch.full((len(lengths), width), 7)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.arange(10, 10 + n)
        mask[row, width - n:] = 1
    state = prepare_state(ids, mask, gen_length=gen_length, block_length=block, mask_id=99,
                          keep_attention_mask=bucket, aligned_blocks=True)
    positions = state.position_ids if state.position_ids is not None else \
        torch.arange(state.x.shape[1]).expand_as(state.x)
    real = state.attention_mask.bool() if state.attention_mask is not None else \
        torch.ones_like(state.x, dtype=torch.bool)
    starts = torch.arange(state.block_start, state.x.shape[1], block)
    for row, n in enumerate(lengths):
        at_starts = real[row, starts]
        assert (positions[row, starts][at_starts] % block == 0).all()
        tokens = state.x[row][real[row]].tolist()
        assert tokens[:n] == list(range(10, 10 + n))
        masks = -(-(n % block + gen_length) // block) * block - n % block
        assert tokens[n:] == [99] * masks
        in_blocks = state.x[row, state.block_start:]
        assert real[row, state.block_start:][in_blocks == 99].all()  # only its masks decode
    if bucket:  # prompts of one token, padded to the same width: the same canvas
        ones = torch.zeros_like(mask)
        ones[:, -1] = 1
        again = prepare_state(ids, ones, gen_length=gen_length, block_length=block, mask_id=99,
                              keep_attention_mask=True, aligned_blocks=True)
        assert again.x.shape == state.x.shape and again.block_start == state.block_start
