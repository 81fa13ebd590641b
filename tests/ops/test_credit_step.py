"""ops/credit_step.py: the fused credit step as torch operators and their dispatchers. Schemas,
registration, the semantics every implementation shares (ties, the mask column, suppressed
columns, alpha=0), and on a GPU the registered Triton ops (opcheck, torch.compile, LLaDA-size
shapes).

Each implementation against the eager reference: tests/ops/test_credit_step_torch.py and
tests/ops/test_credit_step_triton.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from credit_op_cases import (
    DEV,
    LAYOUTS,
    TRITON_PROBLEM,
    assert_state,
    cpu_op,
    fresh_state,
    make_logits,
    needs_triton,
    reference_fn,
    run_sequence,
    triton_launcher,
)
from cuda_marks import CUDA, needs_cuda

from credit_compile import ops
from credit_compile.ops.credit_step_reference import (
    credit_step_dense_eager,
    dense_from_sparse,
    masked_vocab_logits,
)

MASK_ID = 7


def test_schemas():
    dense = str(torch.ops.credit_compile.credit_step_dense.default._schema)
    sparse = str(torch.ops.credit_compile.credit_step_sparse.default._schema)
    assert dense == "credit_compile::credit_step_dense" + ops.credit_step.DENSE_SCHEMA
    assert sparse == "credit_compile::credit_step_sparse" + ops.credit_step.SPARSE_SCHEMA
    assert "Tensor(a!) credit" in dense
    assert "Tensor(a!) slot_ids, Tensor(b!) slot_credit" in sparse


def test_package_import_does_not_import_triton():
    if CUDA:
        pytest.skip("with CUDA the Triton ops are registered at import (imports triton)")
    code = "import sys, credit_compile.ops; assert 'triton' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


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
