"""The one generation loop: every strategy, every execution mode.

The loop calls a step (eager `denoise_step`, its compiled form, or a CUDA-graph replay) and checks
completion on the host once every `sync_every` steps. Steps taken after completion are no-ops and
are not counted in the NFE, so the NFE is the same whatever `sync_every` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .state import DecodeState


@dataclass
class StepTrace:
    """What one denoising step did (for `trace=True`).

    Attributes:
        block: the block decoded by the step.
        committed: per row, the canvas positions committed (absolute indices).
        confidence: per row, the confidences of those commits.
    """

    block: int
    committed: list[list[int]]
    confidence: list[list[float]]


@dataclass
class FinishedBlock:
    """A block of the output that no later step changes (for `on_block`, streaming).

    Attributes:
        index: the block's index, 0 for the first block after the prompt.
        start: the column of `GenerationOutput.sequences` where the block begins.
        tokens: [B, block_length] the block's tokens, a copy (fewer columns where the block
            begins with the prompt's tail or runs past gen_length: blocks aligned to positions
            from 0, as LLaDA2 decodes).
        last: whether it is the generation's last block (a LLaDA2 batch whose prompts reach
            into its first block decodes one block more than `DecodeConfig.num_blocks`).
    """

    index: int
    start: int
    tokens: torch.Tensor
    last: bool = False


@dataclass
class GenerationOutput:
    """Result of `generate()`.

    Attributes:
        sequences: [B, T] prompt (as given, padding included) followed by the generated tokens.
        nfe: number of forward evaluations that did decoding work.
        prompt_length: T - gen_length, where the generated region starts.
        trace: one `StepTrace` per counted step, when asked for.
        steps_run: steps executed, counting no-op steps after completion.
        stats: the optimized model's timings of this call (runner, compile and decode seconds);
            None from the eager reference.
    """

    sequences: torch.Tensor
    nfe: int
    prompt_length: int
    trace: list[StepTrace] | None = None
    steps_run: int = 0
    stats: dict | None = None

    @property
    def generated(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]


def run_generation(
    step: Callable[[], None],
    state: DecodeState,
    *,
    max_steps: int,
    sync_every: int = 1,
    trace: bool = False,
    progress: Callable[[int], None] | None = None,
    steps_per_call: int = 1,
    on_sync: Callable[[], None] | None = None,
    on_block: Callable[[FinishedBlock], None] | None = None,
) -> GenerationOutput:
    """Call `step()` until `state.done`, checking on the host every `sync_every` calls.

    One call runs `steps_per_call` denoising steps (a CUDA graph of several); `progress` and
    `steps_run` count steps. `on_sync` is called after each check that found decoding unfinished
    (a step schedule reading where the next block begins). `on_block` is given each block once
    it is final, in order, at the first check after it (streaming).
    """
    window = sync_every * steps_per_call
    snapshots = [] if trace else None
    steps_run = 0
    streamed = 0
    while True:
        for _ in range(sync_every):
            step()
            steps_run += steps_per_call
            if snapshots is not None:
                snapshots.append((state.last_block.clone(), state.last_commit.clone(),
                                  state.last_conf.clone(), state.nfe.clone()))
        if progress is not None:
            progress(steps_run)
        done = bool(state.done)
        if on_block is not None:
            streamed = _stream_finished_blocks(state, streamed, on_block)
        if done:
            break
        if on_sync is not None:
            on_sync()
        # Idle steps are allowed for: those after completion, and with a KV cache those after a
        # block ends inside a window (its next block's cached steps wait for the refresh).
        if steps_run > max_steps + window * (1 + state.num_blocks):
            raise RuntimeError(
                f"decoding did not finish within {max_steps} steps: no token was committed. "
                f"Non-finite logits do that (NaN confidences pass no threshold): float16 "
                f"overflow? run in bfloat16 or float32. Otherwise it is a bug in the strategy "
                f"(every step must commit at least one masked token)"
            )
    return GenerationOutput(
        sequences=state.sequences(),
        nfe=int(state.nfe),
        prompt_length=state.gen_start - state.output_start,
        trace=None if snapshots is None else _to_trace(snapshots, state),
        steps_run=steps_run,
    )


def _stream_finished_blocks(state: DecodeState, streamed: int,
                            on_block: Callable[[FinishedBlock], None]) -> int:
    """Give `on_block` the blocks before the one being decoded (`block_index`, num_blocks when
    done) not given yet; returns how many have been. They are final: a step writes masked
    positions only, and every block before `block_index` has none left in any row."""
    finished = int(state.block_index)
    for index in range(streamed, finished):
        start, end = _generated_part(state, index)
        columns = start + torch.arange(end - start, device=state.device)
        if state.gen_columns is None:
            tokens = state.x[:state.output_rows, state.gen_start + columns]
        else:
            tokens = state.x[:state.output_rows].gather(
                1, state.gen_columns[:state.output_rows, columns])
        on_block(FinishedBlock(index=index, start=state.gen_start - state.output_start + start,
                               tokens=tokens, last=index == state.num_blocks - 1))
    return max(streamed, finished)


def _generated_part(state: DecodeState, index: int) -> tuple[int, int]:
    """The generated positions (0..gen_length) that block `index` completes in every returned
    row. With blocks aligned to positions from 0 the first block begins with the prompt's tail
    and the last may run past gen_length; where the rows' tails differ, a position is given
    with the block that completes it in the last of them, so a block may give fewer."""
    length = state.gen_end - state.gen_start
    if state.gen_columns is None:
        starts = [state.gen_start]
    else:
        starts = state.gen_columns[:state.output_rows, 0].tolist()

    def done_by(block: int) -> int:  # positions complete in every row once `block` is
        return min(min(max(state.block_start + (block + 1) * state.block_length - s, 0), length)
                   for s in starts)

    return (0 if index == 0 else done_by(index - 1)), done_by(index)


def _to_trace(snapshots, state: DecodeState) -> list[StepTrace]:
    out, previous_nfe = [], 0
    for block, commit, conf, nfe in snapshots:
        if int(nfe) == previous_nfe:
            continue  # a no-op step after completion
        previous_nfe = int(nfe)
        columns = state.block_start + int(block) * state.block_length + state.block_offsets
        where = state.output_columns(columns.expand(state.batch_size, -1))
        committed, confidence = [], []
        for row_commit, row_conf, row_where in zip(commit[:state.output_rows],
                                                   conf[:state.output_rows], where, strict=False):
            idx = row_commit.nonzero().flatten()
            committed.append(row_where[idx].tolist())
            confidence.append(row_conf[idx].tolist())
        out.append(StepTrace(int(block), committed, confidence))
    return out
