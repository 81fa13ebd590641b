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
