"""Which step function the host runs next: the one denoising step, or with a KV cache a block's
refreshing first step and its cached others (with the exact block cache: the prompt's prefill,
each block's entering first step, and its cached others).

Sync-free by construction: the host learns where a block begins only at its completion checks
(every `DecodeConfig.host_sync_every` steps), so a cached step that finds itself at a block's
first step changes nothing (`denoise_step`), and the refresh runs right after the next check.
"""

from __future__ import annotations

from ..config import DecodeConfig
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

    def use_refresh_every(self, refresh_every: int | None) -> None:
        """A call's `kv_cache_refresh`: calls differing only in it share a compiled step."""

    def reset(self) -> None:
        """Called when new prompts are loaded."""


class CacheSchedule(SingleStep):
    """A KV cache (`kv_cache` "prompt" or "dual"): "refresh" (the whole canvas, storing every
    layer's keys and values) at each block's first step, and with `refresh_every` at its steps
    k, 2k, ...; "cached" (part of the canvas against the stored rest) at the others.

    The host checks every gcd(sync_every, k) steps (`DecodeConfig.host_sync_every`), and a
    block's first step always follows a check (the cached steps before it are idle), so within
    a block the checks fall on multiples of that and every refresh opens a window."""

    phases = ("refresh", "cached")

    def __init__(self, state: DecodeState, refresh_every: int | None = None):
        self.state = state
        self.refresh_every = refresh_every
        if refresh_every == 1:  # every step a refresh: no cached step to compile or capture
            self.phases = ("refresh",)
        self.reset()

    def next_phase(self) -> str:
        phase = "refresh" if self._refresh_due or self.refresh_every == 1 else "cached"
        self._refresh_due = False
        return phase

    def following(self, phase: str) -> str:
        return "refresh" if self.refresh_every == 1 else "cached"

    def synced(self) -> None:
        # A read of the device after the loop's own (`done`), so the queue is already drained.
        step = int(self.state.step_in_block)
        self._refresh_due = step == 0 or (
            self.refresh_every is not None and step % self.refresh_every == 0)

    def reset(self) -> None:
        self._refresh_due = True

    def use_refresh_every(self, refresh_every: int | None) -> None:
        # Every interval but 1 runs the same two steps, and the same graphs for one
        # host_sync_every (which the step key holds); 1 runs the refresh alone.
        if (refresh_every == 1) != (self.refresh_every == 1):
            raise ValueError(f"kv_cache_refresh={refresh_every!r} needs a step of its own: this "
                             f"one was built for {self.refresh_every!r}")
        self.refresh_every = refresh_every


class BlockCacheSchedule(CacheSchedule):
    """The exact block cache of a block-causal model (`kv_cache="block"`): "refresh" (the whole
    canvas, storing every layer's keys and values: the prompt's prefill) at a call's first step,
    "enter" (the previous block and this one, writing the previous block's final keys and
    values) at each later block's first step, "cached" (this block alone) at the others.

    A block's first step follows a host check (the cached steps before it are idle), as with
    the approximate caches; "refresh" and "enter" are exact at any step, so only the host's
    choice of the cheaper one depends on where the block begins."""

    phases = ("refresh", "enter", "cached")

    def next_phase(self) -> str:
        phase = "refresh" if self._prefill_due else "enter" if self._refresh_due else "cached"
        self._prefill_due = self._refresh_due = False
        return phase

    def following(self, phase: str) -> str:
        return "cached"

    def synced(self) -> None:
        self._refresh_due = int(self.state.step_in_block) == 0

    def reset(self) -> None:
        self._prefill_due = True
        self._refresh_due = False

    def use_refresh_every(self, refresh_every: int | None) -> None:
        if refresh_every is not None:  # DecodeConfig refuses it: the cache is exact
            raise ValueError(f"kv_cache_refresh={refresh_every!r} with the exact block cache")


def make_schedule(config: DecodeConfig, state: DecodeState) -> SingleStep:
    if config.kv_cache == "none":
        return SingleStep()
    if config.kv_cache == "block":
        return BlockCacheSchedule(state)
    return CacheSchedule(state, config.kv_cache_refresh)
