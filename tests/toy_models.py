"""Small deterministic models for decoder tests (seconds on CPU, no weights to download)."""

from __future__ import annotations

import torch
from torch import nn


class ScriptedModel(nn.Module):
    """Returns the next scripted [T, V] logits on each call (hand-computed cases).

    The script is indexed by call count, the same logits for every row.
    """

    def __init__(self, script: list[torch.Tensor], mask_id: int):
        super().__init__()
        self.script = script
        self.calls = 0
        self.config = type("Cfg", (), {"mask_token_id": mask_id, "vocab_size": script[0].shape[-1]})()

    def forward(self, input_ids, attention_mask=None):
        logits = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return logits.unsqueeze(0).expand(input_ids.shape[0], -1, -1).clone()


class ContextMixModel(nn.Module):
    """logits[b, t] = W[x[b,t]] + P[pos] + mean of U[x] over attended tokens, times a sharpness.

    Depends on every token (so commits change later logits), honours left padding through the
    attention mask (positions counted over real tokens), and is cheap.
    """

    def __init__(self, vocab_size: int = 40, mask_id: int = 39, max_len: int = 256,
                 sharpness: float = 3.0, seed: int = 0, eos_id: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.token = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))
        self.context = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))
        self.position = nn.Parameter(torch.randn(max_len, vocab_size, generator=g))
        self.sharpness = sharpness
        self.config = type("Cfg", (), {
            "mask_token_id": mask_id, "vocab_size": vocab_size, "max_position_embeddings": max_len,
            "eos_token_id": eos_id,
        })()

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        weights = attention_mask.float()
        positions = position_ids
        if positions is None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        ctx = (self.context[input_ids] * weights[..., None]).sum(1, keepdim=True)
        ctx = ctx / weights.sum(-1)[:, None, None]
        logits = self.token[input_ids] + self.position[positions] + ctx
        return logits * self.sharpness


def layered_model(layers: int, seed: int = 0, preset: str = "tiny"):
    """The project's LLaDA model at a preset's shapes with `layers` layers, drawn with init_std
    0.5: confident enough that decoding commits about one token per step (at the presets' 0.02
    every confidence ties and whole blocks commit at once)."""
    from credit_compile.models import build_model
    from credit_compile.models.presets import get_config

    return build_model(get_config(preset, n_layers=layers, init_std=0.5), seed=seed)


def token_prompts(batch: int, length: int, seed: int = 0, padded: bool = True):
    """`batch` random prompts of ordinary tokens (ids below 120) and, when `padded` and there are
    two rows or more, an attention mask left-padding the second row by half its length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 120, (batch, length), generator=g)
    mask = None
    if padded and batch > 1:
        mask = torch.ones_like(ids)
        mask[1, :length // 2] = 0
    return ids, mask


def make_prompts(batch, length, seed, padded):
    """`batch` random prompts of ids below 30; with `padded`, every row but the first left-padded
    by a random amount (its mask returned), else no mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (batch, length), generator=g)
    if not padded:
        return ids, None
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        pad = int(torch.randint(0, length, (1,), generator=g))
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask
