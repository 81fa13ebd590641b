"""passes/credit_fusion.py: CreditFusion fires on the eager dense credit chain (counter), keeps the
results, and stays off on near misses.

Most pass tests compile tiny functions with `make_backend([pass], inductor=False)` (the rewritten
Dynamo graph runs eagerly: seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
from cuda_marks import needs_cuda
from pass_graphs import (
    assert_same_state,
    calls,
    compile_recording,
    methods,
    run_steps,
)

from credit_compile.backend import make_backend
from credit_compile.ops.credit_step_reference import (
    credit_step_dense_eager,
    masked_vocab_logits,
    top1_and_prob,
)
from credit_compile.passes import (
    CreditFusion,
    pass_count,
)

DENSE_OP = torch.ops.credit_compile.credit_step_dense.default


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
