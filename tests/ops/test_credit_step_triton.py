"""ops/credit_step_dense_triton.py and ops/credit_step_sparse_triton.py: the Triton kernels, through
their plain launchers, against the eager reference (credit_step_reference.py).

One module for both kernels: their tests are parametrized over the layout and share the
launchers. On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set in
conftest.py); on a GPU, compiled."""

from __future__ import annotations

import os

import pytest
import torch
from credit_op_cases import (
    DEV,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    SHAPE_IDS,
    SHAPES,
    TRITON_PROBLEM,
    assert_state,
    fresh_state,
    make_logits,
    needs_triton,
    params,
    reference_fn,
    run_sequence,
    sequence_kwargs,
    sparse_equals_dense,
    triton_launcher,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from credit_compile import ops
from credit_compile.ops.credit_step_reference import (
    credit_step_dense_eager,
)


@pytest.mark.skipif(not (os.environ.get("CI") and ops.TRITON_AVAILABLE), reason="CI only")
def test_ci_runs_the_triton_kernel_tests():
    # CI installs Triton to test every kernel: a skip there would hide the kernels entirely.
    assert TRITON_PROBLEM is None, TRITON_PROBLEM


MASK_ID = 7


@needs_triton
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_launcher_matches_reference(layout, shape, dtype, atol, rtol):
    run_sequence(layout, triton_launcher(layout), shape, dtype, steps=3, new_block_at=2,
                 atol=atol, rtol=rtol, device=DEV)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_split_v_matches_reference(layout):
    """The V axis split over 3 programs per row (partials + combine kernel), 6 steps."""
    impl = triton_launcher(layout, nsplit=3, block_v=128)
    run_sequence(layout, impl, (1, 3, 1001), torch.bfloat16, steps=6, device=DEV)


@needs_triton
@pytest.mark.parametrize("lane", [0, 4, 8])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_lane_variants(layout, lane):
    """Per-thread groups of `lane` entries (0: block-wide reductions of every tile)."""
    impl = triton_launcher(layout, lane=lane, block_v=256)
    run_sequence(layout, impl, (2, 2, 1001), torch.bfloat16, steps=3, new_block_at=2,
                 device=DEV)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_multi_step(layout):
    """Eight steps, two blocks, few slots for sparse (eviction of the smallest credit)."""
    run_sequence(layout, triton_launcher(layout), (2, 3, 300), torch.float32, steps=8,
                 new_block_at=5, slots=2 if layout == "sparse" else None, device=DEV)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_non_contiguous_logits(layout):
    """Logits as a slice of a longer sequence (strided batch and block dimensions)."""
    full = make_logits(2, 9, 257, torch.bfloat16, 3, device=DEV)
    logits = full[:, 2:6]
    state_ref = fresh_state(layout, 2, 4, 257, device=DEV)
    state = tuple(t.clone() for t in state_ref)
    masked = torch.ones(2, 4, dtype=torch.bool, device=DEV)
    f = torch.tensor(True, device=DEV)
    x0_ref, conf_ref = reference_fn(layout)(logits, *state_ref, masked, f, 1.0, 0.5, 1.0, 0)
    x0, conf = triton_launcher(layout)(logits, *state, masked, f, 1.0, 0.5, 1.0, 0)
    assert torch.equal(x0, x0_ref)
    torch.testing.assert_close(conf, conf_ref, atol=1e-6, rtol=1e-5)
    assert_state(layout, state, state_ref, 1e-6, 1e-5)


@needs_triton
def test_launch_config_covers_vocab():
    from credit_compile.ops.credit_step_sparse_triton import launch_config

    for rows, vocab, nsplit, block_v in [(1, 126464, 7, 4096), (4, 1001, 3, 128), (2, 17, 5, 16),
                                         (9, 1001, None, None), (3, 126464, 40, 2048)]:
        bv, ns, chunk, warps = launch_config(rows, vocab, torch.device("cpu"), layout="sparse",
                                             elem_size=2, block_v=block_v, nsplit=nsplit)
        assert chunk % bv == 0 and bv & (bv - 1) == 0 and warps >= 1
        assert (ns - 1) * chunk < vocab <= ns * chunk  # every split non-empty, V covered


@needs_triton
def test_launch_config_tunes_by_layout_not_by_element_size(monkeypatch):
    """The split rule is the kernel's: 200 rows on 132 SMs fill the GPU for the sparse kernel
    (one program per row), not for the dense one. float64 logits, 8 bytes an entry like the dense
    kernel's fp32 + credit, were tuned as dense."""
    from credit_compile.ops import credit_step_sparse_triton as sparse

    monkeypatch.setattr(sparse, "sm_count", lambda device: 132)
    gpu = torch.device("cuda")
    for elem_size in (2, 4, 8):
        assert sparse.launch_config(200, 126464, gpu, layout="sparse", elem_size=elem_size)[1] == 1
        assert sparse.launch_config(200, 126464, gpu, layout="dense", elem_size=elem_size)[1] > 1
    with pytest.raises(ValueError, match="'sparse' or 'dense'"):
        sparse.launch_config(200, 126464, gpu, layout="slots", elem_size=2)


@needs_triton
@settings(max_examples=4)
@given(p=params, layout=st.sampled_from(LAYOUTS), nsplit=st.sampled_from([None, 2]),
       lane=st.sampled_from([None, 0, 4]))
def test_property_triton_equals_reference(p, layout, nsplit, lane):
    shape = (p["batch"], p["block"], p["vocab"])
    impl = triton_launcher(layout, nsplit=nsplit, block_v=64 if nsplit else None, lane=lane)
    run_sequence(layout, impl, shape, p["dtype"], steps=3, new_block_at=2, device=DEV,
                 **sequence_kwargs(p))


@needs_triton
@settings(max_examples=3)
@given(p=params)
def test_property_sparse_equals_dense_triton(p):
    sparse_equals_dense(p, triton_launcher("dense"), triton_launcher("sparse"), steps=6)


@needs_triton
def test_dense_triton_tie_between_incremented_top1_and_an_earlier_token():
    # f(v*) after its increment ties (in float32) with the fused logit of an earlier token u:
    # the reference's argmax takes u (the first index); the kernel's fix-up must too.
    vocab, u, v_star, mask_id = 16, 2, 5, 15
    logits = torch.full((1, 1, vocab), -10.0)
    logits[0, 0, u], logits[0, 0, v_star] = 0.0, 1.0  # v* is the raw top-1
    credit = torch.zeros(1, 1, vocab)
    credit[0, 0, u] = 1.0
    # gamma 0: the increment is exactly 1, so C'(v*) = 1 = C(u); alpha = 2**30 makes
    # r + alpha*log1p(1) round to the same float32 for r = 0 and r = 1. beta 1 keeps C(u).
    args = (torch.ones(1, 1, dtype=torch.bool), torch.tensor(False), 2.0**30, 1.0, 0.0, mask_id)
    ref_credit = credit.clone()
    x_ref, conf_ref = credit_step_dense_eager(logits, ref_credit, *args)
    assert x_ref.item() == u  # the tie this test is about
    for config in ({}, {"nsplit": 2, "block_v": 16}, {"lane": 0}):
        out_credit = credit.clone()
        x, conf = triton_launcher("dense", **config)(logits, out_credit, *args)
        assert torch.equal(x, x_ref), config
        torch.testing.assert_close(conf, conf_ref)
        torch.testing.assert_close(out_credit, ref_credit)


@needs_triton
def test_dense_triton_unmasked_row_gets_no_increment_in_x0():
    # An unmasked row gains no credit, so x0 = argmax(r + alpha*log1p(beta*C)) = u, although v*
    # would win with an increment.
    vocab, u, v_star = 16, 2, 5
    logits = torch.full((1, 1, vocab), -10.0)
    logits[0, 0, u], logits[0, 0, v_star] = 0.0, 1.0
    credit = torch.zeros(1, 1, vocab)
    credit[0, 0, u] = 0.5
    args = (torch.zeros(1, 1, dtype=torch.bool), torch.tensor(False), 4.0, 1.0, 0.0, 15)
    x_ref, conf_ref = credit_step_dense_eager(logits, credit.clone(), *args)
    assert x_ref.item() == u
    for config in ({}, {"nsplit": 2, "block_v": 16}):
        x, conf = triton_launcher("dense", **config)(logits, credit.clone(), *args)
        assert torch.equal(x, x_ref), config
        torch.testing.assert_close(conf, conf_ref)


@needs_triton
def test_dense_triton_updates_a_non_contiguous_credit_in_place():
    # A credit with a non-unit last stride (a transposed buffer): the launcher works on a
    # contiguous copy and must write the result back into the caller's tensor.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 97, generator=g) * 3
    credit = torch.rand(2, 97, 3, generator=g).transpose(1, 2)
    assert credit.stride(-1) != 1
    ref_credit = credit.contiguous().clone()
    masked = torch.tensor([[True, False, True], [True, True, False]])
    args = (masked, torch.tensor(False), 1.5, 0.7, 0.8, MASK_ID)
    x_ref, conf_ref = credit_step_dense_eager(logits, ref_credit, *args)
    x, conf = triton_launcher("dense")(logits, credit, *args)
    assert torch.equal(x, x_ref)
    torch.testing.assert_close(conf, conf_ref)
    torch.testing.assert_close(credit, ref_credit)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lane", [None, 0])
def test_triton_ties_across_tiles_take_the_first_index(layout, lane):
    # Equal maxima one tile apart (block_v 256): 40 and 296 share a lane group in consecutive
    # tiles, 40 and 552 a block-wide reduction slot. The per-lane and the block-wide running
    # argmax must both keep the earlier index (a strict '>').
    vocab = 600
    logits = torch.full((1, 2, vocab), -2.0)
    logits[0, 0, [40, 296, 552]] = 4.0
    logits[0, 1, [100, 356]] = 4.0
    masked = torch.ones(1, 2, dtype=torch.bool)
    args = (masked, torch.tensor(True), 0.5, 0.7, 1.0, MASK_ID)
    x_ref, _ = reference_fn(layout)(logits, *fresh_state(layout, 1, 2, vocab), *args)
    assert x_ref.tolist() == [[40, 100]]
    x, _ = triton_launcher(layout, block_v=256, lane=lane)(
        logits, *fresh_state(layout, 1, 2, vocab), *args)
    assert x.tolist() == [[40, 100]]
