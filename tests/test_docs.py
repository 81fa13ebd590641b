"""The code in the docs runs, and does what the text around it says."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
import torch

import credit_compile as cc

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S))


@pytest.fixture(scope="module")
def serving():
    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    namespace: dict = {"__name__": "serving_example"}
    exec(compile(python_blocks("serving.md"), "docs/serving.md", "exec"), namespace)
    return namespace


def test_the_serving_example_streams_the_answers_it_documents(serving, capsys):
    asyncio.run(serving["main"]())
    assert capsys.readouterr().out.splitlines() == ["['00046', '1234']", "['', '']"]
    assert serving["fast"].last_stats["compile_seconds"] == 0.0  # precompiled at start-up
    assert serving["fast"].cached_steps == 1


def test_a_cancelled_request_ends_and_the_next_one_decodes(serving):
    fast, tokenizer = serving["fast"], serving["tokenizer"]
    cancelled, sent = threading.Event(), []
    cancelled.set()
    with pytest.raises(serving["Cancelled"]):
        serving["decode"](["0012+0034="], sent.append, cancelled)
    assert sent == []  # it ended at the first check, before a block was final
    out = serving["decode"](["0012+0034="], sent.append, threading.Event())
    batch = tokenizer(["0012+0034="])
    ref = cc.generate_reference(fast.model, batch["input_ids"], batch["attention_mask"],
                                config=fast.resolved_config())
    assert torch.equal(out.sequences, ref.sequences)
    assert sent == [["00046"], [""]]


def test_a_consumer_that_stops_early_leaves_the_model_serving(serving):
    async def first_piece_only():
        stream = serving["answer"](["S4213="])
        first = await anext(stream)
        await stream.aclose()  # the client went away
        return first

    assert asyncio.run(first_piece_only()) == ["1234"]
    out = asyncio.run(_collect(serving["answer"](["0012+0034="])))
    assert out == [["00046"], [""]]


async def _collect(stream):
    return [texts async for texts in stream]
