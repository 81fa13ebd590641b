"""The tests that need a CUDA device: skipped elsewhere, and marked `gpu`, so that
`pytest -m gpu` runs every one of them (benchmarks/gpu_session.sh does)."""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()
_SKIP = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
CUDA_MARKS = (pytest.mark.gpu, _SKIP)  # for pytest.param(..., marks=CUDA_MARKS)


def needs_cuda(test):
    """Decorator: the test runs on a CUDA device only, and is marked `gpu`."""
    return pytest.mark.gpu(_SKIP(test))
