"""The ASGI app (Starlette): OpenAI's routes over the scheduler.

    POST /v1/completions        POST /v1/chat/completions    (stream: Server-Sent Events)
    GET  /v1/models             GET  /health                 GET /metrics (Prometheus)

`Service` holds what the routes share: the optimized model, its tokenizer, the request checks'
view of the model (`protocol.ModelInfo`), the scheduler and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import protocol
from .metrics import Metrics
from .protocol import APIError
from .scheduler import Scheduler
from .warmstart import inductor_cache_counts

log = logging.getLogger("credit_compile.serve")


@dataclass
class ServeOptions:
    """The server's own settings (the decoding ones are the model's DecodeConfig).

    Attributes:
        model_name: the name requests give as `model` (GET /v1/models lists it).
        max_batch: prompts decoded together in one generate() call at most.
        max_queue: prompts waiting at most; a request beyond it gets 503 with Retry-After.
        batch_wait: seconds the worker waits for concurrent requests before decoding fewer than
            `max_batch` prompts (a little latency for a fuller batch).
        request_timeout: seconds a request may take, waiting included; then 504 (its row is no
            longer decoded). 0: no limit.
        shutdown_grace: seconds a shutdown waits for running and waiting requests before
            cancelling them (503).
    """

    model_name: str = "credit-compile"
    max_batch: int = 8
    max_queue: int = 64
    batch_wait: float = 0.005
    request_timeout: float = 300.0
    shutdown_grace: float = 10.0

    def __post_init__(self):
        for name in ("max_batch", "max_queue"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value!r}: use a positive integer")
        for name in ("batch_wait", "request_timeout", "shutdown_grace"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name}={value!r}: use a number of seconds >= 0")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue={self.max_queue} < max_batch={self.max_batch}: a full "
                             f"batch could never wait; use max_queue >= max_batch")


class Service:
    """The served model and what serves it; `app()` is the ASGI app."""

    def __init__(self, fast, tokenizer, options: ServeOptions | None = None):
        from ..adapters import describe_model

        self.fast = fast
        self.tokenizer = tokenizer
        self.options = options or ServeOptions()
        self.metrics = Metrics()
        config = fast.resolved_config()
        described = describe_model(fast.model, config.mask_id, config.eos_token_id)
        eos = config.eos_token_id if config.eos_token_id is not None else described.eos_ids
        eos_ids = tuple(eos) if isinstance(eos, (tuple, list)) else ((eos,) if eos is not None
                                                                     else ())
        if not eos_ids and getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids = (int(tokenizer.eos_token_id),)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
        lock = threading.Lock()  # transformers' fast tokenizers are not thread-safe
        self.info = protocol.ModelInfo(
            name=self.options.model_name, tokenizer=tokenizer, block_length=config.block_length,
            default_max_tokens=config.gen_length, context=described.max_length,
            vocab_size=_vocab_size(fast.model), mask_id=config.mask_id, eos_ids=eos_ids,
            max_prompts=self.options.max_batch, resolve=fast.resolved_config,
            tokenizer_lock=lock)
        self.scheduler = Scheduler(
            fast, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), pad, eos_ids,
            max_batch=self.options.max_batch, max_queue=self.options.max_queue,
            batch_wait=self.options.batch_wait, metrics=self.metrics, tokenizer_lock=lock)
        self.started = time.time()
        self.closing = False
        self.on_shutdown: list = []  # callables run once the scheduler is closed

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.scheduler.start()
            try:
                yield
            finally:
                self.closing = True
                await asyncio.to_thread(self.scheduler.close, self.options.shutdown_grace)
                for hook in self.on_shutdown:
                    await asyncio.to_thread(hook)

        routes = [
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _internal_error}
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)

    # Routes.

    async def _models(self, http: HTTPRequest) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.info.name, "object": "model", "created": int(self.started),
             "owned_by": "credit_compile"}]})

    async def _health(self, http: HTTPRequest) -> Response:
        status = "shutting_down" if self.closing else "ok"
        compiled, cached = inductor_cache_counts()
        return JSONResponse({"status": status, "model": self.info.name,
                             "queued_prompts": self.scheduler.queued(),
                             "batches": self.scheduler.batches,
                             "cached_steps": self.fast.cached_steps,
                             # Inductor's graphs in this process: compiled, or from the cache
                             # (the warm start's artifacts among it)
                             "inductor_graphs_compiled": compiled,
                             "inductor_graphs_from_cache": cached},
                            status_code=503 if self.closing else 200)

    async def _metrics(self, http: HTTPRequest) -> Response:
        data, content_type = self.metrics.render()
        return Response(data, media_type=content_type)

    async def _completions(self, http: HTTPRequest) -> Response:
        return await self._generate(http, "completion")

    async def _chat(self, http: HTTPRequest) -> Response:
        return await self._generate(http, "chat")

    async def _generate(self, http: HTTPRequest, kind: str) -> Response:
        start, endpoint = time.perf_counter(), http.url.path
        try:
            body = protocol.parse_json(await http.body())
            request = protocol.parse_request(body, kind, self.info)
            config = self.fast.resolved_config(**request.overrides)
            job = self.scheduler.submit(request, config)
        except APIError as error:
            self._count(endpoint, error.status, start)
            return _api_error(http, error)
        if request.stream:
            return StreamingResponse(self._stream(job, endpoint, start),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        texts = [""] * len(request.prompts)
        gone = asyncio.ensure_future(_disconnected(http))
        try:
            async with asyncio.timeout(self.options.request_timeout or None):
                while True:
                    waiting = asyncio.ensure_future(job.events.get())
                    await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():  # the client left: its row is no longer decoded
                        waiting.cancel()
                        job.cancel()
                        self._count(endpoint, 499, start)
                        return Response(status_code=499)
                    event = waiting.result()
                    if event[0] == "text":
                        texts[event[1]] += event[2]
                    elif event[0] == "error":
                        raise event[1]
                    else:
                        _, reasons, counts = event
                        break
        except TimeoutError:
            job.cancel()
            error = _timeout(self.options.request_timeout)
            self._count(endpoint, error.status, start)
            return _api_error(http, error)
        except APIError as error:
            self._count(endpoint, error.status, start)
            return _api_error(http, error)
        except asyncio.CancelledError:
            # uvicorn's shutdown cancels the requests still open after its grace: the client
            # gets a 503 to retry elsewhere rather than a 500.
            job.cancel()
            error = APIError(503, "the server shut down before this request finished; retry it",
                             code="shutting_down", headers={"Retry-After": "1"})
            self._count(endpoint, error.status, start)
            return _api_error(http, error)
        finally:
            gone.cancel()
        self._count(endpoint, 200, start)
        return JSONResponse(protocol.response(request, texts, reasons, counts))

    async def _stream(self, job, endpoint: str, start: float):
        """Server-Sent Events: a chunk per choice per finished block, the finish reasons, the
        usage, then [DONE]. An error after the stream began is sent as an error event."""
        request, status = job.request, 200
        first = [True] * len(request.prompts)
        try:
            async with asyncio.timeout(self.options.request_timeout or None):
                while True:
                    event = await job.events.get()
                    if event[0] == "text":
                        _, index, text = event
                        yield _sse(protocol.chunk(request, index, text, first=first[index]))
                        first[index] = False
                    elif event[0] == "error":
                        status = event[1].status
                        yield _sse(event[1].body())
                        break
                    else:
                        _, reasons, counts = event
                        for index, reason in enumerate(reasons):
                            yield _sse(protocol.chunk(request, index, None if request.kind == "chat"
                                                      else "", reason, first=first[index]))
                        yield _sse(protocol.usage_chunk(request, counts))
                        break
            yield b"data: [DONE]\n\n"
        except TimeoutError:
            status = 504
            yield _sse(_timeout(self.options.request_timeout).body())
            yield b"data: [DONE]\n\n"
        except BaseException:  # the client left (the response task is cancelled)
            status = 499
            raise
        finally:
            job.cancel()  # a no-op once finished; otherwise its row is no longer decoded
            self._count(endpoint, status, start)

    def _count(self, endpoint: str, status: int, start: float) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _vocab_size(model) -> int | None:
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    weight = getattr(embeddings, "weight", None)
    return None if weight is None else int(weight.shape[0])


async def _disconnected(http: HTTPRequest) -> None:
    """Returns when the client disconnects (the body is read already)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def _timeout(seconds: float) -> APIError:
    return APIError(504, f"the request took longer than the server's request timeout of "
                         f"{seconds:g} s and was cancelled; ask for fewer tokens or retry when "
                         f"the server is less busy", code="timeout")


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _api_error(http, error: APIError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _http_error(http, error: HTTPException) -> Response:
    status = error.status_code
    message = (f"no route {http.method} {http.url.path}; this server has POST /v1/completions, "
               f"POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics"
               if status in (404, 405) else str(error.detail))
    return _api_error(http, APIError(status, message, code="not_found" if status == 404 else None))


def _internal_error(http, error: Exception) -> Response:
    log.exception("unhandled error", exc_info=error)
    return _api_error(http, APIError(500, f"internal error: {error!r}", code="internal_error"))
