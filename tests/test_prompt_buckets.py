"""Prompt buckets: left padding to a multiple of `prompt_bucket` changes no token, and every
prompt length of a bucket reuses one compiled step (`precompile` prepares it ahead of time)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import credit_compile as cc
from credit_compile.adapters import ModelInfo
from credit_compile.assets import has_default_model, load_default_model
from credit_compile.prompt_buckets import bucketed_prompt_length
from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

needs_default_model = pytest.mark.skipif(not has_default_model(), reason="default model files missing")

DECODE = {"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH}
STRATEGIES = [
    {"strategy": "credit"},
    {"strategy": "threshold"},
    {"strategy": "llada", "steps": 8},
    {"strategy": "llada", "steps": 8, "remasking": "random", "temperature": 1.0, "seed": 3},
]


def _info(max_length):
    return ModelInfo("generic", 0, None, 10, max_length, True)


@pytest.mark.parametrize("length, bucket, max_length, gen_length, expected", [
    (14, 16, None, 16, 16),   # rounds up
    (16, 16, None, 16, 16),   # a multiple stays
    (17, 16, None, 16, 32),
    (1, 64, None, 16, 64),
    (14, 1000, 64, 16, 48),   # never past the context
    (48, 32, 64, 16, 48),     # the cap lands exactly on the prompt
    (14, None, 64, 16, 14),   # no bucket, no padding
])
def test_bucketed_prompt_length(length, bucket, max_length, gen_length, expected):
    config = cc.DecodeConfig(gen_length=gen_length, block_length=gen_length, prompt_bucket=bucket)
    assert bucketed_prompt_length(length, config, _info(max_length)) == expected


@pytest.fixture(scope="module")
def default():
    return load_default_model("cpu")


@pytest.fixture(scope="module")
def prompts(default):
    _, tokenizer = default
    return tokenizer([p for _, p, _ in held_out_set(8, seed=11)])


@needs_default_model
@pytest.mark.parametrize("decode", STRATEGIES, ids=lambda d: "-".join(map(str, d.values())))
@pytest.mark.parametrize("bucket", [5, 16, 1000])
def test_bucket_changes_no_token_of_a_padded_batch(default, prompts, decode, bucket):
    model, _ = default
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    assert not bool(mask.all())  # a padded batch: the bucket adds to existing padding
    plain = cc.generate_reference(model, ids, mask, trace=True, **DECODE, **decode)
    bucketed = cc.generate_reference(model, ids, mask, trace=True, prompt_bucket=bucket,
                                     **DECODE, **decode)
    assert torch.equal(bucketed.sequences, plain.sequences)
    assert bucketed.prompt_length == plain.prompt_length == ids.shape[1]
    assert bucketed.nfe == plain.nfe
    # Commits at the same (unpadded) positions; confidences to float32 rounding (the padded
    # attention sums over more, masked, columns).
    assert [(t.block, t.committed) for t in bucketed.trace] == \
        [(t.block, t.committed) for t in plain.trace]
    for ours, theirs in zip(bucketed.trace, plain.trace, strict=True):
        for a, b in zip(ours.confidence, theirs.confidence, strict=True):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


@needs_default_model
@pytest.mark.parametrize("decode", STRATEGIES[:2], ids=lambda d: d["strategy"])
def test_bucket_changes_no_token_of_an_unpadded_prompt(default, prompts, decode):
    model, _ = default
    row = prompts["input_ids"][:1, -int(prompts["attention_mask"][0].sum()):]
    plain = cc.generate_reference(model, row, **DECODE, **decode)
    for bucket in (row.shape[1], 16):  # no column added (a mask of ones) / columns added
        bucketed = cc.generate_reference(model, row, prompt_bucket=bucket, **DECODE, **decode)
        assert torch.equal(bucketed.sequences, plain.sequences)


def _unpadded_rows(prompts):
    for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"], strict=True):
        yield ids[-int(mask.sum()):].unsqueeze(0)


@pytest.mark.cheap_compile
@needs_default_model
def test_one_compiled_step_serves_every_length_of_a_bucket(default, prompts):
    model, _ = default
    rows = list(_unpadded_rows(prompts))
    lengths = sorted({row.shape[1] for row in rows})
    assert len(lengths) >= 3 and max(lengths) <= 16
    optimized = cc.optimize(model, prompt_bucket=16, sync_every=2, **DECODE)
    graphs_before = counters["stats"]["unique_graphs"]
    assert optimized.precompile(batch_size=1, prompt_length=16) > 0
    graphs_compiled = counters["stats"]["unique_graphs"] - graphs_before
    assert graphs_compiled >= 1
    assert optimized.precompile(batch_size=1, prompt_length=3) == 0.0  # same bucket: nothing new

    for row in rows:
        out = optimized.generate(row)
        assert optimized.last_stats["compile_seconds"] == 0.0
        reference = cc.generate_reference(model, row, **DECODE)
        assert torch.equal(out.sequences, reference.sequences), row
        assert out.nfe == reference.nfe
    assert optimized.cached_steps == 1
    assert counters["stats"]["unique_graphs"] - graphs_before == graphs_compiled  # no recompile


@needs_default_model
def test_without_a_bucket_every_length_needs_its_own_step(default, prompts):
    model, _ = default
    rows = list(_unpadded_rows(prompts))
    optimized = cc.optimize(model, compile=False, **DECODE)
    for row in rows:
        optimized.generate(row)
    assert optimized.cached_steps == len({row.shape[1] for row in rows})


@needs_default_model
def test_precompile_checks_its_arguments(default):
    optimized = cc.optimize(default[0], compile=False, **DECODE)
    for bad in [dict(batch_size=0, prompt_length=4), dict(batch_size=1, prompt_length=0),
                dict(batch_size=1, prompt_length=1, padded=True), dict(batch_size=1.0, prompt_length=4)]:
        with pytest.raises(ValueError, match=r"use a positive batch size and prompt length"):
            optimized.precompile(**bad)
    with pytest.raises(ValueError, match=r"model's maximum sequence length 64"):
        optimized.precompile(batch_size=1, prompt_length=64)
    assert optimized.precompile(batch_size=2, prompt_length=4, padded=True) == 0.0  # eager: nothing


@needs_default_model
@pytest.mark.parametrize("decode", STRATEGIES[:3] + [{"strategy": "llada", "steps": 8, "cfg_scale": 1.0}],
                         ids=lambda d: "-".join(map(str, d.values())))
@pytest.mark.parametrize("bucket", [4, 8])
def test_batch_bucket_changes_no_token(default, prompts, decode, bucket):
    model, _ = default
    ids, mask = prompts["input_ids"][:3], prompts["attention_mask"][:3]
    plain = cc.generate_reference(model, ids, mask, trace=True, **DECODE, **decode)
    bucketed = cc.generate_reference(model, ids, mask, trace=True, batch_bucket=bucket,
                                     **DECODE, **decode)
    assert bucketed.sequences.shape == plain.sequences.shape
    assert torch.equal(bucketed.sequences, plain.sequences)
    assert bucketed.nfe == plain.nfe  # the copies finish with the row they copy
    assert [t.committed for t in bucketed.trace] == [t.committed for t in plain.trace]


@pytest.mark.cheap_compile
@needs_default_model
def test_one_compiled_step_serves_every_batch_size_of_a_bucket(default, prompts):
    model, _ = default
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    optimized = cc.optimize(model, batch_bucket=4, prompt_bucket=16, **DECODE)
    assert optimized.precompile(batch_size=4, prompt_length=16) > 0
    for rows in (1, 3, 4, 2):
        out = optimized.generate(ids[:rows], mask[:rows])
        assert out.stats["compile_seconds"] == 0.0
        reference = cc.generate_reference(model, ids[:rows], mask[:rows], **DECODE)
        assert torch.equal(out.sequences, reference.sequences)
    assert optimized.cached_steps == 1


# ------------------------------------------------------------------------------------------------
# The padding itself and the state built from it (unit level, no model)
# ------------------------------------------------------------------------------------------------


def test_prompt_padding_is_on_the_left_and_masked():
    from credit_compile.prompt_buckets import pad_prompts_to_bucket

    info = ModelInfo("generic", 0, None, 10, None, True, takes_position_ids=True)
    config = cc.DecodeConfig(gen_length=4, block_length=4, prompt_bucket=4)
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    padded, padded_mask, added = pad_prompts_to_bucket(ids, mask, config, info, pad_id=3)
    assert added == 1
    assert padded.tolist() == [[3, 5, 6, 7], [3, 0, 8, 9]]
    assert padded_mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    # At a multiple already: nothing added, and the mask is still returned (one graph per bucket).
    same, same_mask, added = pad_prompts_to_bucket(padded, None, config, info, pad_id=3)
    assert added == 0 and same is padded and same_mask.tolist() == [[1] * 4] * 2


def test_batch_padding_copies_the_last_row():
    from credit_compile.prompt_buckets import pad_batch_to_bucket

    config = cc.DecodeConfig(gen_length=4, block_length=4, batch_bucket=4)
    ids = torch.tensor([[1, 2], [3, 4], [0, 5]])
    mask = torch.tensor([[1, 1], [1, 1], [0, 1]])
    padded, padded_mask, rows = pad_batch_to_bucket(ids, mask, config)
    assert rows == 3
    assert padded.tolist() == [[1, 2], [3, 4], [0, 5], [0, 5]]
    assert padded_mask.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    assert pad_batch_to_bucket(ids[:2], None, config)[0].tolist() == [[1, 2], [3, 4], [3, 4], [3, 4]]
    full = torch.zeros(8, 2, dtype=torch.long)
    assert pad_batch_to_bucket(full, None, config)[0] is full
    # Beyond a bucket: up to the next multiple (found by the mutation round).
    five = torch.arange(10).view(5, 2)
    assert pad_batch_to_bucket(five, None, config)[0].tolist() == \
        [*five.tolist(), *[[8, 9]] * 3]


def test_state_drops_an_all_ones_mask_unless_a_bucket_keeps_it():
    from credit_compile.decoding.state import prepare_state

    ids = torch.tensor([[5, 6, 7], [4, 8, 9]])
    geometry = dict(gen_length=4, block_length=2, mask_id=11)
    state = prepare_state(ids, torch.ones_like(ids), **geometry)
    assert state.attention_mask is None and state.position_ids is None  # the unmasked forward
    kept = prepare_state(ids, torch.ones_like(ids), keep_attention_mask=True, **geometry)
    assert kept.attention_mask.tolist() == [[1] * 7] * 2
    assert kept.position_ids.tolist() == [list(range(7))] * 2
    padded = prepare_state(ids, torch.tensor([[0, 0, 1], [0, 1, 1]]), **geometry)
    assert padded.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]]
    assert padded.position_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 5]]
    assert padded.prompt_mask.tolist() == [[True] * 3 + [False] * 4] * 2  # pads included
    assert padded.x[:, 3:].eq(11).all() and padded.gen_start == 3 and padded.num_blocks == 2
    assert padded.output_rows == 2
    # Every buffer a runner must reload between calls, and no None.
    names = {"x", "attention_mask", "position_ids", "prompt_mask", "block_offsets", "block_index",
             "step_in_block", "nfe", "done", "last_commit", "last_conf", "last_block"}
    padded.buffers["credit"] = torch.zeros(1)
    assert set(padded.tensors()) == names | {"buffers.credit"}
    assert set(state.tensors()) == names - {"attention_mask", "position_ids"}
