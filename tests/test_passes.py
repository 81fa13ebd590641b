"""The FX passes: each fires on its pattern (counter), keeps the results, and stays off otherwise.

Most tests compile tiny functions with `make_backend([pass], inductor=False)` (the rewritten Dynamo
graph runs eagerly: seconds on CPU); one runs the whole denoising step of the tiny LLaDA model
through the default backend with Inductor.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from cuda_marks import needs_cuda
from optimum.fx.optimization import ChangeTrueDivToMulByInverse, compose
from torch import nn
from torch._dynamo.utils import counters

from credit_compile.backend import make_backend
from credit_compile.config import DecodeConfig
from credit_compile.generation_setup import setup_generation
from credit_compile.ops.credit_step_reference import (
    credit_step_dense_eager,
    masked_vocab_logits,
    top1_and_prob,
)
from credit_compile.passes import (
    BlockSlicedLMHead,
    CreditFusion,
    GraphPass,
    GumbelFP64Elision,
    PassPipeline,
    default_passes,
    pass_count,
)

DENSE_OP = torch.ops.credit_compile.credit_step_dense.default


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compile_recording(fn, passes):
    """torch.compile(fn) through make_backend(passes, inductor=False); the rewritten graphs are
    appended to the returned list."""
    inner = make_backend(passes, inductor=False)
    graphs = []

    def backend(gm, example_inputs):
        forward = inner(gm, example_inputs)
        graphs.append(forward.__self__)
        return forward

    return torch.compile(fn, backend=backend, fullgraph=True), graphs


def capture(fn, *args):
    """The Dynamo FX graph of fn(*args) (with fake tensors in node.meta) and its inputs."""
    captured = []

    def backend(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return captured[0]


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def calls(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.target == target)


def methods(gm, name) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_method" and n.target == name)


# ------------------------------------------------------------------------------------------------
# CreditFusion
# ------------------------------------------------------------------------------------------------

ALPHA, BETA, GAMMA, MASK = 1.5, 0.5, 0.3, 5


def credit_inputs(seed=0, batch=2, block=4, vocab=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, block, vocab, generator=g) * 3
    credit = torch.rand(batch, block, vocab, generator=g)
    masked = torch.rand(batch, block, generator=g) > 0.3
    return logits, credit, masked


def credit_user(logits, credit, masked, first_step):
    """The eager chain with downstream users of x0 and conf, as in the denoising step."""
    x0, conf = credit_step_dense_eager(logits, credit, masked, first_step, ALPHA, BETA, GAMMA, MASK)
    return torch.where(masked, x0, -1), conf * masked


def test_credit_fusion_fires_and_matches_eager():
    fn, graphs = compile_recording(credit_user, [CreditFusion()])
    _, credit, _ = credit_inputs()
    ref_credit, out_credit = credit.clone(), credit.clone()
    for step, first in enumerate([True, False, False]):
        logits, _, masked = credit_inputs(seed=step)
        first_step = torch.tensor(first)
        ref = credit_user(logits, ref_credit, masked, first_step)
        out = fn(logits, out_credit, masked, first_step)
        assert torch.equal(ref[0], out[0])
        torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(out_credit, ref_credit, atol=1e-5, rtol=0)
    assert pass_count("credit_fusion") == 1
    (gm,) = graphs
    assert calls(gm, DENSE_OP) == 1
    (op_node,) = [n for n in gm.graph.nodes if n.target == DENSE_OP]
    assert op_node.args[4:] == (ALPHA, BETA, GAMMA, MASK)  # constants read from the graph
    for name in ("mul_", "scatter_add_", "argmax", "gather"):
        assert methods(gm, name) == 0, name
    assert calls(gm, torch.log1p) == calls(gm, torch.softmax) == calls(gm, torch.arange) == 0


def log_instead_of_log1p(logits, credit, masked, first_step):
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log(credit + 1)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def fused_logits_used_elsewhere(logits, credit, masked, first_step):
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    conf = torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return x0, conf, fused.amax(-1)  # the fused logits leave the chain


def credit_read_mid_update(logits, credit, masked, first_step):
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    decayed_total = credit.sum()  # sees the decayed credit before the increment
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1), decayed_total


def float_vocabulary(logits, credit, masked, first_step):
    """arange(V) in bfloat16 rounds ids above 256 together: `== mask_id` matches several."""
    vocab = torch.arange(logits.shape[-1], dtype=torch.bfloat16)
    raw = torch.where(vocab == MASK, float("-inf"), logits.float())
    top = raw.argmax(-1)
    prob = torch.softmax(raw, -1).gather(-1, top.unsqueeze(-1)).squeeze(-1)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def credit_read_through_a_view(logits, credit, masked, first_step):
    view = credit[:, :, :]  # made before the decay, read between decay and increment
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    decayed_total = view.sum()
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1), decayed_total


def mask_written_after_the_increment(logits, credit, masked, first_step):
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    masked.fill_(False)  # the op, placed at the log1p, would read the new mask
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def mask_written_by_setitem_after_the_increment(logits, credit, masked, first_step):
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    masked[:, 0] = False  # an in-place write through setitem, not a method ending in '_'
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def decay_not_reset_on_first_step(logits, credit, masked, first_step):
    """where(first_step, 0.5, beta): a first step that keeps half the credit (the op drops it)."""
    raw = masked_vocab_logits(logits, MASK)
    top, prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.5, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def credit_chain_after_raw(raw, credit, masked, first_step, *, prob_of=None, boosted=None):
    """The dense chain from the masked-vocabulary logits on (near misses differ before it, or
    take p* from the softmax of `prob_of`, or add the boost to `boosted`, instead of `raw`)."""
    if prob_of is None:
        top, prob = top1_and_prob(raw)
    else:
        top = raw.argmax(-1)
        prob = torch.softmax(prob_of, -1).gather(-1, top.unsqueeze(-1)).squeeze(-1)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = (raw if boosted is None else boosted) + ALPHA * torch.log1p(credit)
    x0 = fused.argmax(-1)
    return x0, torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def mask_column_at_plus_inf(logits, credit, masked, first_step):
    """+inf, not -inf, in the mask column: the mask token always wins (the op excludes it)."""
    raw = torch.where(torch.arange(logits.shape[-1]) == MASK, float("inf"), logits.float())
    return credit_chain_after_raw(raw, credit, masked, first_step)


def shifted_vocabulary(logits, credit, masked, first_step):
    """arange(V, 2V): another vocabulary (ids V..2V-1); its `== V + MASK` masks column MASK,
    which the op, given mask_id V + MASK, would not."""
    vocab_size = logits.shape[-1]
    raw = torch.where(torch.arange(vocab_size, 2 * vocab_size) == vocab_size + MASK,
                      float("-inf"), logits.float())
    return credit_chain_after_raw(raw, credit, masked, first_step)


def unbatched(logits, credit, masked, first_step):
    """One sequence, 2-D logits and credit: the op's schema wants [B, Lb, V]."""
    return credit_step_dense_eager(logits[0], credit[0], masked[0], first_step, ALPHA, BETA, GAMMA, MASK)


def keyword_inputs(logits, credit, masked, first_step):
    """The chain with `input=` spelled out (it crashed the pass's matcher)."""
    raw = masked_vocab_logits(logits, MASK)
    top = torch.argmax(input=raw, dim=-1)
    prob = torch.softmax(input=raw, dim=-1).gather(-1, top.unsqueeze(-1)).squeeze(-1)
    credit.mul_(torch.where(first_step, 0.0, BETA))
    credit.scatter_add_(-1, top.unsqueeze(-1), (prob.pow(GAMMA) * masked).unsqueeze(-1))
    fused = raw + ALPHA * torch.log1p(credit)
    x0 = torch.argmax(input=fused, dim=-1)
    return x0, torch.softmax(input=fused, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def test_credit_fusion_reads_keyword_inputs():
    compiled, graphs = compile_recording(keyword_inputs, [CreditFusion()])
    logits, credit, masked = credit_inputs()
    first_step = torch.tensor(False)
    ref_credit, out_credit = credit.clone(), credit.clone()
    ref = keyword_inputs(logits, ref_credit, masked, first_step)
    out = compiled(logits, out_credit, masked, first_step)
    assert pass_count("credit_fusion") == 1 and calls(graphs[0], DENSE_OP) == 1
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_credit, ref_credit, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [log_instead_of_log1p, fused_logits_used_elsewhere,
                                credit_read_mid_update, unbatched, float_vocabulary,
                                credit_read_through_a_view, mask_written_after_the_increment,
                                mask_written_by_setitem_after_the_increment,
                                decay_not_reset_on_first_step, mask_column_at_plus_inf,
                                shifted_vocabulary])
@pytest.mark.parametrize("first", [False, True])
def test_credit_fusion_does_not_fire_on_near_misses(fn, first):
    compiled, graphs = compile_recording(fn, [CreditFusion()])
    logits, credit, masked = credit_inputs()
    first_step = torch.tensor(first)
    ref_credit, out_credit = credit.clone(), credit.clone()
    ref = fn(logits, ref_credit, masked.clone(), first_step)
    out = compiled(logits, out_credit, masked.clone(), first_step)
    assert pass_count("credit_fusion") == 0
    assert calls(graphs[0], DENSE_OP) == 0
    # equal_nan: the +inf mask column makes NaN confidences in eager too.
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(out_credit, ref_credit, atol=1e-5, rtol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# BlockSlicedLMHead
# ------------------------------------------------------------------------------------------------

class Head(nn.Module):
    def __init__(self, variant: str, d=8, vocab=24):
        super().__init__()
        self.variant = variant
        self.linear = nn.Linear(d, vocab, bias=variant != "functional_scaled")

    def forward(self, h, positions):
        if self.variant == "module":  # torch._C._nn.linear in the Dynamo graph
            logits = self.linear(h)
        elif self.variant == "functional_scaled":  # LLaDA's scale_logits
            logits = F.linear(h, self.linear.weight) * (1 / 8**0.5)
        elif self.variant == "softcapped":  # Gemma's final logit soft-capping
            logits = torch.tanh(self.linear(h) / 30.0) * 30.0
        elif self.variant == "scaled_in_place":  # the official LLaDA code's scale_logits
            logits = F.linear(h, self.linear.weight)
            logits.mul_(1 / 8**0.5)
        elif self.variant == "scaled_in_place_then_cast":
            logits = self.linear(h)
            logits.div_(3.0)
            logits.tanh_()
            logits = logits.double()
        else:  # "divided_cast": HF-style upcast of the logits
            logits = (F.linear(h, self.linear.weight, self.linear.bias) / 3.0).float()
        return logits.index_select(1, positions)


def head_inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 12, 8, generator=g).to(dtype), torch.tensor([4, 5, 6, 7])


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


# ------------------------------------------------------------------------------------------------
# GumbelFP64Elision
# ------------------------------------------------------------------------------------------------

def foreign_add_gumbel_noise(logits, temperature):
    """LLaDA's original `add_gumbel_noise`, which upcasts whatever the temperature."""
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def greedy_sampler(logits):
    return torch.argmax(foreign_add_gumbel_noise(logits, 0), dim=-1)


def tempered_sampler(logits):
    return torch.argmax(foreign_add_gumbel_noise(logits, 0.5), dim=-1)


def greedy_with_random_remasking(logits):
    x0 = foreign_add_gumbel_noise(logits, 0.0).argmax(-1)
    return x0, torch.rand(x0.shape)  # a later draw: eliding the first would shift it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_fp64_elision_fires_and_matches_eager(dtype):
    fn, graphs = compile_recording(greedy_sampler, [GumbelFP64Elision()])
    for seed in range(3):
        logits = (torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(seed)) * 4).to(dtype)
        assert torch.equal(fn(logits), greedy_sampler(logits))
    assert pass_count("gumbel_fp64_elision") == 1
    (gm,) = graphs
    assert calls(gm, torch.rand_like) == calls(gm, torch.log) == 0
    assert methods(gm, "to") == methods(gm, "exp") == 0  # no float64 tensor left
    (argmax,) = [n for n in gm.graph.nodes if n.target is torch.argmax]
    assert argmax.args[0].op == "placeholder"


def test_gumbel_fp64_elision_removes_float64_exp_overflow_ties():
    # exp overflows to inf in float64 above 709.78: eager ties every such logit and returns the
    # first; the rewrite returns the true argmax.
    logits = torch.tensor([[[710.0, 800.0, 3.0]]])
    fn, _ = compile_recording(greedy_sampler, [GumbelFP64Elision()])
    assert greedy_sampler(logits).item() == 0
    assert fn(logits).item() == 1


def greedy_without_upcast(logits):
    """The noise expression on float32 logits: exp overflows above 88.7, eager ties at inf."""
    noise = torch.rand_like(logits)
    return torch.argmax(logits.exp() / (-torch.log(noise)) ** 0, dim=-1)


def greedy_with_dropout(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    return x0, F.dropout1d(logits, 0.5, training=True)  # draws too: eliding shifts its numbers


def greedy_with_attention_dropout(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    q = logits[:, None]
    return x0, F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)


@pytest.mark.parametrize("fn", [tempered_sampler, greedy_with_random_remasking,
                                greedy_without_upcast, greedy_with_dropout,
                                greedy_with_attention_dropout])
def test_gumbel_fp64_elision_does_not_fire(fn):
    compiled, graphs = compile_recording(fn, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    logits[0, 0, :2] = torch.tensor([90.0, 100.0])  # exp overflows in float32: eager ties at inf
    torch.manual_seed(7)
    ref = fn(logits)
    torch.manual_seed(7)
    out = compiled(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert calls(graphs[0], torch.rand_like) == 1
    for a, b in zip(as_tuple(ref), as_tuple(out), strict=True):
        assert torch.equal(a, b)


def greedy_with_broadcast_noise(logits):
    """Noise with a leading dim of 2: the division (and the argmax) broadcast to [2, *x.shape]."""
    x = logits.to(torch.float64)
    noise = torch.rand((2, *x.shape), dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1)


def test_gumbel_fp64_elision_declines_a_broadcasting_division():
    fn, _ = compile_recording(greedy_with_broadcast_noise, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(7)
    ref = greedy_with_broadcast_noise(logits)
    torch.manual_seed(7)
    out = fn(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert out.shape == ref.shape == (2, 2, 4) and torch.equal(out, ref)


def greedy_returning_its_noise(logits):
    x = logits.to(torch.float64)
    noise = torch.rand_like(x, dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1), noise  # the draw is used elsewhere


def greedy_keeping_the_upcast(logits):
    x = logits.to(torch.float64)
    noise = torch.rand_like(x, dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1), x.sum()  # the cast has another user


def greedy_with_rand_and_double(logits):
    """The other spellings of the pattern: `.double()` and `torch.rand(shape, dtype=...)`."""
    x = logits.double()
    noise = torch.rand(x.shape, dtype=torch.float64)
    return torch.argmax(x.exp() / (-torch.log(noise)) ** 0, dim=-1)


def test_gumbel_fp64_elision_declines_a_noise_used_elsewhere():
    fn, graphs = compile_recording(greedy_returning_its_noise, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(3)
    ref = greedy_returning_its_noise(logits)
    torch.manual_seed(3)
    out = fn(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a, b)


def test_gumbel_fp64_elision_keeps_an_upcast_with_other_users():
    fn, graphs = compile_recording(greedy_keeping_the_upcast, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50, dtype=torch.float32)
    top, total = fn(logits)
    ref_top, ref_total = greedy_keeping_the_upcast(logits)
    assert pass_count("gumbel_fp64_elision") == 1
    assert torch.equal(top, ref_top) and total.dtype == torch.float64
    torch.testing.assert_close(total, ref_total)
    (gm,) = graphs
    assert calls(gm, torch.rand_like) == 0 and methods(gm, "to") == 1


def test_gumbel_fp64_elision_matches_double_and_rand():
    fn, graphs = compile_recording(greedy_with_rand_and_double, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50) * 4
    assert torch.equal(fn(logits), greedy_with_rand_and_double(logits))
    assert pass_count("gumbel_fp64_elision") == 1
    (gm,) = graphs
    assert calls(gm, torch.rand) == 0 and methods(gm, "double") == 0


# ------------------------------------------------------------------------------------------------
# Together: the denoising step, optimum composition, identity
# ------------------------------------------------------------------------------------------------

def tiny_llada():
    from credit_compile.models.presets import build_model

    return build_model("tiny", seed=3)


def state_tensors(setup):
    tensors = {k: v for k, v in vars(setup.state).items() if isinstance(v, torch.Tensor)}
    return {**tensors, **{f"buffers.{k}": v for k, v in setup.state.buffers.items()}}


def run_steps(backend, strategy="credit", steps=6, device="cpu", **config):
    """States after `steps` eager steps and after as many compiled steps, from the same start
    (and the same RNG seed: the llada sampler draws noise)."""
    model = tiny_llada().to(device)
    cfg = DecodeConfig(strategy=strategy, gen_length=8, block_length=4, seed=0, **config)
    ids = torch.randint(0, 120, (2, 3), generator=torch.Generator().manual_seed(1)).to(device)
    states = []
    for compiled in (False, True):
        setup = setup_generation(model, ids, None, cfg)  # seeds the global RNG
        step = setup.step_function()
        if compiled:
            step = torch.compile(step, backend=backend, fullgraph=True)
        with torch.no_grad():
            for _ in range(steps):
                step()
        states.append(state_tensors(setup))
    return states


def assert_same_state(ref, out):
    assert ref.keys() == out.keys()
    for key, value in ref.items():
        if value.is_floating_point():  # confidences, credit: the LM head sees fewer rows
            torch.testing.assert_close(out[key], value, atol=1e-5, rtol=0, msg=key)
        else:  # tokens, block index, step counters: exact
            assert torch.equal(out[key], value), key


def test_denoising_step_through_default_backend_with_inductor():
    ref, out = run_steps(make_backend(), credit_layout="dense")
    assert_same_state(ref, out)
    assert pass_count("credit_fusion") == 1
    assert pass_count("block_sliced_lm_head") == 1
    assert pass_count("gumbel_fp64_elision") == 0  # our step branches on temperature in Python
    assert (ref["x"] != 126).all()  # the canvas was decoded to the end


@pytest.mark.parametrize("config", [
    dict(strategy="credit", credit_layout="sparse"),
    dict(strategy="llada", cfg_scale=1.0),
    dict(strategy="llada", temperature=0.7, remasking="random"),
])
def test_default_passes_on_other_steps(config):
    ref, out = run_steps(make_backend(inductor=False), **config)
    assert_same_state(ref, out)
    assert pass_count("credit_fusion") == 0
    assert pass_count("block_sliced_lm_head") == 1


def test_composes_with_optimum_passes():
    head = Head("divided_cast")
    h, positions = head_inputs()
    gm, example_inputs = capture(head, h, positions)
    with torch.no_grad():
        ref = head(h, positions)
        composed = compose(BlockSlicedLMHead(), ChangeTrueDivToMulByInverse())
        out = composed(gm)(*example_inputs)
    assert pass_count("block_sliced_lm_head") == 1
    assert calls(gm, operator.truediv) == 0 and calls(gm, operator.mul) == 1
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)

    # optimum's pass first: the division it turned into a multiplication is still row-wise.
    torch._dynamo.reset()
    counters.clear()
    gm, example_inputs = capture(head, h, positions)
    with torch.no_grad():
        out = compose(ChangeTrueDivToMulByInverse(), BlockSlicedLMHead())(gm)(*example_inputs)
    assert pass_count("block_sliced_lm_head") == 1
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)


def test_pass_identity_and_order():
    passes = default_passes()
    assert [p.name for p in passes] == ["block_sliced_lm_head", "credit_fusion", "gumbel_fp64_elision"]
    assert all(isinstance(p, GraphPass) and p.preserves_computation for p in passes)
    uuids = [p.uuid() for p in passes]
    assert len(set(uuids)) == 3
    assert uuids == [p.uuid() for p in default_passes()]  # stable across instances


@pytest.mark.parametrize("module_name, old, new", [
    # The patterns live in module-level helpers of the pass's own module...
    ("block_sliced_lm_head", "_CASTS = (", '_CASTS = ("half",'),
    # ...and the guards every pass matches with (touched_between, storage_of) in base.py.
    ("base", 'or name == "setitem"', ""),
])
def test_a_pass_uuid_covers_the_code_it_matches_with(monkeypatch, module_name, old, new):
    # An edit there must change the pass's Inductor cache key too.
    import importlib
    import inspect

    module = importlib.import_module(f"credit_compile.passes.{module_name}")
    before = BlockSlicedLMHead().uuid()
    real = inspect.getsource

    def edited(obj):
        source = real(obj)
        if obj is module:
            assert old in source  # the edit must happen for the test to mean anything
            return source.replace(old, new)
        return source

    monkeypatch.setattr(inspect, "getsource", edited)
    assert BlockSlicedLMHead().uuid() != before


class FirstPassHere(GraphPass):
    name = "first_pass_here"

    def rewrite(self, graph_module):
        return 0


class SecondPassHere(FirstPassHere):
    name = "second_pass_here"


def test_two_passes_in_one_module_have_their_own_uuids():
    # Same module source, other class: the class name tells them apart in Inductor's cache.
    assert FirstPassHere().uuid() != SecondPassHere().uuid()
    assert FirstPassHere().uuid() == FirstPassHere().uuid()


class AddToSub(GraphPass):
    """Turns every `a + b` into `a - b`: a rewrite whose effect shows in the output."""

    name = "add_to_sub"

    def rewrite(self, graph_module):
        adds = [n for n in graph_module.graph.nodes if n.target is operator.add]
        for node in adds:
            node.target = operator.sub
        return len(adds)


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy_graph_module", "eager_graph_module"])
def test_passes_only_backend_runs_the_rewritten_graph_and_counts_every_rewrite(lazy):
    # inductor=False must run the graph as the passes left it (recompiled), not the old code; with
    # TORCH_COMPILE_USE_LAZY_GRAPH_MODULE=0 Dynamo hands over a module whose code is already made.
    backend = make_backend([AddToSub()], inductor=False)
    with torch._dynamo.config.patch(use_lazy_graph_module=lazy):
        fn = torch.compile(lambda x: (x + 1) * (x + 2), backend=backend, fullgraph=True)
        x = torch.arange(4.0)
        torch.testing.assert_close(fn(x), (x - 1) * (x - 2))
    assert pass_count("add_to_sub") == 2  # the counter adds the rewrite count, not 1 per graph


def test_an_empty_pass_list_runs_no_passes():
    # passes=[] (verify's bare forward) means none, not the default passes.
    backend = make_backend([], inductor=False)
    assert backend.passes == [] and backend.pipeline.passes == ()
    assert [p.name for p in make_backend(inductor=False).passes] == [p.name for p in default_passes()]
    head = Head("module")
    h, positions = head_inputs()
    with torch.no_grad():
        out = torch.compile(head, backend=backend, fullgraph=True)(h, positions)
    torch.testing.assert_close(out, head(h, positions), atol=1e-5, rtol=0)
    assert pass_count("block_sliced_lm_head") == 0


def test_pipeline_key_changes_with_a_pass_source(monkeypatch):
    # The pipeline's key names each pass's own uuid (its source), not only the pass names.
    before = PassPipeline(default_passes()).uuid()
    monkeypatch.setattr(BlockSlicedLMHead, "uuid", lambda self: "edited")
    assert PassPipeline(default_passes()).uuid() != before


def test_pipeline_is_a_custom_graph_pass_keyed_by_its_passes():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    pipeline = PassPipeline(default_passes())
    assert isinstance(pipeline, CustomGraphPass)
    assert pipeline.uuid() == PassPipeline(default_passes()).uuid()
    reordered = PassPipeline(list(reversed(default_passes())))
    fewer = PassPipeline(default_passes()[:2])
    assert len({pipeline.uuid(), reordered.uuid(), fewer.uuid()}) == 3


def test_pipeline_key_changes_with_the_custom_ops_source(monkeypatch, tmp_path):
    # The ops launch their kernels from other modules, which Inductor's cache key cannot see:
    # an edited kernel must not replay code compiled against the old one.
    import shutil
    from pathlib import Path

    import credit_compile.ops
    from credit_compile.passes import pipeline as pipeline_module

    source = Path(credit_compile.ops.__file__).parent
    copy, changed = tmp_path / "copy", tmp_path / "changed"  # two paths: the digest is cached
    shutil.copytree(source, copy)
    shutil.copytree(source, changed)
    assert pipeline_module._ops_source_digest(copy) == pipeline_module._ops_source_digest()
    kernel = changed / "credit_step_sparse_triton.py"
    kernel.write_text(kernel.read_text() + "\n# an edited kernel\n")
    edited = pipeline_module._ops_source_digest(changed)
    assert edited != pipeline_module._ops_source_digest()

    before = PassPipeline(default_passes()).uuid()
    monkeypatch.setattr(pipeline_module, "_ops_source_digest", lambda: edited)
    assert PassPipeline(default_passes()).uuid() != before


def test_inductor_runs_the_passes_as_its_pre_grad_custom_pass():
    from torch._inductor import config as inductor_config

    seen = []

    class Probe(GraphPass):
        name = "probe"

        def rewrite(self, graph_module):
            # Called by Inductor, inside the config patches of this compilation only.
            seen.append(inductor_config.pre_grad_custom_pass)
            return 1

    backend = make_backend([Probe(), BlockSlicedLMHead()])
    before = inductor_config.pre_grad_custom_pass
    head = Head("module")
    h, positions = head_inputs()
    with torch.no_grad():
        out = torch.compile(head, backend=backend, fullgraph=True)(h, positions)
        torch.testing.assert_close(out, head(h, positions), atol=1e-5, rtol=0)
    assert seen == [backend.pipeline]
    assert pass_count("probe") == 1 and pass_count("block_sliced_lm_head") == 1
    assert inductor_config.pre_grad_custom_pass is before  # nothing left set globally


def recording(backend, graphs):
    def record(gm, example_inputs):
        compiled = backend(gm, example_inputs)
        graphs.append(gm)
        return compiled

    return record


def op_targets(gm) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@needs_cuda
@pytest.mark.parametrize("inductor", [False, True], ids=["passes_only", "inductor"])
def test_credit_fusion_picks_the_triton_op_on_cuda(inductor):
    from credit_compile import ops

    assert ops.triton_ops_registered()
    graphs = []
    ref, out = run_steps(recording(make_backend(inductor=inductor), graphs), device="cuda",
                         credit_layout="dense")  # the layout the fusion pass rewrites
    assert_same_state(ref, out)
    assert "credit_compile.credit_step_dense_triton.default" in op_targets(graphs[0])
    assert pass_count("credit_fusion") == 1 and pass_count("block_sliced_lm_head") == 1


# Near misses and bookkeeping found by mutation testing (each test fails on its mutant).
# ------------------------------------------------------------------------------------------------
# CreditFusion near misses
# ------------------------------------------------------------------------------------------------


def float_mask(logits, credit, masked, first_step):
    """A float `masked` (0.5 per masked position): the op's kernels read it as a flag."""
    return credit_step_dense_eager(logits, credit, masked * 0.5, first_step, ALPHA, BETA, GAMMA, MASK)


def per_row_first_step(logits, credit, masked, first_step):
    """One first-step flag per batch row ([B, 1, 1]): the op reads a single flag."""
    flags = torch.stack([first_step, ~first_step]).view(-1, 1, 1)
    return credit_step_dense_eager(logits, credit, masked, flags, ALPHA, BETA, GAMMA, MASK)


def logits_written_before_the_decay(logits, credit, masked, first_step):
    logits = logits.clone()
    raw = masked_vocab_logits(logits, MASK)
    logits.mul_(-1.0)  # after the chain read them: the op, placed at the log1p, would see this
    return credit_chain_after_raw(raw, credit, masked, first_step)


def prob_of_unmasked_logits(logits, credit, masked, first_step):
    """p* from the softmax over every column, mask token included (the op leaves it out)."""
    raw = masked_vocab_logits(logits, MASK)
    return credit_chain_after_raw(raw, credit, masked, first_step, prob_of=logits.float())


def fused_from_unmasked_logits(logits, credit, masked, first_step):
    """The credit boost added to the logits without the mask column at -inf."""
    raw = masked_vocab_logits(logits, MASK)
    return credit_chain_after_raw(raw, credit, masked, first_step, boosted=logits.float())


@pytest.mark.parametrize("fn", [float_mask, per_row_first_step, logits_written_before_the_decay,
                                prob_of_unmasked_logits, fused_from_unmasked_logits])
@pytest.mark.parametrize("first", [False, True])
def test_credit_fusion_does_not_fire_where_the_op_would_read_other_inputs(fn, first):
    compiled, graphs = compile_recording(fn, [CreditFusion()])
    logits, credit, masked = credit_inputs()
    first_step = torch.tensor(first)
    ref_credit, out_credit = credit.clone(), credit.clone()
    ref = fn(logits.clone(), ref_credit, masked.clone(), first_step)
    out = compiled(logits.clone(), out_credit, masked.clone(), first_step)
    assert pass_count("credit_fusion") == 0
    assert calls(graphs[0], DENSE_OP) == 0
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(out_credit, ref_credit, atol=1e-5, rtol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# BlockSlicedLMHead near misses
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# GumbelFP64Elision
# ------------------------------------------------------------------------------------------------


def greedy_with_uniform_draw(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    return x0, torch.empty(x0.shape).uniform_()  # a random *method*: eliding shifts its numbers


def test_gumbel_fp64_elision_counts_a_random_method_as_a_draw():
    compiled, graphs = compile_recording(greedy_with_uniform_draw, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(7)
    ref = greedy_with_uniform_draw(logits)
    torch.manual_seed(7)
    out = compiled(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert calls(graphs[0], torch.rand_like) == 1
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a, b)


def two_greedy_samplers(a, b):
    return greedy_sampler(a), greedy_sampler(b)


def test_gumbel_fp64_elision_counts_every_rewrite():
    compiled, graphs = compile_recording(two_greedy_samplers, [GumbelFP64Elision()])
    a, b = torch.randn(2, 4, 50) * 4, torch.randn(3, 50) * 4
    out = compiled(a, b)
    ref = two_greedy_samplers(a, b)
    assert pass_count("gumbel_fp64_elision") == 2  # the counter adds one per rewrite
    assert calls(graphs[0], torch.rand_like) == 0
    assert all(torch.equal(x, y) for x, y in zip(out, ref, strict=True))


# ------------------------------------------------------------------------------------------------
# PassPipeline
# ------------------------------------------------------------------------------------------------


class Recorder(GraphPass):
    def __init__(self, name, seen):
        self.name, self.seen = name, seen

    def rewrite(self, graph_module):
        self.seen.append(self.name)
        return 0


def test_pipeline_runs_its_passes_in_order():
    seen = []
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    PassPipeline([Recorder("first", seen), Recorder("second", seen), Recorder("third", seen)])(gm.graph)
    assert seen == ["first", "second", "third"]
