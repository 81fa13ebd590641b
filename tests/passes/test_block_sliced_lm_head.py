"""passes/block_sliced_lm_head.py: BlockSlicedLMHead fires where only the block's logits are read,
keeps the results, and stays off where the full logits are needed or the hidden states change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pass_graphs import Head, as_tuple, compile_recording, head_inputs
from torch import nn

from credit_compile.passes import (
    BlockSlicedLMHead,
    pass_count,
)


@pytest.mark.parametrize("variant", ["module", "functional_scaled", "divided_cast", "softcapped",
                                     "scaled_in_place", "scaled_in_place_then_cast"])
def test_block_sliced_lm_head_fires_and_matches_eager(variant):
    head = Head(variant)
    fn, graphs = compile_recording(head, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    with torch.no_grad():
        out, ref = fn(h, positions), head(h, positions)
    assert out.shape == ref.shape == (2, 4, 24)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert pass_count("block_sliced_lm_head") == 1
    (gm,) = graphs
    (linear,) = [n for n in gm.graph.nodes if n.target is torch._C._nn.linear]
    sliced = linear.args[0]
    assert sliced.op == "call_method" and sliced.target == "index_select"
    assert tuple(linear.meta["example_value"].shape) == (2, 4, 24)  # later passes read fakes


class HeadWithFullLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 24)

    def forward(self, h, positions):
        logits = self.linear(h)
        return logits.index_select(1, positions), logits.logsumexp(-1)  # full logits needed


class HeadSlicingVocab(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 24)

    def forward(self, h, positions):
        return self.linear(h).index_select(2, positions)  # columns, not positions


class HeadSlicingRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 24)

    def forward(self, h, positions):
        return self.linear(h).index_select(0, positions[:1] - 4)  # batch rows, not positions


class HeadWithScaledLogitsUsedElsewhere(nn.Module):
    """The scaled full logits (an intermediate, not the linear's output) have a second user."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 24)

    def forward(self, h, positions):
        scaled = self.linear(h) * 0.5
        return scaled.index_select(1, positions), scaled.sum()


@pytest.mark.parametrize("module", [HeadWithFullLogits, HeadSlicingVocab, HeadSlicingRows,
                                    HeadWithScaledLogitsUsedElsewhere])
def test_block_sliced_lm_head_does_not_fire_when_full_logits_are_needed(module):
    model = module()
    fn, graphs = compile_recording(model, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    with torch.no_grad():
        out, ref = fn(h, positions), model(h, positions)
    assert pass_count("block_sliced_lm_head") == 0
    (linear,) = [n for n in graphs[0].graph.nodes if n.target is torch._C._nn.linear]
    assert linear.args[0].op == "placeholder"
    for a, b in zip(as_tuple(ref), as_tuple(out), strict=True):
        assert torch.equal(a, b)


def _slice_then_scale_in_place(h, weight, positions):
    logits = F.linear(h, weight)
    block = logits.index_select(1, positions)
    logits.mul_(2.0)  # after the slice: the block is not scaled
    return block


def _scale_in_place_by_a_tensor(h, weight, positions):
    logits = F.linear(h, weight)
    logits.mul_(torch.arange(12.0)[:, None])  # differs per position: not row-wise
    return logits.index_select(1, positions)


def _scale_in_place_and_read(h, weight, positions):
    logits = F.linear(h, weight)
    total = logits.mul_(2.0).sum()  # the in-place result is read: the full logits are needed
    return logits.index_select(1, positions), total


def _divide_by_a_per_position_tensor(h, weight, positions):
    return (F.linear(h, weight) / torch.arange(1.0, 13.0)[:, None]).index_select(1, positions)


@pytest.mark.parametrize("fn", [_slice_then_scale_in_place, _scale_in_place_by_a_tensor,
                                _scale_in_place_and_read, _divide_by_a_per_position_tensor])
def test_block_sliced_lm_head_does_not_move_in_place_ops_it_cannot(fn):
    compiled, _ = compile_recording(fn, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    weight = torch.randn(24, 8)
    out, ref = compiled(h, weight, positions), fn(h, weight, positions)
    assert pass_count("block_sliced_lm_head") == 0
    for a, b in zip(as_tuple(ref), as_tuple(out), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_block_sliced_lm_head_fires_after_an_in_place_write_before_the_head():
    # Writes before the matched chain change nothing it moves: only those inside it count.
    def scale_hidden_then_head(h, weight, positions):
        h = h.clone()
        h.mul_(2.0)
        return F.linear(h, weight).index_select(1, positions)

    fn, _ = compile_recording(scale_hidden_then_head, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    weight = torch.randn(24, 8)
    out, ref = fn(h, weight, positions), scale_hidden_then_head(h, weight, positions)
    assert pass_count("block_sliced_lm_head") == 1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_block_sliced_lm_head_does_not_fire_when_h_changes_before_the_slice():
    def head_then_scaled_hidden(h, weight, positions):
        logits = F.linear(h, weight)
        h.mul_(2.0)  # the new linear, placed at the slice, would read the changed h
        return logits.index_select(1, positions)

    fn, _ = compile_recording(head_then_scaled_hidden, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    weight = torch.randn(24, 8)
    out, ref = fn(h.clone(), weight, positions), head_then_scaled_hidden(h.clone(), weight, positions)
    assert pass_count("block_sliced_lm_head") == 0
    assert torch.equal(out, ref)


def _multiply_by_a_per_position_tensor(h, weight, positions):
    return (F.linear(h, weight) * torch.arange(1.0, 13.0)[:, None]).index_select(1, positions)


def _slice_vocab_of_an_unbatched_head(h, weight, positions):
    return F.linear(h[0], weight).index_select(1, positions)  # [L, V]: dim 1 is the vocabulary


def _softmax_over_positions(h, weight, positions):
    return F.linear(h, weight).softmax(1).index_select(1, positions)  # mixes the positions


def _hidden_written_through_out(h, weight, positions):
    logits = F.linear(h, weight)
    torch.mul(h, 2.0, out=h)  # an in-place write spelled with out=: the moved linear would see it
    return logits.index_select(1, positions)


@pytest.mark.parametrize("fn", [_multiply_by_a_per_position_tensor,
                                _slice_vocab_of_an_unbatched_head, _softmax_over_positions,
                                _hidden_written_through_out])
def test_block_sliced_lm_head_does_not_fire_where_positions_mix_or_the_hidden_is_written(fn):
    compiled, _ = compile_recording(fn, [BlockSlicedLMHead()])
    h, positions = head_inputs()
    weight = torch.randn(24, 8)
    out, ref = compiled(h.clone(), weight, positions), fn(h.clone(), weight, positions)
    assert pass_count("block_sliced_lm_head") == 0
    for a, b in zip(as_tuple(ref), as_tuple(out), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


class VocabParallelHead(nn.Module):
    """Tensor parallelism's head: this rank's vocabulary slice, then the gather of all slices."""

    def __init__(self, group_name):
        super().__init__()
        self.linear = nn.Linear(8, 24)
        self.group_name = group_name

    def forward(self, h, positions):
        from credit_compile.distributed import gather_vocab

        logits = gather_vocab(self.linear(h) * 0.5, self.group_name, 1)
        return logits.index_select(1, positions)


def test_block_sliced_lm_head_moves_the_slice_past_the_vocabulary_gather():
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        head = VocabParallelHead(dist.group.WORLD.group_name)
        fn, graphs = compile_recording(head, [BlockSlicedLMHead()])
        h, positions = head_inputs()
        with torch.no_grad():
            out, ref = fn(h, positions), head(h, positions)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert pass_count("block_sliced_lm_head") == 1
    (gm,) = graphs
    (linear,) = [n for n in gm.graph.nodes if n.target is torch._C._nn.linear]
    assert linear.args[0].target == "index_select"
