"""Dynamic batching: requests waiting for the model are decoded together in one generate() call.

One worker thread owns the model. When it is free it takes the oldest waiting request and,
after a short gathering window, every other waiting request with the same decoding settings
(the same resolved `DecodeConfig`: strategy, knobs, gen_length), up to `max_batch` prompts; their
prompts are left-padded into one batch, which `generate()` decodes exactly as each prompt alone
(padded batches are exact; `batch_bucket`/`prompt_bucket` keep the compiled shapes few). Each
finished block is split into rows and sent to each request's event loop as text.

A batch runs to its end: rows do not join or leave at block boundaries. A row whose request is
cancelled (client gone, timeout) or finished (end of text, `stop`, `max_tokens`) stops being
read; when no row of the batch is read any more the call is ended at its next host check.
An exception in a batched call is retried request by request, so it fails that request only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .protocol import APIError, Request

log = logging.getLogger("credit_compile.serve")
_INCOMPLETE = "\ufffd"


class _BatchOver(Exception):
    """Raised from a callback: no row of the batch is read any more."""


@dataclass
class Row:
    """One prompt of a request: its tokens so far and the text already sent."""

    job: Job
    index: int
    ids: list[int]
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text sent
    done: bool = False
    reason: str | None = None
    count: int = 0  # completion tokens (up to the cut)

    def feed(self, block: list[int], eos_ids: tuple[int, ...], decode) -> str | None:
        """Adds a block's tokens; returns the text to send, or None when nothing is new."""
        if self.done:
            return None
        self.tokens.extend(block)
        limit = self.job.request.max_tokens
        cut = next((i for i, t in enumerate(self.tokens) if t in eos_ids), None)
        if cut is not None and cut < limit:
            self.done, self.reason = True, "stop"
        elif len(self.tokens) >= limit:
            cut, self.done, self.reason = limit, True, "length"
        kept = self.tokens if cut is None else self.tokens[:cut]
        self.count = len(kept)
        text = decode(kept)
        stops = self.job.request.stop
        if stops:
            hits = [(text.find(s), s) for s in stops if text.find(s) >= 0]
            if hits:
                text = text[:min(hits)[0]]
                self.done, self.reason = True, "stop"
        if not self.done:
            text = text.rstrip(_INCOMPLETE)
            for stop in stops:  # hold back what may begin a stop string
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        text = text[:-n]
                        break
        new = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return new


class Job:
    """A request in the scheduler; events for its handler go through `events` on its loop."""

    def __init__(self, request: Request, config, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.config = config  # the resolved DecodeConfig: requests with equal ones batch
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.rows = [Row(self, i, ids) for i, ids in enumerate(request.prompts)]
        self.cancelled = threading.Event()
        self.finished = False
        self.submitted = time.monotonic()

    @property
    def active(self) -> bool:
        return not (self.finished or self.cancelled.is_set())

    def cancel(self) -> None:
        """The client is gone or timed out: its rows are no longer read."""
        self.cancelled.set()

    def send(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody waits for it
            pass

    def fail(self, error: APIError) -> None:
        if not self.finished:
            self.finished = True
            self.send(("error", error))

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.send(("done", [r.reason or "length" for r in self.rows],
                       [r.count for r in self.rows]))


class Scheduler:
    """The worker thread that batches and decodes requests (see the module's docstring).

    Args:
        model: the OptimizedModel.
        decode: tokens -> text (the tokenizer's decode, end-of-text tokens dropped).
        pad_id: the padding token of left-padded batches.
        eos_ids: the end-of-text tokens that end a row's answer.
        max_batch: prompts decoded together at most.
        max_queue: prompts waiting at most; beyond it `submit` refuses with 503.
        batch_wait: seconds the worker waits for more requests before a batch of one.
        metrics: the server's Metrics, or None.
    """

    def __init__(self, model, decode, pad_id: int, eos_ids: tuple[int, ...], *,
                 max_batch: int = 8, max_queue: int = 64, batch_wait: float = 0.005,
                 metrics=None, tokenizer_lock=None):
        self.model = model
        self.decode = decode
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait = batch_wait
        self.metrics = metrics
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._running: list[Job] = []
        self._batch_seconds = 1.0  # the last batch's, for Retry-After
        self.batches = 0

    # The event loop's side.

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="credit-compile-serve",
                                            daemon=True)
            self._thread.start()

    def submit(self, request: Request, config) -> Job:
        """Queues `request` (from the event loop); APIError(503) when full or closing."""
        job = Job(request, config, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down; retry on another instance",
                               code="shutting_down", headers={"Retry-After": "1"})
            waiting = sum(len(j.rows) for j in self._pending)
            if waiting + len(job.rows) > self.max_queue:
                retry = max(1, round(self._batch_seconds * (waiting / self.max_batch + 1)))
                if self.metrics:
                    self.metrics.rejected.inc()
                raise APIError(503, f"the server is overloaded ({waiting} prompts waiting, at "
                                    f"most {self.max_queue}); retry after {retry} s",
                               code="overloaded", headers={"Retry-After": str(retry)})
            self._pending.append(job)
            self._set_queue_gauge()
            self._cond.notify()
        return job

    def close(self, grace: float = 10.0) -> None:
        """Stops taking requests; waits up to `grace` seconds for the waiting and running ones,
        then cancels the rest (their clients get 503)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=grace)
        with self._cond:
            left = list(self._pending) + list(self._running)
            self._pending.clear()
        for job in left:
            job.cancel()
            job.fail(APIError(503, "the server shut down before this request finished; retry "
                                   "it", code="shutting_down"))
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def queued(self) -> int:
        with self._cond:
            return sum(len(j.rows) for j in self._pending)

    # The worker's side.

    def _set_queue_gauge(self) -> None:
        if self.metrics:
            self.metrics.queue.set(sum(len(j.rows) for j in self._pending))

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting request and those that batch with it; None once closing and no
        request waits."""
        with self._cond:
            while True:
                self._drop_inactive()
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait(timeout=0.5)
                    continue
                # Let concurrent requests arrive, up to a full batch or the window's end.
                deadline = time.monotonic() + self.batch_wait
                while (sum(len(j.rows) for j in self._pending) < self.max_batch
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(timeout=left)
                self._drop_inactive()  # some may have left while it waited
                if not self._pending:
                    continue
                head, batch, rows = self._pending[0], [], 0
                for job in list(self._pending):
                    if job.config == head.config and rows + len(job.rows) <= self.max_batch:
                        batch.append(job)
                        rows += len(job.rows)
                        self._pending.remove(job)
                self._running = batch
                self._set_queue_gauge()
                return batch

    def _drop_inactive(self) -> None:
        """Forgets waiting requests that were cancelled (client gone, timed out)."""
        for job in [j for j in self._pending if not j.active]:
            self._pending.remove(job)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch, isolate=len(batch) > 1)
            except Exception:  # never let the worker die: the server goes on serving
                log.exception("batch failed")
                for job in batch:
                    job.fail(APIError(500, "internal error while decoding this request",
                                      code="internal_error"))
            finally:
                with self._cond:
                    self._running = []

    def _run(self, jobs: list[Job], isolate: bool) -> None:
        rows = [row for job in jobs for row in job.rows]
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row.ids):] = torch.tensor(row.ids)
            mask[i, width - len(row.ids):] = 1
            row.tokens, row.done = [], False  # a retried row restarts; sent text stays sent
        padded = bool((mask == 0).any())

        def live() -> bool:
            return any(job.active for job in jobs)

        def progress(steps: int) -> None:
            if not live():
                raise _BatchOver

        def on_block(block) -> None:
            tokens = block.tokens.tolist()
            for row, row_tokens in zip(rows, tokens, strict=True):
                if not row.job.active or row.done:
                    continue
                try:
                    with self.tokenizer_lock:
                        text = row.feed(row_tokens, self.eos_ids, self.decode)
                except Exception as error:  # this row's text failed: this request fails
                    log.exception("request %s failed", row.job.request.id)
                    row.job.fail(APIError(500, f"internal error while decoding this request's "
                                               f"text: {error!r}", code="internal_error"))
                    continue
                if text:
                    row.job.send(("text", row.index, text))
            for job in jobs:
                if job.active and all(r.done for r in job.rows):
                    job.finish()
            if not live():
                raise _BatchOver

        start = time.perf_counter()
        if self.metrics:
            self.metrics.batch_size.observe(len(rows))
        self.batches += 1
        graphs = _graphs_compiled()
        stats: dict = {}
        try:
            out = self.model.generate(ids, mask if padded else None, progress=progress,
                                      on_block=on_block, **jobs[0].request.overrides)
            stats = out.stats or {}
        except _BatchOver:  # every row finished (or left) before the last block
            out = None
        except Exception as error:
            self._observe(stats, graphs, len(rows), jobs[0].config)
            if isolate:  # which request failed? each alone: the others still get answers
                log.warning("a batch of %d requests failed (%r); decoding them one by one",
                            len(jobs), error)
                for job in jobs:
                    if job.active:
                        self._run([job], isolate=False)
                return
            if isinstance(error, ValueError):  # generate()'s own refusal of this input
                jobs[0].fail(APIError(400, str(error), code="invalid_request"))
                return
            log.exception("request %s failed", jobs[0].request.id)
            jobs[0].fail(APIError(500, f"internal error while decoding this request: {error!r}",
                                  code="internal_error"))
            return
        self._batch_seconds = time.perf_counter() - start
        self._observe(stats, graphs, len(rows), jobs[0].config)
        if out is not None:
            generated = out.generated.tolist()
            for row, row_tokens in zip(rows, generated, strict=True):  # what on_block has not had
                if row.job.active and not row.done:
                    with self.tokenizer_lock:
                        text = row.feed(row_tokens[len(row.tokens):], self.eos_ids, self.decode)
                    row.done = True
                    row.reason = row.reason or "length"
                    if text:
                        row.job.send(("text", row.index, text))
        for job in jobs:
            if job.active:
                job.finish()

    def _observe(self, stats: dict, graphs: int, rows: int, config) -> None:
        if self.metrics:
            self.metrics.observe_call(stats, rows * config.gen_length,
                                      compiled=_graphs_compiled() > graphs)
            self.metrics.calls.inc()  # last: a reader seeing it sees the call's figures


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process (torch's counter): a call that raised it
    compiled, also where it ended early and has no stats (only this thread compiles here)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
