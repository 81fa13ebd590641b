"""torch_settings_key: the global settings a captured step bakes in, read without raising."""

from __future__ import annotations

import pytest
import torch
from cuda_marks import CUDA_MARKS

from credit_compile.torch_settings import torch_settings_key


@pytest.fixture
def restore_settings():
    matmul = torch.backends.cuda.matmul
    before = (torch.get_float32_matmul_precision(), matmul.allow_fp16_reduced_precision_reduction,
              matmul.allow_bf16_reduced_precision_reduction, torch.get_default_dtype(),
              torch.is_autocast_cache_enabled())
    yield
    matmul.allow_fp16_accumulation = False
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
    matmul.fp32_precision = "ieee"  # leaves the newer flags' mode for the legacy setter below
    torch.set_float32_matmul_precision(before[0])
    matmul.allow_fp16_reduced_precision_reduction = before[1]
    matmul.allow_bf16_reduced_precision_reduction = before[2]
    torch.set_default_dtype(before[3])
    torch.set_autocast_cache_enabled(before[4])
    torch.use_deterministic_algorithms(False)
    for name in ("flash", "mem_efficient", "math", "cudnn"):
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(True)


CHANGES = {
    "tf32 matmuls": lambda: torch.set_float32_matmul_precision("high"),
    "tf32 through the newer flag": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision",
                                                   "tf32"),
    "fp16 reduced-precision reductions": lambda: setattr(
        torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", False),
    "bf16 reduced-precision reductions": lambda: setattr(
        torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", False),
    "fp16 accumulation": lambda: setattr(torch.backends.cuda.matmul, "allow_fp16_accumulation",
                                         True),
    "fp16/bf16 reductions in math attention": lambda: (
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)),
    "flash attention off": lambda: torch.backends.cuda.enable_flash_sdp(False),
    "memory-efficient attention off": lambda: torch.backends.cuda.enable_mem_efficient_sdp(False),
    "math attention off": lambda: torch.backends.cuda.enable_math_sdp(False),
    "cudnn attention off": lambda: torch.backends.cuda.enable_cudnn_sdp(False),
    "deterministic algorithms": lambda: torch.use_deterministic_algorithms(True),
    "default dtype": lambda: torch.set_default_dtype(torch.float64),
    "autocast weight-cast cache off": lambda: torch.set_autocast_cache_enabled(False),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_setting_changes_the_key(change, restore_settings):
    before = torch_settings_key()
    CHANGES[change]()
    assert torch_settings_key() != before




@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.float16, marks=CUDA_MARKS),
    pytest.param("cuda", torch.bfloat16, marks=CUDA_MARKS),
])
def test_autocast_changes_the_key_by_device_and_dtype(device, dtype):
    before = torch_settings_key()
    with torch.autocast(device, dtype=dtype, enabled=True):
        inside = torch_settings_key()
    assert inside != before and torch_settings_key() == before
    with torch.autocast(device, dtype=torch.float16 if dtype == torch.bfloat16 else torch.bfloat16):
        assert torch_settings_key() != inside


def test_a_setting_changed_and_restored_reads_as_before(restore_settings):
    before = torch_settings_key()
    torch.set_float32_matmul_precision("high")
    torch.set_float32_matmul_precision("highest")
    assert torch_settings_key() == before


def test_the_newer_and_legacy_tf32_flags_mixed_do_not_raise(restore_settings):
    # Torch's legacy getters raise once the newer fp32_precision flags were written; a generate()
    # call must not fail because the caller set TF32 either way.
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    key = torch_settings_key()
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert torch_settings_key() != key
