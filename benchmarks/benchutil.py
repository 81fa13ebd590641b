"""What the benchmark scripts share: their random models and their command-line checks."""

from __future__ import annotations

import argparse

import torch

import credit_compile as cc
from credit_compile.models import LLADA2_PRESETS, PRESETS, LLaDAConfig, build_model, get_config

# At the presets' init_std (0.02) the random tiny model is near uniform: every confidence is
# 0.011-0.014, all within the commit rule's tie slack (1e-5) of the best, so threshold and credit
# decoding commit a whole block per step and NFE and ratios are artefacts of the ties. At 0.5
# (as the tests' random tiny models) the confidences spread out and they commit about one token
# per step, as a random model at real shapes does.
TINY_INIT_STD = 0.5


def is_tiny(preset: str) -> bool:
    return preset.startswith("tiny")


def is_llada2(preset: str) -> bool:
    """A LLaDA2 preset (block-diffusion MoE, `LLADA2_PRESETS`)."""
    return preset in LLADA2_PRESETS


def decode_config(preset: str, **fields) -> cc.DecodeConfig:
    """The DecodeConfig of a benchmark's flags, also refusing what the preset's model refuses
    when decoding starts (a gen_length of part blocks for a bidirectional model): ValueError,
    which the scripts report as a usage error before anything runs."""
    from types import SimpleNamespace

    from credit_compile.generation_setup import check_gen_length

    config = cc.DecodeConfig(**fields)
    check_gen_length(config, SimpleNamespace(block_causal=is_llada2(preset)))
    return config


def bench_model_config(preset: str, **overrides):
    """The model config a benchmark measures: the preset's, with TINY_INIT_STD for tiny ones
    (LLaDA names it `init_std`, the other families `initializer_range`), and `overrides`. Larger
    presets keep theirs: there the per-step figures, not the NFE, are the point."""
    if is_tiny(preset):
        overrides = {"init_std" if preset in PRESETS else "initializer_range": TINY_INIT_STD,
                     **overrides}
    return get_config(preset, **overrides)


def init_std_of(config) -> float:
    """The std of a config's random weights, whichever family names it."""
    return float(config.init_std if isinstance(config, LLaDAConfig) else config.initializer_range)


def bench_dtype(preset: str) -> torch.dtype:
    """float32 for the CPU-sized tiny presets, bf16 at real shapes."""
    return torch.float32 if is_tiny(preset) else torch.bfloat16


def bench_model(preset: str, device, **overrides) -> torch.nn.Module:
    """The random model a benchmark measures (seed 0); `overrides` change its config."""
    return build_model(bench_model_config(preset, **overrides), dtype=bench_dtype(preset),
                       device=device, seed=0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or less would silently mean "the default" or crash)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value
