"""What the server tests share: a server on 127.0.0.1 at a free port, in a thread, and the model
slowed down where a test needs a request to be in flight."""

from __future__ import annotations

import socket
import threading
import time


class RunningServer:
    """uvicorn serving `app` in a daemon thread on a socket bound to a free port."""

    def __init__(self, app, timeout: float = 30.0):
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the test server did not stop"

    def client(self, **kwargs):
        import openai

        kwargs.setdefault("timeout", 60.0)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", **kwargs)

    def async_client(self, **kwargs):
        import openai

        kwargs.setdefault("timeout", 60.0)
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", **kwargs)


class SlowModel:
    """The optimized model, each host check of a call delayed by `delay` seconds (a request stays
    in flight long enough for a test to cancel it, overload the queue or time out); records how
    each call ended, and fails calls whose batch holds a row starting with `fail_on`."""

    def __init__(self, fast, delay: float = 0.0, fail_on: list[int] | None = None,
                 fail_with: type[Exception] = RuntimeError):
        self.fast = fast
        self.delay = delay
        self.fail_on = fail_on
        self.fail_with = fail_with
        self.ended: list[str] = []
        self.batch_sizes: list[int] = []

    def generate(self, input_ids, attention_mask=None, *, progress=None, **kwargs):
        self.batch_sizes.append(input_ids.shape[0])
        if self.fail_on is not None:
            for row, mask in zip(input_ids.tolist(), (attention_mask if attention_mask is not None
                                                      else input_ids * 0 + 1).tolist(), strict=True):
                real = [t for t, m in zip(row, mask, strict=True) if m]
                if real[:len(self.fail_on)] == self.fail_on:
                    self.ended.append("fault")
                    raise self.fail_with("injected fault")

        def slow(steps):
            time.sleep(self.delay)
            if progress is not None:
                progress(steps)

        try:
            out = self.fast.generate(input_ids, attention_mask, progress=slow, **kwargs)
        except BaseException as error:
            self.ended.append(type(error).__name__)
            raise
        self.ended.append("done")
        return out

    def __getattr__(self, name):
        return getattr(self.fast, name)
