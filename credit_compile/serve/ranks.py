"""Serving a model sharded across ranks (`credit-compile serve --tensor-parallel N` under torchrun).

Rank 0 serves HTTP. Each generate() call its scheduler makes is first broadcast to the other
ranks, which make the same call: the sharded step's collectives need every rank. A call that
rank 0 ends at a host check (its batch cancelled, or every row finished) ends on every rank: at
each check (`progress`, `on_block`) the ranks all-reduce one flag, so every rank leaves the
call at the same step. A call refused for its input is refused on every rank alike.
"""

from __future__ import annotations

import logging
import threading

from ..distributed import any_rank

log = logging.getLogger("credit_compile.serve")

_STOP = "stop"


class EndedByAnotherRank(Exception):
    """Another rank ended this call at a host check (rank 0's cancellation, say)."""


def _agreed(callback):
    """`callback` (or none) as a host check every rank makes: what it raises on one rank ends
    the call on all of them (rank 0 gets its own exception, the others EndedByAnotherRank)."""

    def check(*args) -> None:
        error = None
        if callback is not None:
            try:
                callback(*args)
            except BaseException as raised:  # noqa: BLE001 - handed on after the ranks agree
                error = raised
        if any_rank(error is not None):
            raise error if error is not None else EndedByAnotherRank()

    return check


def _broadcast(message=None):
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Leader:
    """Rank 0's optimized model as the scheduler calls it: generate() is announced to the other
    ranks (its prompts, mask and options), then made with host checks they share."""

    def __init__(self, fast):
        self.fast = fast
        self._calls = threading.Lock()  # one call's collectives at a time, stop() after them

    def __getattr__(self, name):
        return getattr(self.fast, name)

    def generate(self, input_ids, attention_mask=None, *, progress=None, on_block=None,
                 **overrides):
        with self._calls:
            _broadcast(("generate", input_ids, attention_mask, overrides))
            return self.fast.generate(input_ids, attention_mask, progress=_agreed(progress),
                                      on_block=_agreed(on_block), **overrides)

    def stop(self) -> None:
        """Tell the other ranks that serving is over (their `follow` returns), once a call
        still running has ended."""
        with self._calls:
            _broadcast((_STOP,))


def follow(fast) -> int:
    """The other ranks' serving loop: make each call rank 0 announces, until it stops; the number
    of calls made."""
    calls = 0
    while True:
        message = _broadcast()
        if message[0] == _STOP:
            return calls
        _, input_ids, attention_mask, overrides = message
        calls += 1
        try:
            fast.generate(input_ids, attention_mask, progress=_agreed(None),
                          on_block=_agreed(None), **overrides)
        except EndedByAnotherRank:
            pass
        except Exception:  # noqa: BLE001 - rank 0 meets the same end and answers the client
            log.warning("a call rank 0 announced failed here too", exc_info=True)
