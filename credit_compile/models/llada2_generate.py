"""LLaDA2's own `generate()` rules, replayed eagerly on a native `LLaDA2ModelLM` (batch 1, temperature
0): the baseline as the official code runs it, window by window, without a cache.

Written from the rules of the official sampler (tested against its recorded tokens and forward
counts, `tests/test_llada2_decode.py`): blocks aligned to absolute positions from 0 over the
prompt and `gen_length` rounded up to whole blocks (the prompt's tail shares the first denoised
block); `steps` capped at `gen_length // minimal_topk`; per block at most `steps` steps, each a
forward of the window up to the block's end under the block-causal mask; a step commits the
masked positions whose top probability exceeds `threshold`, or, when fewer than the step's count
(`block_length` spread over `steps`), that many of the most confident; decoding stops after the
block in which an end-of-text token appears (`eos_early_stop`: as soon as a committed one has no
mask before it). The mask token competes in the softmax, as in the official code; with
`mask_competes=False` it does not, as in every strategy of this project (the "llada2" strategy
then gives the same tokens).
"""

from __future__ import annotations

import torch

__all__ = ["llada2_generate"]


@torch.no_grad()
def llada2_generate(model, input_ids: torch.Tensor, *, gen_length: int, block_length: int = 32,
                    steps: int = 32, threshold: float = 0.95, eos_early_stop: bool = False,
                    minimal_topk: int = 1, eos_id: int | None = None, mask_id: int | None = None,
                    mask_competes: bool = True) -> tuple[torch.Tensor, int]:
    """Returns (the generated tokens ``[1, n]``, up to and with the first end-of-text token, at
    most `gen_length`; the number of forwards). `eos_id` and `mask_id` default to the model
    config's."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids of shape {tuple(input_ids.shape)}: LLaDA2's generate() "
                         f"decodes one prompt, [1, length]")
    eos_id = model.config.eos_token_id if eos_id is None else eos_id
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    steps = min(steps, gen_length // minimal_topk)
    p = input_ids.shape[1]
    n_blocks = -(-(p + gen_length) // block_length)
    x = torch.full((1, n_blocks * block_length), mask_id, dtype=torch.long, device=input_ids.device)
    x[:, :p] = input_ids
    counts = [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]
    nfe = 0
    for b in range(p // block_length, n_blocks):
        end = (b + 1) * block_length
        block = x[0, end - block_length:end]  # a view: commits land in x
        for step in range(steps):
            active = block == mask_id
            if not active.any():
                break
            nfe += 1
            logits = model(x[:, :end], block_length=block_length).logits[0, -block_length:].float()
            if not mask_competes:
                logits[:, mask_id] = -torch.inf
            conf, tokens = logits.softmax(-1).max(-1)
            conf = torch.where(active, conf, -torch.inf)
            commit = conf > threshold
            if int(commit.sum()) < counts[step]:
                commit = torch.zeros_like(commit)
                commit[conf.topk(min(counts[step], int(active.sum()))).indices] = True
            block[commit] = tokens[commit]
            if eos_early_stop and (tokens[commit] == eos_id).any():
                eos = (x[0] == eos_id).nonzero()  # the canvas's first, the prompt's included
                if len(eos) and (x[0, p:int(eos[0])] != mask_id).all():
                    return x[:, p:int(eos[0]) + 1], nfe
        if (x[0, p:end] == eos_id).any():
            break
    out = x[0, p:p + gen_length]
    eos = (out == eos_id).nonzero()
    return out[:int(eos[0]) + 1 if len(eos) else gen_length][None], nfe
