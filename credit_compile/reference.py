"""Eager reference decoders: the oracle every fast path is checked against.

`generate(model, input_ids, strategy=...)` runs LLaDA's original sampler ("llada"), threshold
parallel decoding ("threshold", Fast-dLLM) or CreditDecoding ("credit") with the shared
denoising step executed eagerly and a host completion check after every step.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DecodeConfig
from .decoding.loop import GenerationOutput, run_generation
from .engine import resolve_config, setup_generation


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: DecodeConfig | None = None,
    *,
    trace: bool = False,
    progress=None,
    **overrides,
) -> GenerationOutput:
    """Decode eagerly. `overrides` are `DecodeConfig` fields (gen_length=..., strategy=...)."""
    config = resolve_config(config, overrides)
    setup = setup_generation(model, input_ids, attention_mask, config)
    return run_generation(
        setup.step_function(), setup.state,
        max_steps=setup.strategy.max_steps(), sync_every=1, trace=trace, progress=progress,
    )
