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
        prompt_mask: [B, T] bool, True on prompt positions (pads included), for guidance and
            early stop (end-of-text counts in the generated positions only).
        gen_start: where the generated region starts in the returned sequences (the padded
            prompt length), and the canvas column where it starts unless `gen_columns` says
            otherwise.
        block_start: canvas column where block 0 begins: `gen_start`, or with blocks aligned to
            positions from 0 (a block-causal model: LLaDA2) the first column of a block holding
            some row's prompt tail, which then shares block 0 with that row's first masks.
        gen_end: `gen_start + gen_length`; the canvas runs on to the end of the last block,
            decoded and not returned.
        gen_columns: [B, gen_length] int64 canvas columns of each row's generated tokens, or
            None when every row's are `gen_start..gen_end` (blocks aligned to positions from 0
            put a row's prompt where its blocks meet the batch's block columns; host side
            only, never read by the step).
        prompt_ids: [B, gen_start] the prompts as given (padding included), returned as the
            start of `sequences` when `gen_columns` is set; host side only.
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
    gen_columns: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None
    kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def sequences(self) -> torch.Tensor:
        """[output_rows, gen_end - output_start]: the returned rows, prompt then generated
        tokens, a copy."""
        rows, start = self.output_rows, self.output_start
        if self.gen_columns is None:
            return self.x[:rows, start:self.gen_end].clone()
        generated = self.x[:rows].gather(1, self.gen_columns[:rows])
        return torch.cat([self.prompt_ids[:rows, start:], generated], 1)

    def output_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """[B, n] canvas columns -> the columns of `sequences` they are returned at (a
        generated position's; others are meaningless)."""
        if self.gen_columns is None:
            return columns - self.output_start
        return columns - self.gen_columns[:, :1] + self.gen_start - self.output_start

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
    `aligned_blocks`: blocks aligned to positions from 0, as a block-causal model's attention
    is (`aligned_layout`).
    """
    if aligned_blocks:
        return _aligned_state(input_ids, attention_mask, gen_length=gen_length,
                              block_length=block_length, mask_id=mask_id,
                              keep_attention_mask=keep_attention_mask,
                              output_start=output_start, output_rows=output_rows)
    batch, prompt_len = input_ids.shape
    canvas = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long,
                        device=input_ids.device)
    canvas[:, :prompt_len] = input_ids
    prompt_mask = torch.zeros_like(canvas, dtype=torch.bool)
    prompt_mask[:, :prompt_len] = True
    full_mask = None
    if attention_mask is not None and (keep_attention_mask or not bool(attention_mask.all())):
        full_mask = torch.ones_like(canvas)
        full_mask[:, :prompt_len] = attention_mask.long()
    return _state(canvas, full_mask, prompt_mask, gen_start=prompt_len, block_start=prompt_len,
                  gen_length=gen_length, block_length=block_length, mask_id=mask_id,
                  output_start=output_start, output_rows=output_rows)


def aligned_layout(lengths: list[int], prompt_len: int, gen_length: int, block_length: int,
                   any_length: bool) -> tuple[int, int]:
    """(block_start, num_blocks) of a batch whose blocks are aligned to positions from 0.

    A row of `n` real tokens has its last `n % block_length` in the block where decoding begins
    (LLaDA2's rule). Its prompt is placed to end `n % block_length` columns into block 0, which
    starts at `block_start = prompt_len - prompt_len % block_length` for every row, so all rows'
    blocks share the canvas columns whatever their lengths. `num_blocks` covers the longest
    tail plus `gen_length`; `any_length` (a prompt bucket) sizes it for any prompt of at most
    `prompt_len` tokens, so the canvas's shape depends on `prompt_len` alone.
    """
    tails = [min(prompt_len, block_length - 1)] if any_length else \
        [n % block_length for n in lengths]
    num_blocks = -(-(max(tails) + gen_length) // block_length)
    return prompt_len - prompt_len % block_length, num_blocks


def _aligned_state(input_ids, attention_mask, *, gen_length, block_length, mask_id,
                   keep_attention_mask, output_start, output_rows) -> DecodeState:
    """The canvas of `aligned_layout`: row r's prompt of n real tokens ends at column
    `block_start + n % block_length` (moved from the padded input's end, its padding with it),
    then its masks to the end of its last block (`gen_length` plus the rest of that block).
    Columns before the prompt and after a row's last block (where another row needs more)
    are masked out of attention and hold no mask token in the blocks, so nothing decodes them."""
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    lengths = [prompt_len] * batch if attention_mask is None else attention_mask.sum(-1).tolist()
    block_start, num_blocks = aligned_layout(lengths, prompt_len, gen_length, block_length,
                                             keep_attention_mask)
    width = block_start + num_blocks * block_length
    ends = [block_start + n % block_length for n in lengths]  # each row's first generated column
    canvas = torch.full((batch, width), mask_id, dtype=torch.long, device=device)
    full_mask = torch.ones_like(canvas)
    prompt_mask = torch.zeros_like(canvas, dtype=torch.bool)
    given = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    filler = 1 if mask_id == 0 else 0  # any id but the mask: never decoded, never seen
    for row, end in enumerate(ends):
        kept = min(end, prompt_len)  # the input's last columns, padding with them
        canvas[row, end - kept:end] = input_ids[row, prompt_len - kept:]
        full_mask[row, :end - kept] = 0
        full_mask[row, end - kept:end] = given[row, prompt_len - kept:]
        prompt_mask[row, :end] = True
        last = block_start + -(-(end - block_start + gen_length) // block_length) * block_length
        canvas[row, last:] = filler
        full_mask[row, last:] = 0
    shifted = any(end != prompt_len for end in ends)
    unmasked = not shifted and bool(full_mask.all())
    state = _state(canvas, None if unmasked and not keep_attention_mask else full_mask,
                   prompt_mask, gen_start=prompt_len, block_start=block_start,
                   gen_length=gen_length, block_length=block_length, mask_id=mask_id,
                   output_start=output_start, output_rows=output_rows)
    if shifted:
        offsets = torch.arange(gen_length, device=device)
        state.gen_columns = torch.tensor(ends, device=device).unsqueeze(1) + offsets
        state.prompt_ids = input_ids.clone()
    return state


def _state(canvas, full_mask, prompt_mask, *, gen_start, block_start, gen_length, block_length,
           mask_id, output_start, output_rows) -> DecodeState:
    batch, device = canvas.shape[0], canvas.device
    position_ids = None if full_mask is None else (full_mask.cumsum(-1) - 1).clamp_min(0)

    def scalar(value, dtype=torch.long):
        return torch.tensor(value, dtype=dtype, device=device)

    return DecodeState(
        x=canvas,
        attention_mask=full_mask,
        position_ids=position_ids,
        prompt_mask=prompt_mask,
        gen_start=gen_start,
        block_start=block_start,
        gen_end=gen_start + gen_length,
        block_length=block_length,
        num_blocks=(canvas.shape[1] - block_start) // block_length,
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
