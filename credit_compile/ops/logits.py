"""How every decoder reads a model's block logits: the mask token is never a candidate.

Shared by the credit op's reference and the credit and threshold strategies (the fusion pass
matches the credit strategy's eager chain built from them).
"""

from __future__ import annotations

import torch


def masked_vocab_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float32 logits with the mask token's column at -inf (a fresh tensor, never the input)."""
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    return torch.where(vocab == mask_id, float("-inf"), logits.float())


def top1_and_prob(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v* = argmax (first index on ties) and its softmax probability."""
    top = logits.argmax(-1)
    prob = torch.softmax(logits, -1).gather(-1, top.unsqueeze(-1)).squeeze(-1)
    return top, prob
