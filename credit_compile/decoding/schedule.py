"""Which step function the host runs next: the one denoising step, or with a KV cache a block's
refreshing first step and its cached others.

Sync-free by construction: the host learns where a block begins only at its completion checks
(every `sync_every` steps), so a cached step that finds itself at a block's first step changes
nothing (`denoise_step`), and the refresh runs right after the next check.
"""

from __future__ import annotations

from .state import DecodeState


class SingleStep:
    """No KV cache: every step is the same full-canvas step."""

    phases: tuple[str, ...] = ("step",)

    def next_phase(self) -> str:
        return "step"

    def following(self, phase: str) -> str:
        """The phase of the step after one of `phase` when the host does not check in between
        (the next step captured in the same CUDA graph)."""
        return phase

    def synced(self) -> None:
        """Called after each host completion check that found decoding unfinished."""

    def reset(self) -> None:
        """Called when new prompts are loaded."""


class CacheSchedule(SingleStep):
    """A KV cache (`kv_cache` "prompt" or "dual"): "refresh" (the whole canvas, storing every
    layer's keys and values) at each block's first step, "cached" (part of the canvas against
    the stored rest) after it."""

    phases = ("refresh", "cached")

    def __init__(self, state: DecodeState):
        self.state = state
        self.reset()

    def next_phase(self) -> str:
        phase = "refresh" if self._refresh_due else "cached"
        self._refresh_due = False
        return phase

    def following(self, phase: str) -> str:
        return "cached"

    def synced(self) -> None:
        # A read of the device after the loop's own (`done`), so the queue is already drained.
        self._refresh_due = bool(self.state.step_in_block == 0)

    def reset(self) -> None:
        self._refresh_due = True


def make_schedule(kv_cache: str, state: DecodeState) -> SingleStep:
    return SingleStep() if kv_cache == "none" else CacheSchedule(state)
