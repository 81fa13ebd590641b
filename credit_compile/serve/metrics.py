"""The server's Prometheus metrics, in a registry of its own (two servers in one process, as in
the tests, do not collide in the global one)."""

from __future__ import annotations


class Metrics:
    """Counters, gauges and histograms served at GET /metrics."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("credit_compile_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("credit_compile_request_seconds",
                                 "seconds from a request's arrival to its last byte",
                                 ["endpoint"], registry=r,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.queue = Gauge("credit_compile_queued_prompts", "prompts waiting for the model",
                           registry=r)
        self.rejected = Counter("credit_compile_overloaded", "requests refused with 503 (queue "
                                "full)", registry=r)
        self.batch_size = Histogram("credit_compile_batch_size", "prompts per generate() call",
                                    registry=r, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.calls = Counter("credit_compile_generate_calls", "generate() calls ended (answers "
                             "go out as their rows finish, before the call ends: the figures "
                             "of a call are in once this counts it)", registry=r)
        self.tokens = Counter("credit_compile_generated_tokens",
                              "canvas tokens of the calls (prompts x gen_length; a call "
                              "ends early once no row is read)", registry=r)
        self.compiles = Counter("credit_compile_compiles",
                                "generate() calls that compiled a step (a shape not "
                                "precompiled; a call ended early by cancellation is not "
                                "counted)", registry=r)
        self.compile_seconds = Counter("credit_compile_compile_seconds",
                                       "seconds spent compiling on the request path (calls that ran to "
                                       "their last block: one ended early has no timings)",
                                       registry=r)
        self.eager_calls = Counter("credit_compile_eager_calls",
                                   "generate() calls whose step ran eagerly (a shape that did "
                                   "not compile, on_compile_error='eager')", registry=r)

    def observe_call(self, stats: dict, tokens: int, compiled: bool = False) -> None:
        self.tokens.inc(tokens)
        if compiled or stats.get("compile_seconds"):
            self.compiles.inc()
        self.compile_seconds.inc(stats.get("compile_seconds") or 0.0)
        if stats.get("runner") == "eager":
            self.eager_calls.inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
