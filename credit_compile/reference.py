"""Eager reference decoders: the oracle every fast path is checked against.

`generate(model, input_ids, strategy=...)` runs LLaDA's original sampler ("llada"), threshold
parallel decoding ("threshold", Fast-dLLM), Fast-dLLM's factor rule ("factor") or
CreditDecoding ("credit") with the shared
denoising step executed eagerly and a host completion check after every step (with
a KV cache, a block's refreshing first step and its cached others, decided after each).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DecodeConfig
from .decoding.loop import GenerationOutput, run_generation
from .generation_setup import resolve_config, setup_generation
from .runner import EagerStepRunner


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: DecodeConfig | None = None,
    *,
    trace: bool = False,
    progress=None,
    on_block=None,
    **overrides,
) -> GenerationOutput:
    """Decode eagerly. `overrides` are `DecodeConfig` fields (gen_length=..., strategy=...);
    `progress` and `on_block` as in `OptimizedModel.generate`."""
    config = resolve_config(config, overrides, warn=True)
    runner = EagerStepRunner(setup_generation(model, input_ids, attention_mask, config))
    return run_generation(
        runner.step, runner.state, max_steps=runner.setup.max_steps(), sync_every=1,
        trace=trace, progress=progress, on_sync=runner.synced, on_block=on_block,
    )
