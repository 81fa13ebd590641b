"""Static decoding state: every buffer a denoising step reads or writes, allocated once.

Following gpt-fast, the step never allocates state and never branches on data in Python: the
current block is a 0-dim tensor (`block_index`), so one traced/captured step serves every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeState:
    """Buffers of one `generate()` call.

    Attributes:
        x: [B, T] int64 canvas: the left-padded prompt, then `gen_length` positions that start as
            the mask token and are committed in place.
        attention_mask: [B, T] int64 (1 = real token) or None when no row is padded (kept
            whenever `prompt_bucket` is set, so every length of a bucket has one graph).
        position_ids: [B, T] int64 positions counted over real tokens, or None without padding
            (kept whenever `prompt_bucket` is set).
        prompt_mask: [B, T] bool, True on prompt positions (pads included), for guidance.
        gen_start: first canvas position of the generated region (the padded prompt length).
        block_start: canvas column where block 0 begins: `gen_start`, or with blocks aligned to
            positions from 0 (a block-causal model: LLaDA2) the start of the block holding the
            prompt's last token, whose tail then shares block 0 with the first masks.
        gen_end: canvas column after the last returned position (`gen_start + gen_length`); the
            canvas runs on to the end of the last block, decoded and not returned.
        block_length, num_blocks, mask_id: static geometry.
        block_offsets: [Lb] int64, `arange(block_length)`.
        block_index: 0-dim int64, the block being decoded (num_blocks once everything is filled).
        step_in_block: 0-dim int64, steps taken in the current block (0 = the block's first step).
        nfe: 0-dim int64, forward evaluations that did decoding work.
        done: 0-dim bool, every block filled.
        last_commit: [B, Lb] bool, positions committed by the last step (for traces).
        last_conf: [B, Lb] float32, confidences of the last step's proposals (for traces).
        last_block: 0-dim int64, the block the last step worked on (for traces).
        buffers: strategy-owned static buffers (credit state, transfer schedule).
        output_start: canvas columns added by prompt bucketing, left out of the returned
            sequences.
        output_rows: the rows returned (the batch before batch bucketing added copies).
        kv_cache: (keys, values) of every layer for `kv_cache` "prompt" or "dual", each
            [n_layers, B, n_kv_heads, T, head_dim], or None. Not in `tensors()`: every block's
            first step overwrites it before any step reads it, so a new call reloads nothing
            into it (a copy per call would cost the size of the cache).
    """

    x: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    prompt_mask: torch.Tensor
    gen_start: int
    block_start: int
    gen_end: int
    block_length: int
    num_blocks: int
    mask_id: int
    block_offsets: torch.Tensor
    block_index: torch.Tensor
    step_in_block: torch.Tensor
    nfe: torch.Tensor
    done: torch.Tensor
    last_commit: torch.Tensor
    last_conf: torch.Tensor
    last_block: torch.Tensor
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    output_start: int = 0
    output_rows: int | None = None
    kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def generated(self) -> torch.Tensor:
        return self.x[:, self.gen_start:]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor buffer by name (for the CUDA-graph runner's static inputs)."""
        out = {
            name: getattr(self, name)
            for name in ("x", "attention_mask", "position_ids", "prompt_mask", "block_offsets",
                         "block_index", "step_in_block", "nfe", "done", "last_commit",
                         "last_conf", "last_block")
            if getattr(self, name) is not None
        }
        out.update({f"buffers.{k}": v for k, v in self.buffers.items()})
        return out


def prepare_state(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    gen_length: int,
    block_length: int,
    mask_id: int,
    keep_attention_mask: bool = False,
    output_start: int = 0,
    output_rows: int | None = None,
    aligned_blocks: bool = False,
) -> DecodeState:
    """Build the canvas and the static buffers for validated, left-padded inputs.

    Without padding the attention mask is dropped (the model's cheaper unmasked path), unless
    `keep_attention_mask`: prompt buckets keep it so that every length of a bucket has one graph.
    `aligned_blocks`: blocks aligned to positions from 0 (`block_start`), as a block-causal
    model's attention is, so every row's prompt must leave the same remainder of a block.
    """
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    tail = 0
    if aligned_blocks:
        tail = prompt_tail_in_block(attention_mask, prompt_len, block_length)
    num_blocks = -(-(tail + gen_length) // block_length)
    block_start = prompt_len - tail
    canvas = torch.full((batch, block_start + num_blocks * block_length), mask_id, dtype=torch.long,
                        device=device)
    canvas[:, :prompt_len] = input_ids
    prompt_mask = torch.zeros_like(canvas, dtype=torch.bool)
    prompt_mask[:, :prompt_len] = True

    padded = attention_mask is not None and (keep_attention_mask or not bool(attention_mask.all()))
    full_mask = position_ids = None
    if padded:
        full_mask = torch.ones_like(canvas)
        full_mask[:, :prompt_len] = attention_mask.long()
        position_ids = (full_mask.cumsum(-1) - 1).clamp_min(0)

    def scalar(value, dtype=torch.long):
        return torch.tensor(value, dtype=dtype, device=device)

    return DecodeState(
        x=canvas,
        attention_mask=full_mask,
        position_ids=position_ids,
        prompt_mask=prompt_mask,
        gen_start=prompt_len,
        block_start=block_start,
        gen_end=prompt_len + gen_length,
        block_length=block_length,
        num_blocks=num_blocks,
        mask_id=mask_id,
        block_offsets=torch.arange(block_length, device=device),
        block_index=scalar(0),
        step_in_block=scalar(0),
        nfe=scalar(0),
        done=scalar(False, torch.bool),
        last_commit=torch.zeros(batch, block_length, dtype=torch.bool, device=device),
        last_conf=torch.zeros(batch, block_length, dtype=torch.float32, device=device),
        last_block=scalar(0),
        output_start=output_start,
        output_rows=batch if output_rows is None else output_rows,
    )


def prompt_tail_in_block(attention_mask: torch.Tensor | None, prompt_len: int,
                         block_length: int) -> int:
    """How many of the prompt's last tokens share the first decoded block when blocks are aligned
    to positions from 0 (LLaDA2's rule): the prompt's real length modulo `block_length`, which
    must be the same in every row: a left-padded row's blocks follow its own positions."""
    if attention_mask is None:
        return prompt_len % block_length
    tails = sorted(set((attention_mask.sum(-1) % block_length).tolist()))
    if len(tails) > 1:
        raise ValueError(
            f"the prompts' lengths leave {tails} tokens in their last block of {block_length}: "
            f"a block-causal model's blocks follow each row's positions from 0, so one batch "
            f"needs prompt lengths that are equal modulo block_length; decode such prompts in "
            f"separate calls (or batch those of equal length modulo {block_length})")
    return tails[0]
