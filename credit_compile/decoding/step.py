"""The denoising step: one model forward, one strategy decision, in-place commits.

The same function runs eagerly (the reference), under torch.compile(fullgraph=True) and inside a
CUDA graph. It is sync-free: the current block is the tensor `state.block_index`, completion and
block advance are computed on the device, and a step after completion changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .state import DecodeState
from .strategies import Strategy, is_any_of_sync_free, without_tokens_sync_free

# forward(input_ids, attention_mask, position_ids) -> logits [B, T, V]; a model with a KV cache
# also takes kv_cache=(keys, values) and cache_positions= (see LLaDAModelLM.forward_hidden).
ForwardFn = Callable[..., torch.Tensor]
# None: no KV cache. "refresh": a step of the whole canvas, which stores the cache (a block's
# first step; with the exact block cache, a call's first step: the prompt's prefill). "cached":
# a step running part of the canvas (the `CachedSpan`) against the stored rest. "enter" (the
# block cache only): a block's first step, run on the previous block and this one, which writes
# the previous block's final keys and values as it decodes this one.
CachePhase = Literal["refresh", "enter", "cached"] | None
# What a "cached" step runs: the block's tokens ("dual", Fast-dLLM's DualCache) or the whole
# generated region ("prompt": only the prompt's keys and values are reused); "block" runs the
# block's tokens as "dual" does, on a block-causal model (exact: `DecodeConfig.kv_cache`).
CachedSpan = Literal["dual", "prompt", "block"]


def block_logits(forward: ForwardFn, state: DecodeState, positions: torch.Tensor, cfg_scale: float,
                 cache_phase: CachePhase = None, cached_span: CachedSpan = "dual",
                 shifted_logits: bool = False):
    """Logits of the current block's positions; classifier-free guidance when cfg_scale > 0.

    The block is sliced right after the model's LM head so the block-sliced-LM-head pass can move
    the slice before it. With a KV cache, the "refresh" phase runs the whole canvas and stores its
    keys and values; the "cached" phase runs the block's tokens only ("dual"), or the generated
    region ("prompt", a static span whatever the block), against the stored ones. With
    `shifted_logits` (a forward returning row i-1's output at row i, `ModelInfo.shifted_logits`)
    a cached step also runs the position before its span, whose output its first position reads.
    """
    x, attention_mask, position_ids = state.x, state.attention_mask, state.position_ids
    if cfg_scale != 0:
        unconditional = torch.where(state.prompt_mask, state.mask_id, state.x)

        def twice(t):
            return None if t is None else torch.cat([t, t])

        x = torch.cat([x, unconditional])
        attention_mask, position_ids = twice(attention_mask), twice(position_ids)
    if cache_phase in ("cached", "enter"):
        before = int(shifted_logits)  # the prompt is never empty: position gen_start - 1 is real
        if cached_span == "prompt":
            run = torch.arange(state.gen_start - before, state.x.shape[1], device=positions.device)
        elif cache_phase == "enter":  # the previous block, then this one (never block 0's)
            run = torch.cat([(positions - state.block_length).clamp_min(0), positions])
        else:
            run = torch.cat([positions[:before] - 1, positions])
        logits = forward(
            x.index_select(1, run), attention_mask,
            None if position_ids is None else position_ids.index_select(1, run),
            kv_cache=state.kv_cache, cache_positions=run)
        if cached_span == "prompt":
            logits = logits.index_select(1, positions - state.gen_start + before)
        elif cache_phase == "enter":
            logits = logits[:, state.block_length:]
        elif before:
            logits = logits[:, before:]
    else:
        cache = {} if cache_phase is None else {"kv_cache": state.kv_cache}
        logits = forward(x, attention_mask, position_ids, **cache).index_select(1, positions)
    if cfg_scale == 0:
        return logits
    cond, uncond = logits.chunk(2)
    cond, uncond = cond.float(), uncond.float()
    return uncond + (cfg_scale + 1) * (cond - uncond)


def fill_after_eos_sync_free(gen: torch.Tensor, mask_id: int, eos_ids: tuple[int, ...],
                             in_prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Fill every mask after a row's first end-of-text token (any of `eos_ids`) that has no mask
    before it, with the first of `eos_ids`. `in_prompt` ([B, n] bool) marks prompt tokens, whose
    end-of-text does not count (a row's prompt may reach into the blocks: aligned blocks)."""
    is_eos = is_any_of_sync_free(gen, eos_ids)
    if in_prompt is not None:
        is_eos = is_eos & ~in_prompt
    masks_so_far = (gen == mask_id).long().cumsum(-1)
    settled_eos = is_eos & (masks_so_far == 0)
    after_eos = settled_eos.long().cumsum(-1) > 0
    return torch.where(after_eos & (gen == mask_id), eos_ids[0], gen)


def denoise_step(
    forward: ForwardFn,
    strategy: Strategy,
    state: DecodeState,
    *,
    cfg_scale: float = 0.0,
    eos_ids: tuple[int, ...] | None = None,
    suppress_ids: tuple[int, ...] | None = None,
    cache_phase: CachePhase = None,
    cached_span: CachedSpan = "dual",
    shifted_logits: bool = False,
) -> None:
    """Run one denoising step on `state`, in place. `suppress_ids` are never proposed.

    A "cached" step at a block's first step (`step_in_block == 0`: the block began inside a
    window of unchecked steps) changes nothing, like a step after completion: that block's first
    step must be a "refresh", which the host runs after its next check.
    """
    num_blocks, block_length, mask_id = state.num_blocks, state.block_length, state.mask_id
    active = ~state.done
    if cache_phase == "cached":
        active = active & (state.step_in_block > 0)
    block = state.block_index.clamp(max=num_blocks - 1)
    positions = state.block_start + block * block_length + state.block_offsets

    logits = block_logits(forward, state, positions, cfg_scale, cache_phase, cached_span,
                          shifted_logits)
    if suppress_ids is not None:
        logits = without_tokens_sync_free(logits, suppress_ids)
    current = state.x.index_select(1, positions)
    masked = (current == mask_id) & active
    x0, conf = strategy.propose(logits, masked, state)
    commit = strategy.select(conf, masked, state)
    state.x.index_copy_(1, positions, torch.where(commit, x0, current))

    # The blocks: the generated region, which may begin with the prompts' tails (aligned blocks).
    blocks = state.x[:, state.block_start:]
    if eos_ids is not None:
        blocks.copy_(fill_after_eos_sync_free(blocks, mask_id, eos_ids,
                                              state.prompt_mask[:, state.block_start:]))

    # Where decoding goes next: the first block at or after `start` that still has masks.
    has_masks = (blocks == mask_id).view(blocks.shape[0], num_blocks, block_length).any(-1).any(0)
    block_ids = torch.arange(num_blocks, device=blocks.device)

    def first_masked_block_from(start: torch.Tensor) -> torch.Tensor:
        return torch.where(has_masks & (block_ids >= start), block_ids, num_blocks).amin()

    next_block = strategy.next_block(state, first_masked_block_from)
    if eos_ids is not None:
        # Early stop: a canvas filled up by end-of-text is finished, whatever the strategy's
        # schedule (LLaDA's fixed steps per block would otherwise run forwards with nothing to do).
        next_block = torch.where(has_masks.any(), next_block, num_blocks)
    next_block = torch.where(active, next_block, state.block_index)

    state.last_commit.copy_(commit)
    state.last_conf.copy_(conf)
    state.last_block.copy_(block)
    state.nfe.add_(active.long())
    # An idle step (done, or "cached" at a block's first step) leaves the step count alone.
    steps_here = torch.where(next_block == state.block_index, state.step_in_block + 1, 0)
    state.step_in_block.copy_(torch.where(active, steps_here, state.step_in_block))
    state.block_index.copy_(next_block)
    state.done.copy_(next_block >= num_blocks)
