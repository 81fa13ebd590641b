"""The global torch settings a compiled or captured step bakes in, read as one hashable key.

A CUDA graph replays the kernels chosen when it was captured: a step captured outside
`torch.autocast` replays float32 matmuls inside it, one captured with TF32 off replays full
float32 after `torch.backends.cuda.matmul.allow_tf32 = True`, one captured with flash attention
replays it after `torch.nn.attention.sdpa_kernel` picked another backend. The eager reference
under the new settings computes otherwise, so the API keys its cached steps on this: a call
under other settings gets a step of its own (compiled and captured under them), and a call under
the earlier settings finds the earlier step again.

Dynamo guards most of these for a compiled step without graphs (its GlobalStateGuard); keying on
them there too gives a step per setting instead of a recompile inside the old one.
Not covered: torch function modes and dispatch modes active around the call (`with
torch.device(...)`), which the captured step does not see either, and the cuDNN flags
(`cudnn.allow_tf32`, `cudnn.benchmark`, `cudnn.deterministic`), which choose convolution kernels
only: LLaDA has no convolutions.
"""

from __future__ import annotations

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def torch_settings_key() -> tuple:
    """The current autocast, matmul-precision and accumulation, BLAS-library, attention-backend,
    determinism and default-dtype settings. Cheap (about 10 microseconds): read on every
    generate() call."""
    matmul = torch.backends.cuda.matmul
    autocast = tuple(
        (device, torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
        for device in _AUTOCAST_DEVICES)
    return (
        autocast,
        torch.is_autocast_cache_enabled(),
        _float32_matmul_precision(),
        matmul.allow_fp16_reduced_precision_reduction,
        matmul.allow_bf16_reduced_precision_reduction,
        getattr(matmul, "allow_fp16_accumulation", None),  # float16 GEMMs accumulating in fp16
        torch.backends.cuda.preferred_blas_library(),  # cuBLAS or cuBLASLt
        torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.are_deterministic_algorithms_enabled(),
        torch.get_default_dtype(),
    )


def _float32_matmul_precision() -> str:
    """Whether float32 matmuls may use TF32, read so that it never raises and a round trip
    (set "high", set "highest" again) reads as before. Torch's newer `fp32_precision` flags read
    "none" before any write and "ieee" after, and the legacy getters raise once those flags were
    written: the legacy reading where it works, else the newer flag."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return f"fp32_precision={getattr(torch.backends.cuda.matmul, 'fp32_precision', None)}"
