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
) -> DecodeState:
    """Build the canvas and the static buffers for validated, left-padded inputs.

    Without padding the attention mask is dropped (the model's cheaper unmasked path), unless
    `keep_attention_mask`: prompt buckets keep it so that every length of a bucket has one graph.
    """
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    canvas = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
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
        block_length=block_length,
        num_blocks=gen_length // block_length,
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
