"""Fused CreditDecoding step operators.

Importing this package registers the `credit_compile::credit_step_{dense,sparse}` operators (and
their Triton twins when Triton and CUDA are present); it never imports triton otherwise. The
Triton launchers are loaded on first access (`from credit_compile.ops import
launch_credit_step_sparse_triton`), which imports triton: set TRITON_INTERPRET=1 before that to
run them on CPU tensors.
"""

from .credit_step import (
    TRITON_AVAILABLE,
    credit_step_dense,
    credit_step_dense_op,
    credit_step_sparse,
    credit_step_sparse_op,
    register_triton_ops,
    triton_ops_registered,
)
from .credit_step_reference import (
    EMPTY_SLOT,
    credit_step_dense_eager,
    credit_step_sparse_eager,
    dense_from_sparse,
    empty_sparse_state,
)
from .credit_step_torch import credit_step_dense_torch, credit_step_sparse_torch

_LAZY = {
    "launch_credit_step_dense_triton": ".credit_step_dense_triton",
    "launch_credit_step_sparse_triton": ".credit_step_sparse_triton",
}


def __getattr__(name: str):
    if name in _LAZY:
        if not TRITON_AVAILABLE:
            raise ImportError(f"{name} needs triton, which is not installed")
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMPTY_SLOT",
    "TRITON_AVAILABLE",
    "credit_step_dense",
    "credit_step_dense_torch",
    "credit_step_dense_eager",
    "credit_step_dense_op",
    "credit_step_sparse",
    "credit_step_sparse_torch",
    "credit_step_sparse_eager",
    "credit_step_sparse_op",
    "dense_from_sparse",
    "empty_sparse_state",
    "launch_credit_step_dense_triton",
    "launch_credit_step_sparse_triton",
    "register_triton_ops",
    "triton_ops_registered",
]
