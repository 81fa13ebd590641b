"""Prompt-length and batch-size buckets: padding so that one compiled step serves many shapes.

The step is compiled (and captured as a CUDA graph) for static shapes, so every new prompt length
would compile anew: 27-52 s for the 8B step on an H100 (docs/performance.md). With
`DecodeConfig.prompt_bucket = k` the prompts are left-padded to the next multiple of k, and every
length in a bucket reuses one compiled step. The added columns are masked out of attention and the
positions count real tokens only, so the tokens generated are those of the unpadded prompt up to
float rounding (attention sums over more, masked, columns; tested equal in float32 on the trained
model).
`DecodeConfig.batch_bucket` does the same for the batch size with copies of the last row.
"""

from __future__ import annotations

import torch

from .adapters import ModelInfo
from .config import DecodeConfig


def bucketed_prompt_length(prompt_length: int, config: DecodeConfig, info: ModelInfo) -> int:
    """The next multiple of `prompt_bucket` at or above `prompt_length`, within the context."""
    bucket = config.prompt_bucket
    if bucket is None:
        return prompt_length
    length = _round_up(prompt_length, bucket)
    if info.max_length is not None:
        # Inputs were checked to fit, so the cap never cuts into the prompt itself.
        length = min(length, info.max_length - config.gen_length)
    return max(length, prompt_length)


def pad_prompts_to_bucket(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: DecodeConfig,
    info: ModelInfo,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Left-pad validated prompts to their bucket.

    Returns (input_ids, attention_mask, added columns). With a bucket the attention mask is always
    returned, even when nothing was added, so every length of a bucket builds the same graph.
    `pad_id` is any id in the vocabulary: the padded columns are masked out.
    """
    if config.prompt_bucket is None:
        return input_ids, attention_mask, 0
    if not info.honours_attention_mask:
        raise ValueError(
            "prompt_bucket pads prompts on the left, and this model ignores attention_mask (the "
            "official LLaDA code does: ML-GSAI/LLaDA issue 90), so padding would change its "
            "output: use prompt_bucket=None, or load the checkpoint with "
            "credit_compile.models.LLaDAModelLM.from_pretrained(path)"
        )
    if not info.takes_position_ids:
        raise ValueError(
            "prompt_bucket pads prompts on the left, and this model's forward takes no "
            "`position_ids`, so it may count positions from the first (padding) column and "
            "decode differently: use prompt_bucket=None, or give its forward a `position_ids` "
            "argument (positions counted over real tokens are passed to it)"
        )
    batch, length = input_ids.shape
    added = bucketed_prompt_length(length, config, info) - length
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if added == 0:
        return input_ids, attention_mask, 0
    pads = input_ids.new_full((batch, added), pad_id)
    return (
        torch.cat([pads, input_ids], dim=1),
        torch.cat([torch.zeros_like(pads), attention_mask], dim=1),
        added,
    )


def pad_batch_to_bucket(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: DecodeConfig,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Pad the batch with copies of its last row to a multiple of `batch_bucket` rows.

    Returns (input_ids, attention_mask, real rows). A copy decodes as the row it copies and so
    finishes with it: it adds no denoising step.
    """
    rows = input_ids.shape[0]
    if config.batch_bucket is None:
        return input_ids, attention_mask, rows
    added = _round_up(rows, config.batch_bucket) - rows
    if added == 0:
        return input_ids, attention_mask, rows

    def with_copies(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t[-1:].expand(added, -1)])

    return (with_copies(input_ids),
            None if attention_mask is None else with_copies(attention_mask), rows)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
