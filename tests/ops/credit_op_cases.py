"""Inputs, implementations and checks shared by the credit op's tests."""

from __future__ import annotations

import functools

import pytest
import torch
from cuda_marks import CUDA
from hypothesis import strategies as st
from triton_env import triton_kernel_problem

from credit_compile import ops
from credit_compile.ops.credit_step_reference import (
    EMPTY_SLOT,
    credit_step_dense_eager,
    credit_step_sparse_eager,
    dense_from_sparse,
    empty_sparse_state,
    masked_vocab_logits,
    sparse_fused_logits,
)

TRITON_PROBLEM = triton_kernel_problem()


needs_triton = pytest.mark.skipif(TRITON_PROBLEM is not None, reason=str(TRITON_PROBLEM))


# (dtype, atol, rtol) for conf and credit: the math is float32 whatever the logits' dtype.
DTYPES = [
    (torch.float32, 1e-6, 1e-5),
    (torch.bfloat16, 1e-6, 1e-5),
    (torch.float16, 1e-6, 1e-5),
    # float64 models (the GPU float64 replay test) feed float64 logits to the same kernels.
    (torch.float64, 1e-6, 1e-5),
]


DTYPE_IDS = ["fp32", "bf16", "fp16", "fp64"]


# (B, Lb, V): aligned, and odd (V not a multiple of any tile).
SHAPES = [(2, 4, 512), (3, 5, 1001)]


SHAPE_IDS = ["aligned", "odd"]


LAYOUTS = ["dense", "sparse"]


MASK_ID = 7


def make_logits(batch, block, vocab, dtype, seed, scale=3.0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, block, vocab, generator=gen) * scale).to(dtype).to(device)


def fresh_state(layout, batch, block, vocab, slots=None, device="cpu"):
    if layout == "dense":
        return (torch.zeros(batch, block, vocab, device=device),)
    return empty_sparse_state(batch, block, slots or block, device)


def reference_fn(layout):
    return credit_step_dense_eager if layout == "dense" else credit_step_sparse_eager


def cpu_op(layout):
    return ops.credit_step_dense if layout == "dense" else ops.credit_step_sparse


def triton_launcher(layout, **config):
    name = f"launch_credit_step_{layout}_triton"
    return functools.partial(getattr(ops, name), **config)


def fused_logits(layout, logits, state, alpha, mask_id):
    raw = masked_vocab_logits(logits, mask_id)
    if layout == "dense":
        return raw + alpha * torch.log1p(state[0])
    return sparse_fused_logits(raw, state[0], state[1], alpha)


def assert_x0(x0, x0_ref, fused_ref, exact):
    """x0 equal; with exact=False a mismatch is allowed only at a near-tie of the reference's fused
    logits (the two choices within float32 rounding)."""
    assert x0.dtype == torch.int64 and x0.shape == x0_ref.shape
    bad = x0.cpu() != x0_ref.cpu()
    if not bad.any():
        return
    assert not exact, f"x0 differs at {bad.nonzero().tolist()}"
    fused_ref = fused_ref.cpu()
    a = fused_ref.gather(-1, x0_ref.cpu().unsqueeze(-1)).squeeze(-1)[bad]
    b = fused_ref.gather(-1, x0.cpu().unsqueeze(-1)).squeeze(-1)[bad]
    assert ((a - b).abs() <= 1e-5 * (1 + a.abs())).all(), f"x0 differs beyond near-ties: {a} {b}"


def assert_state(layout, state, state_ref, atol, rtol):
    if layout == "sparse":
        assert torch.equal(state[0].cpu(), state_ref[0].cpu()), "slot ids differ"
    torch.testing.assert_close(state[-1].cpu(), state_ref[-1].cpu(), atol=atol, rtol=rtol)


def run_sequence(layout, impl, shape, dtype, *, steps=6, alpha=1.5, beta=0.7, gamma=0.8,
                 mask_id=MASK_ID, seed=0, atol=1e-6, rtol=1e-5, exact=True, slots=None,
                 device="cpu", new_block_at=4):
    """Run `steps` steps of impl and of the reference from the same state and compare each step.

    The block's first step is step 0 (and again `new_block_at`, with every position masked again);
    positions are unmasked a few at a time in between.
    """
    batch, block, vocab = shape
    state_ref = fresh_state(layout, batch, block, vocab, slots, device)
    state = tuple(t.clone() for t in state_ref)
    gen = torch.Generator().manual_seed(seed + 1)
    masked = torch.ones(batch, block, dtype=torch.bool)
    ref = reference_fn(layout)
    for step in range(steps):
        first = step == 0 or step == new_block_at
        if step == new_block_at:
            masked[:] = True
        elif step > 0:
            masked &= torch.rand(batch, block, generator=gen) > 0.3
        logits = make_logits(batch, block, vocab, dtype, seed * 100 + step, device=device)
        m = masked.to(device)
        f = torch.tensor(first, device=device)
        x0_ref, conf_ref = ref(logits, *state_ref, m, f, alpha, beta, gamma, mask_id)
        x0, conf = impl(logits, *state, m, f, alpha, beta, gamma, mask_id)
        assert_x0(x0, x0_ref, fused_logits(layout, logits, state_ref, alpha, mask_id), exact)
        assert conf.dtype == torch.float32
        torch.testing.assert_close(conf.cpu(), conf_ref.cpu(), atol=atol, rtol=rtol)
        assert_state(layout, state, state_ref, atol, rtol)
        assert (state[-1] >= 0).all()
    return state


DEV = "cuda" if CUDA else "cpu"


params = st.fixed_dictionaries({
    "batch": st.integers(1, 2),
    "block": st.integers(1, 4),
    "vocab": st.integers(17, 300).map(lambda v: v | 1),  # odd vocabularies
    "dtype": st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    "alpha": st.sampled_from([0.0, 0.5, 1.0, 2.5]),
    "beta": st.sampled_from([0.0, 0.3, 0.7, 0.95]),
    "gamma": st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    "seed": st.integers(0, 10_000),
})


def sequence_kwargs(p):
    return dict(alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"], seed=p["seed"],
                mask_id=p["seed"] % p["vocab"], exact=False)


def sparse_equals_dense(p, dense_impl, sparse_impl, steps):
    """K = Lb slots and at most Lb steps per block: the sparse state is the dense one exactly."""
    batch, block, vocab = p["batch"], p["block"], p["vocab"]
    alpha, beta, gamma = p["alpha"], p["beta"], p["gamma"]
    mask_id = p["seed"] % vocab
    credit = torch.zeros(batch, block, vocab, device=DEV)
    ids, slot_credit = empty_sparse_state(batch, block, block, DEV)
    gen = torch.Generator().manual_seed(p["seed"])
    masked = torch.ones(batch, block, dtype=torch.bool)
    step_in_block = 0
    for step in range(steps):
        if step_in_block == block:  # a new block: everything masked again
            step_in_block = 0
            masked[:] = True
        first = step_in_block == 0
        logits = make_logits(batch, block, vocab, p["dtype"], p["seed"] + step, device=DEV)
        m = masked.to(DEV)
        f = torch.tensor(first, device=DEV)
        before_dense, before_sparse = credit.clone(), slot_credit.clone()
        before_ids = ids.clone()
        x0_d, conf_d = dense_impl(logits, credit, m, f, alpha, beta, gamma, mask_id)
        x0_s, conf_s = sparse_impl(logits, ids, slot_credit, m, f, alpha, beta, gamma, mask_id)
        fused = masked_vocab_logits(logits, mask_id) + alpha * torch.log1p(credit)
        assert_x0(x0_s, x0_d, fused, exact=False)
        torch.testing.assert_close(conf_s, conf_d, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dense_from_sparse(ids, slot_credit, vocab), credit,
                                   atol=1e-6, rtol=1e-5)
        assert (credit >= 0).all() and (slot_credit >= 0).all()
        if not first:  # unmasked positions only decay, exactly
            keep = ~m
            assert torch.equal(credit[keep], before_dense[keep] * beta)
            assert torch.equal(slot_credit[keep], before_sparse[keep] * beta)
            assert torch.equal(ids[keep], before_ids[keep])
        else:
            assert (credit[~m] == 0).all() and (slot_credit[~m] == 0).all()
        assert ((ids == EMPTY_SLOT) | ((ids >= 0) & (ids < vocab))).all()
        masked &= torch.rand(batch, block, generator=gen) > 0.4
        step_in_block += 1
