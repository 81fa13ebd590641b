"""The fused credit-step operators against the eager reference (credit_step_reference.py).

CPU: the plain ops (`credit_compile::credit_step_{dense,sparse}`), and the Triton kernels run by
their plain launchers under Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py). GPU-only
tests (skipped without CUDA) run the registered Triton ops, opcheck them and compile them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch
from cuda_marks import CUDA, needs_cuda
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_env import triton_kernel_problem

from credit_compile import ops
from credit_compile.ops import credit_step_torch
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


@pytest.mark.skipif(not (os.environ.get("CI") and ops.TRITON_AVAILABLE), reason="CI only")
def test_ci_runs_the_triton_kernel_tests():
    # CI installs Triton to test every kernel: a skip there would hide the kernels entirely.
    assert TRITON_PROBLEM is None, TRITON_PROBLEM


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


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


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


@pytest.fixture
def small_row_groups(monkeypatch):
    """Make the plain ops process a few rows at a time (exercises their row grouping)."""
    monkeypatch.setattr(credit_step_torch, "ROW_CHUNK_ELEMS", 2048)


# ------------------------------------------------------------------------------------------------
# plain (CPU) ops
# ------------------------------------------------------------------------------------------------


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


def test_schemas():
    dense = str(torch.ops.credit_compile.credit_step_dense.default._schema)
    sparse = str(torch.ops.credit_compile.credit_step_sparse.default._schema)
    assert dense == "credit_compile::credit_step_dense" + ops.credit_step.DENSE_SCHEMA
    assert sparse == "credit_compile::credit_step_sparse" + ops.credit_step.SPARSE_SCHEMA
    assert "Tensor(a!) credit" in dense
    assert "Tensor(a!) slot_ids, Tensor(b!) slot_credit" in sparse


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


def test_package_import_does_not_import_triton():
    if CUDA:
        pytest.skip("with CUDA the Triton ops are registered at import (imports triton)")
    code = "import sys, credit_compile.ops; assert 'triton' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------------------------------------------------
# Triton kernels through the plain launchers (interpreter on CPU, real kernels on CUDA)
# ------------------------------------------------------------------------------------------------

DEV = "cuda" if CUDA else "cpu"


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


def implementations(layout):
    impls = [("op", cpu_op(layout))]
    if TRITON_PROBLEM is None:
        impls.append(("triton", triton_launcher(layout)))
        impls.append(("triton_split", triton_launcher(layout, nsplit=2, block_v=256)))
    return impls


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_take_first_index(layout):
    """Equal maxima -> the first index (also across split chunks); alpha = 0 keeps raw ties."""
    batch, block, vocab = 1, 2, 600
    logits = torch.full((batch, block, vocab), -2.0)
    logits[0, 0, [40, 90, 450]] = 4.0  # a tie inside one chunk and one across chunks
    logits[0, 1, [520, 300]] = 4.0
    for dtype in (torch.float32, torch.bfloat16):
        for name, impl in implementations(layout):
            state = fresh_state(layout, batch, block, vocab, device=DEV)
            masked = torch.ones(batch, block, dtype=torch.bool, device=DEV)
            x0, conf = impl(logits.to(dtype).to(DEV), *state, masked,
                            torch.tensor(True, device=DEV), 0.0, 0.5, 1.0, MASK_ID)
            assert x0.tolist() == [[40, 300]], name
            # the credit went to the first index of the raw maximum
            dense = state[0] if layout == "dense" else dense_from_sparse(*state, vocab)
            assert dense[0, 0, 40] > 0 and dense[0, 0, 90] == 0 and dense[0, 1, 300] > 0, name
            probs = torch.softmax(masked_vocab_logits(logits.to(dtype), MASK_ID), -1)
            torch.testing.assert_close(conf.cpu(), probs.max(-1).values, atol=1e-6, rtol=1e-5)


def same_logits_steps(layout, impl, logits, alpha, beta, gamma, steps=3):
    """`steps` steps of impl (on DEV) and of the eager twin with the same logits and every
    position masked, the first a block's first: [(x0, conf, ref x0, ref conf)], and the states."""
    batch, block, vocab = logits.shape
    state_ref = fresh_state(layout, batch, block, vocab)
    state = fresh_state(layout, batch, block, vocab, device=DEV)
    masked = torch.ones(batch, block, dtype=torch.bool)
    results = []
    for step in range(steps):
        first = step == 0
        ref = reference_fn(layout)(logits, *state_ref, masked, torch.tensor(first), alpha, beta,
                                   gamma, MASK_ID)
        x0, conf = impl(logits.to(DEV), *state, masked.to(DEV), torch.tensor(first, device=DEV),
                        alpha, beta, gamma, MASK_ID)
        results.append((x0, conf, *ref))
    return results, state, state_ref


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mask_column_never_chosen(layout):
    batch, block, vocab = 2, 2, 333
    logits = make_logits(batch, block, vocab, torch.float32, 5)
    logits[..., MASK_ID] = 100.0
    for name, impl in implementations(layout):
        steps, state, _ = same_logits_steps(layout, impl, logits, 2.0, 0.9, 0.5)
        for x0, conf, ref_x0, ref_conf in steps:
            assert (x0 != MASK_ID).all(), name
            assert torch.equal(x0.cpu(), ref_x0), name
            torch.testing.assert_close(conf.cpu(), ref_conf, atol=1e-6, rtol=1e-5)
        dense = state[0] if layout == "dense" else dense_from_sparse(*state, vocab)
        assert (dense[..., MASK_ID] == 0).all(), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_suppressed_columns_at_minus_infinity(layout):
    """`suppress_tokens` reach the op as -inf logits: whole tiles of them (the first 300
    columns: every tile of the split launch's first chunk, a tile of 128) must not turn the
    running softmax into NaN, and none is chosen."""
    batch, block, vocab = 2, 3, 700
    logits = make_logits(batch, block, vocab, torch.float32, 6)
    logits[..., :300] = float("-inf")
    logits[..., 450] = float("-inf")
    impls = implementations(layout)
    if TRITON_PROBLEM is None:
        impls.append(("triton_tile_128", triton_launcher(layout, block_v=128)))
    for name, impl in impls:
        steps, state, state_ref = same_logits_steps(layout, impl, logits, 0.7, 0.8, 0.2)
        for x0, conf, ref_x0, ref_conf in steps:
            assert ((x0.cpu() >= 300) & (x0.cpu() != 450)).all(), name
            assert torch.equal(x0.cpu(), ref_x0), name
            assert torch.isfinite(conf).all(), name
            torch.testing.assert_close(conf.cpu(), ref_conf, atol=1e-6, rtol=1e-5)
        assert_state(layout, state, state_ref, 1e-6, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_alpha_zero_is_plain_softmax(layout, dtype):
    batch, block, vocab = 2, 3, 257
    logits = make_logits(batch, block, vocab, dtype, 9)
    probs = torch.softmax(masked_vocab_logits(logits, MASK_ID), -1)
    for name, impl in implementations(layout):
        state = fresh_state(layout, batch, block, vocab, device=DEV)
        if layout == "dense":
            state[0].uniform_(0, 3)  # any credit: alpha = 0 ignores it
        masked = torch.ones(batch, block, dtype=torch.bool, device=DEV)
        x0, conf = impl(logits.to(DEV), *state, masked, torch.tensor(False, device=DEV),
                        0.0, 0.5, 1.0, MASK_ID)
        assert torch.equal(x0.cpu(), probs.argmax(-1)), name
        torch.testing.assert_close(conf.cpu(), probs.max(-1).values, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# properties (hypothesis)
# ------------------------------------------------------------------------------------------------

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


def _sequence_kwargs(p):
    return dict(alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"], seed=p["seed"],
                mask_id=p["seed"] % p["vocab"], exact=False)


@settings(max_examples=25)
@given(p=params, layout=st.sampled_from(LAYOUTS))
def test_property_cpu_op_equals_reference(p, layout):
    shape = (p["batch"], p["block"], p["vocab"])
    run_sequence(layout, cpu_op(layout), shape, p["dtype"], steps=5, **_sequence_kwargs(p))


@needs_triton
@settings(max_examples=4)
@given(p=params, layout=st.sampled_from(LAYOUTS), nsplit=st.sampled_from([None, 2]),
       lane=st.sampled_from([None, 0, 4]))
def test_property_triton_equals_reference(p, layout, nsplit, lane):
    shape = (p["batch"], p["block"], p["vocab"])
    impl = triton_launcher(layout, nsplit=nsplit, block_v=64 if nsplit else None, lane=lane)
    run_sequence(layout, impl, shape, p["dtype"], steps=3, new_block_at=2, device=DEV,
                 **_sequence_kwargs(p))


def _sparse_equals_dense(p, dense_impl, sparse_impl, steps):
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


@settings(max_examples=25)
@given(p=params)
def test_property_sparse_equals_dense_cpu_op(p):
    _sparse_equals_dense(p, ops.credit_step_dense, ops.credit_step_sparse, steps=7)


@needs_triton
@settings(max_examples=3)
@given(p=params)
def test_property_sparse_equals_dense_triton(p):
    _sparse_equals_dense(p, triton_launcher("dense"), triton_launcher("sparse"), steps=6)


# ------------------------------------------------------------------------------------------------
# Hand-made corners (each kept a kernel mutant alive before it was added)
# ------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("first", [True, False])
def test_dispatcher_accepts_a_python_bool_flag(layout, first):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 50, generator=g) * 3
    masked = torch.tensor([[True, False, True], [True, True, True]])
    state = fresh_state(layout, 2, 3, 50)
    reference = reference_fn(layout)
    # Credit from an earlier step, which a first step must drop and a later one decay.
    reference(torch.randn(2, 3, 50, generator=g) * 3, *state, masked, torch.tensor(True), 1.5,
              0.7, 0.8, MASK_ID)
    ref_state = tuple(t.clone() for t in state)
    ref = reference(logits, *ref_state, masked, torch.tensor(first), 1.5, 0.7, 0.8, MASK_ID)
    out = cpu_op(layout)(logits, *state, masked, first, 1.5, 0.7, 0.8, MASK_ID)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    for a, b in zip(state, ref_state, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# GPU only: the registered Triton ops, opcheck, torch.compile, LLaDA-size shapes
# ------------------------------------------------------------------------------------------------


@needs_cuda
@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 32, 126464), (8, 64, 126464)], ids=["B1", "B8"])
def test_cuda_triton_op_llada_shapes(layout, shape):
    assert ops.triton_ops_registered()
    impl = getattr(torch.ops.credit_compile, f"credit_step_{layout}_triton")
    run_sequence(layout, impl, shape, torch.bfloat16, steps=4, new_block_at=3, mask_id=126336,
                 device="cuda", exact=False, atol=1e-6, rtol=2e-5)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_forced_configs(layout):
    for config in ({"nsplit": 1}, {"nsplit": 5}, {"block_v": 1024, "num_warps": 4}):
        run_sequence(layout, triton_launcher(layout, **config), (2, 8, 126464), torch.bfloat16,
                     steps=3, new_block_at=2, mask_id=126336, device="cuda", exact=False,
                     atol=1e-6, rtol=2e-5)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_opcheck_triton_ops(layout):
    batch, block, vocab = 2, 4, 1001
    logits = make_logits(batch, block, vocab, torch.bfloat16, 2, device="cuda")
    masked = torch.ones(batch, block, dtype=torch.bool, device="cuda")
    f = torch.tensor(False, device="cuda")
    state = fresh_state(layout, batch, block, vocab, device="cuda")
    op = getattr(torch.ops.credit_compile, f"credit_step_{layout}_triton").default
    torch.library.opcheck(op, (logits, *state, masked, f, 1.5, 0.5, 1.0, MASK_ID))


@needs_cuda
@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_dispatcher_under_torch_compile(layout):
    torch._dynamo.reset()
    shape = (2, 32, 126464)
    op = cpu_op(layout)  # the dispatcher: picks the Triton op on CUDA
    compiled = torch.compile(op, fullgraph=True)
    state_eager = fresh_state(layout, *shape, device="cuda")
    state_comp = tuple(t.clone() for t in state_eager)
    masked = torch.ones(shape[:2], dtype=torch.bool, device="cuda")
    for step in range(3):
        logits = make_logits(*shape, torch.bfloat16, step, device="cuda")
        f = torch.tensor(step == 0, device="cuda")
        a = op(logits, *state_eager, masked, f, 1.5, 0.7, 0.8, 126336)
        b = compiled(logits, *state_comp, masked, f, 1.5, 0.7, 0.8, 126336)
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-5)
        for s_e, s_c in zip(state_eager, state_comp, strict=True):
            torch.testing.assert_close(s_e, s_c, atol=1e-6, rtol=1e-5)


# Found by mutation testing (each test fails on its mutant).


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


@pytest.mark.parametrize("name", ["credit_step_dense", "credit_step_sparse"])
def test_cpu_logits_take_the_plain_op_when_the_triton_ops_are_registered(monkeypatch, name):
    # The Triton ops cannot run on CPU fake tensors under torch.compile: the device decides.
    from credit_compile.ops import credit_step

    monkeypatch.setattr(credit_step, "_TRITON_OPS_REGISTERED", True)
    assert credit_step.dispatch_op(name, torch.zeros(1, 2, 8)) == getattr(
        torch.ops.credit_compile, name)


def test_registering_the_triton_ops_twice_is_fine():
    pytest.importorskip("triton")
    code = ("from credit_compile.ops import credit_step as c\n"
            "assert not c.triton_ops_registered()\n"
            "assert c.register_triton_ops() and c.triton_ops_registered()\n"
            "assert c.register_triton_ops() and c.triton_ops_registered()\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_mask_column_loses_to_very_negative_logits():
    # The mask column is -inf, not merely very negative: it loses to any finite logit.
    mask_id = 3
    logits = torch.full((1, 2, 6), -1e10)
    logits[0, :, 1] = -2e10
    logits[0, :, mask_id] = 50.0
    credit = torch.zeros(1, 2, 6)
    masked = torch.ones(1, 2, dtype=torch.bool)
    x0, conf = credit_step_dense_eager(logits, credit, masked, torch.tensor(True), 0.7, 0.8, 0.2,
                                       mask_id)
    assert (x0 != mask_id).all()
    assert (x0 == 0).all() and (credit[..., mask_id] == 0).all()
