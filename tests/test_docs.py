"""The code in the docs runs, and does what the text around it says."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
import torch
from helpers import use_cheap_backend

import credit_compile as cc

# The examples run as users run them; Inductor's code is proven equal elsewhere.
pytestmark = pytest.mark.cheap_compile

DOCS = Path(__file__).resolve().parent.parent / "docs"
RUN_MAIN = "asyncio.run(main())"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


class RecordedEvents:
    """threading as the example sees it, keeping every Event it makes."""

    def __init__(self):
        self.events: list[threading.Event] = []

    def Event(self):  # noqa: N802 - threading's name
        event = threading.Event()
        self.events.append(event)
        return event

    def __getattr__(self, name):
        return getattr(threading, name)


@pytest.fixture(scope="module")
def serving():
    """The example's definitions and start-up (precompile), without its request."""
    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    # The page's in-process example (the server's client example runs in tests/serve/test_app.py).
    (code,) = [b.rstrip() for b in python_blocks(DOCS / "serving.md")
               if b.rstrip().endswith(RUN_MAIN)]
    namespace: dict = {"__name__": "serving_example"}
    with pytest.MonkeyPatch.context() as patch:  # the module's cheap backend, for its start-up too
        use_cheap_backend(patch)
        exec(compile(code[:-len(RUN_MAIN)], "docs/serving.md", "exec"), namespace)
        namespace["threading"] = RecordedEvents()
        yield namespace


def test_the_readme_example_on_the_shipped_model_prints_its_answers(capsys):
    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    readme = DOCS.parent / "README.md"
    (code,) = [b for b in python_blocks(readme) if "load_default_model()" in b]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert printed.startswith("['00046', '1234'] "), printed


def test_the_serving_example_streams_the_answers_it_documents(serving, capsys):
    asyncio.run(serving["main"]())  # the example's request: the first after start-up
    assert capsys.readouterr().out.splitlines() == ["['00046', '1234']", "['', '']"]
    assert serving["fast"].last_stats["compile_seconds"] == 0.0  # precompiled at start-up
    assert serving["fast"].cached_steps == 1


def test_a_cancelled_request_ends_and_the_next_one_decodes(serving):
    fast, tokenizer = serving["fast"], serving["tokenizer"]
    cancelled, sent = threading.Event(), []
    cancelled.set()
    with pytest.raises(serving["Cancelled"]):
        serving["decode"](["0012+0034="], sent.append, cancelled)
    assert sent == []  # it ended before generate()
    out = serving["decode"](["0012+0034="], sent.append, threading.Event())
    batch = tokenizer(["0012+0034="])
    ref = cc.generate_reference(fast.model, batch["input_ids"], batch["attention_mask"],
                                config=fast.resolved_config())
    assert torch.equal(out.sequences, ref.sequences)
    assert sent == [["00046"], [""]]
    assert fast.last_stats["compile_seconds"] == 0.0  # whichever test's request came first


def test_a_consumer_that_stops_early_cancels_its_request(serving):
    async def first_piece_only():
        stream = serving["answer"](["S4213="])
        first = await anext(stream)
        await stream.aclose()  # the client went away
        return first

    assert asyncio.run(first_piece_only()) == ["1234"]
    assert serving["threading"].events[-1].is_set()
    # The model serves the next request.
    out = asyncio.run(_collect(serving["answer"](["0012+0034="])))
    assert out == [["00046"], [""]]
    assert serving["fast"].last_stats["compile_seconds"] == 0.0


async def _collect(stream):
    return [texts async for texts in stream]


class MaskInPrompt:
    """The tokenizer, but the first prompt's last token is the mask token, which generate()
    refuses."""

    def __init__(self, tokenizer, mask_id):
        self.tokenizer, self.mask_id = tokenizer, mask_id

    def __call__(self, prompts, **kwargs):
        batch = self.tokenizer(prompts, **kwargs)
        batch["input_ids"][0, -1] = self.mask_id
        return batch

    def decode(self, ids, **kwargs):
        return self.tokenizer.decode(ids, **kwargs)


def test_a_failed_call_reaches_the_consumer(serving):
    tokenizer = serving["tokenizer"]
    serving["tokenizer"] = MaskInPrompt(tokenizer, serving["fast"].resolved_config().mask_id)
    try:
        with pytest.raises(ValueError, match="mask token"):
            asyncio.run(_collect(serving["answer"](["0012+0034="])))
    finally:
        serving["tokenizer"] = tokenizer
    assert asyncio.run(_collect(serving["answer"](["S4213="]))) == [["1234"], [""]]


@pytest.mark.slow  # compiles the step: the min-versions stack leaves it out
def test_the_first_hour_python_example_prints_the_answers_it_documents(capsys):
    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    code = "\n".join(python_blocks(DOCS / "first-hour.md"))
    exec(compile(code, "docs/first-hour.md", "exec"), {})
    answers, stats = capsys.readouterr().out.splitlines()
    assert answers == "['00046', '1234']" and stats.startswith("2 {'runner': ")
