"""The fused CreditDecoding step as torch operators, and the public dispatchers.

One CreditDecoding step (the math: `credit_step_reference.py`, the oracle; derivations in
docs/credit_op.md), with the credit dense (float32 [B, Lb, V]) or sparse (K slots (token id,
credit) per position).

Operators (schemas are part of the package's contract):

    credit_compile::credit_step_dense(Tensor logits, Tensor(a!) credit, Tensor masked,
        Tensor first_step, float alpha, float beta, float gamma, int mask_id)
        -> (Tensor x0, Tensor conf)
    credit_compile::credit_step_sparse(Tensor logits, Tensor(a!) slot_ids, Tensor(b!) slot_credit,
        Tensor masked, Tensor first_step, float alpha, float beta, float gamma, int mask_id)
        -> (Tensor x0, Tensor conf)

  `torch.library.custom_op`s with a plain-torch implementation (any device; used on CPU) and a
  fake implementation; opaque to torch.compile.

    credit_compile::credit_step_dense_triton, credit_compile::credit_step_sparse_triton

  the same signatures as `torch.library.triton_op`s: their bodies launch the Triton kernels through
  `torch.library.wrap_triton`, so Inductor sees (and schedules) the kernels themselves. They are
  registered at import when Triton is installed and CUDA is available, or on demand with
  `register_triton_ops()` (e.g. to run them eagerly on CPU tensors under TRITON_INTERPRET=1;
  inside torch.compile on CPU the interpreter cannot run on fake tensors, hence the split by
  device).

Dispatchers `credit_step_dense` / `credit_step_sparse` choose the Triton op when the logits are on
CUDA and the Triton ops are registered, else the plain op; the choice depends only on the device,
so it is static under torch.compile.
"""

import importlib.util

import torch

from .credit_step_torch import credit_step_dense_torch, credit_step_sparse_torch

TRITON_AVAILABLE: bool = importlib.util.find_spec("triton") is not None

DENSE_SCHEMA = (
    "(Tensor logits, Tensor(a!) credit, Tensor masked, Tensor first_step, float alpha, "
    "float beta, float gamma, int mask_id) -> (Tensor x0, Tensor conf)"
)
SPARSE_SCHEMA = (
    "(Tensor logits, Tensor(a!) slot_ids, Tensor(b!) slot_credit, Tensor masked, "
    "Tensor first_step, float alpha, float beta, float gamma, int mask_id) "
    "-> (Tensor x0, Tensor conf)"
)


def _outputs_like(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, block = logits.shape[0], logits.shape[1]
    return (
        logits.new_empty((batch, block), dtype=torch.int64),
        logits.new_empty((batch, block), dtype=torch.float32),
    )


# ------------------------------------------------------------------------------------------------
# plain ops (CPU, and every device as a fallback)
# ------------------------------------------------------------------------------------------------

credit_step_dense_op = torch.library.custom_op(
    "credit_compile::credit_step_dense",
    credit_step_dense_torch,
    mutates_args=("credit",),
    schema=DENSE_SCHEMA,
)


@credit_step_dense_op.register_fake
def _dense_fake(logits, credit, masked, first_step, alpha, beta, gamma, mask_id):
    return _outputs_like(logits)


credit_step_sparse_op = torch.library.custom_op(
    "credit_compile::credit_step_sparse",
    credit_step_sparse_torch,
    mutates_args=("slot_ids", "slot_credit"),
    schema=SPARSE_SCHEMA,
)


@credit_step_sparse_op.register_fake
def _sparse_fake(logits, slot_ids, slot_credit, masked, first_step, alpha, beta, gamma, mask_id):
    return _outputs_like(logits)


# ------------------------------------------------------------------------------------------------
# Triton ops
# ------------------------------------------------------------------------------------------------

_TRITON_OPS_REGISTERED = False


def _dense_triton_body(
    logits: torch.Tensor,
    credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .credit_step_dense_triton import launch_credit_step_dense_triton

    return launch_credit_step_dense_triton(
        logits, credit, masked, first_step, alpha, beta, gamma, mask_id, wrap=True
    )


def _sparse_triton_body(
    logits: torch.Tensor,
    slot_ids: torch.Tensor,
    slot_credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .credit_step_sparse_triton import launch_credit_step_sparse_triton

    return launch_credit_step_sparse_triton(
        logits, slot_ids, slot_credit, masked, first_step, alpha, beta, gamma, mask_id, wrap=True
    )


def register_triton_ops() -> bool:
    """Register `credit_compile::credit_step_{dense,sparse}_triton` (idempotent).

    Returns whether they are registered (False when Triton is not installed). Registration imports
    triton (torch inspects the op body); the kernels themselves are compiled on first use.
    """
    global _TRITON_OPS_REGISTERED
    if _TRITON_OPS_REGISTERED:
        return True
    if not TRITON_AVAILABLE:
        return False
    torch.library.triton_op("credit_compile::credit_step_dense_triton", mutates_args={"credit"})(
        _dense_triton_body
    )
    torch.library.triton_op(
        "credit_compile::credit_step_sparse_triton", mutates_args={"slot_ids", "slot_credit"}
    )(_sparse_triton_body)
    _TRITON_OPS_REGISTERED = True
    return True


def triton_ops_registered() -> bool:
    return _TRITON_OPS_REGISTERED


if TRITON_AVAILABLE and torch.cuda.is_available():
    register_triton_ops()


# ------------------------------------------------------------------------------------------------
# public dispatchers
# ------------------------------------------------------------------------------------------------


def dispatch_op(name: str, logits: torch.Tensor):
    """The Triton op for CUDA logits (when registered), else the plain op; static under
    torch.compile."""
    if logits.is_cuda and _TRITON_OPS_REGISTERED:
        return getattr(torch.ops.credit_compile, f"{name}_triton")
    return getattr(torch.ops.credit_compile, name)


def _as_flag(first_step, device: torch.device) -> torch.Tensor:
    if isinstance(first_step, torch.Tensor):
        return first_step
    return torch.tensor(bool(first_step), device=device)


def credit_step_dense(
    logits: torch.Tensor,
    credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One credit step, dense credit [B, Lb, V] float32 (updated in place) -> (x0, conf).

    Same semantics as `credit_step_dense_eager`. Triton kernels on CUDA, plain torch elsewhere.
    """
    op = dispatch_op("credit_step_dense", logits)
    return op(logits, credit, masked, _as_flag(first_step, logits.device), float(alpha),
              float(beta), float(gamma), int(mask_id))


def credit_step_sparse(
    logits: torch.Tensor,
    slot_ids: torch.Tensor,
    slot_credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One credit step, K slots per position (slot_ids / slot_credit updated in place).

    Same semantics as `credit_step_sparse_eager`. Triton kernels on CUDA, plain torch elsewhere.
    """
    op = dispatch_op("credit_step_sparse", logits)
    return op(logits, slot_ids, slot_credit, masked, _as_flag(first_step, logits.device),
              float(alpha), float(beta), float(gamma), int(mask_id))
