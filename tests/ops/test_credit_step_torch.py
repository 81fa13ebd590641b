"""ops/credit_step_torch.py: the plain-torch ops (`credit_compile::credit_step_{dense,sparse}`, the
CPU's and any device's without Triton) against the eager reference (credit_step_reference.py)."""

from __future__ import annotations

import pytest
import torch
from credit_op_cases import (
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    SHAPE_IDS,
    SHAPES,
    cpu_op,
    fresh_state,
    make_logits,
    params,
    run_sequence,
    sequence_kwargs,
    sparse_equals_dense,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from credit_compile import ops
from credit_compile.ops import credit_step_torch

MASK_ID = 7


@pytest.fixture
def small_row_groups(monkeypatch):
    """Make the plain ops process a few rows at a time (exercises their row grouping)."""
    monkeypatch.setattr(credit_step_torch, "ROW_CHUNK_ELEMS", 2048)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_op_matches_reference(layout, shape, dtype, atol, rtol, small_row_groups):
    run_sequence(layout, cpu_op(layout), shape, dtype, steps=6, atol=atol, rtol=rtol)


def test_row_groups_cover_everything():
    for batch, block, vocab in [(3, 5, 1001), (1, 64, 126464), (4, 300, 126464), (2, 1, 7)]:
        seen = torch.zeros(batch, block, dtype=torch.int32)
        for bs, ls in credit_step_torch._row_groups(batch, block, vocab):
            seen[bs, ls] += 1
            rows = (bs.stop - bs.start) * (ls.stop - ls.start)
            assert rows == 1 or rows * vocab <= credit_step_torch.ROW_CHUNK_ELEMS
        assert (seen == 1).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_op_opcheck(layout):
    batch, block, vocab = 2, 3, 64
    logits = make_logits(batch, block, vocab, torch.float32, 1)
    masked = torch.tensor([[True, False, True], [True, True, False]])
    for first in (True, False):
        f = torch.tensor(first)
        if layout == "dense":
            state = (torch.rand(batch, block, vocab),)
            op = torch.ops.credit_compile.credit_step_dense.default
        else:
            ids = torch.stack([torch.randperm(vocab)[:3] for _ in range(batch * block)])
            state = (ids.view(batch, block, 3), torch.rand(batch, block, 3))
            op = torch.ops.credit_compile.credit_step_sparse.default
        torch.library.opcheck(op, (logits, *state, masked, f, 1.5, 0.5, 1.0, MASK_ID))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_op_under_torch_compile(layout):
    torch._dynamo.reset()
    shape = (2, 3, 97)
    op = cpu_op(layout)
    compiled = torch.compile(op, fullgraph=True, backend="inductor")
    state_eager = fresh_state(layout, *shape)
    state_comp = tuple(t.clone() for t in state_eager)
    masked = torch.ones(shape[:2], dtype=torch.bool)
    for step in range(3):
        logits = make_logits(*shape, torch.bfloat16, step)
        f = torch.tensor(step == 0)
        if step == 2:
            masked[0, 0] = False
        a = op(logits, *state_eager, masked, f, 1.5, 0.7, 0.8, MASK_ID)
        b = compiled(logits, *state_comp, masked, f, 1.5, 0.7, 0.8, MASK_ID)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for s_e, s_c in zip(state_eager, state_comp, strict=True):
            assert torch.equal(s_e, s_c)


@settings(max_examples=25)
@given(p=params, layout=st.sampled_from(LAYOUTS))
def test_property_cpu_op_equals_reference(p, layout):
    shape = (p["batch"], p["block"], p["vocab"])
    run_sequence(layout, cpu_op(layout), shape, p["dtype"], steps=5, **sequence_kwargs(p))


@settings(max_examples=25)
@given(p=params)
def test_property_sparse_equals_dense_cpu_op(p):
    sparse_equals_dense(p, ops.credit_step_dense, ops.credit_step_sparse, steps=7)


def test_row_groups_of_whole_sequences_hold_as_many_as_fit_the_bound():
    # Several sequences fit one group, but not all of them.
    for batch, block, vocab in [(5, 64, 126464), (9, 32, 126464)]:
        seen = torch.zeros(batch, block, dtype=torch.int32)
        sizes = []
        for bs, ls in credit_step_torch._row_groups(batch, block, vocab):
            seen[bs, ls] += 1
            assert ls == slice(0, block)
            rows = (bs.stop - bs.start) * block
            assert rows * vocab <= credit_step_torch.ROW_CHUNK_ELEMS
            sizes.append(bs.stop - bs.start)
        assert (seen == 1).all()
        assert max(sizes) == credit_step_torch.ROW_CHUNK_ELEMS // (block * vocab)  # not one at a time
