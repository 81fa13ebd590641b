"""The OpenAI-compatible server, through the real `openai` client against a server on 127.0.0.1:
completions, chat, streaming, concurrent requests batched (each equal to its prompt decoded
alone), cancellation, overload, timeouts, faults and bad input."""

from __future__ import annotations

import asyncio
import json

import pytest

for _library in ("starlette", "uvicorn", "prometheus_client", "openai", "httpx"):
    pytest.importorskip(_library)

import httpx  # noqa: E402
import openai  # noqa: E402
from helpers import char_tokenizer_for, use_cheap_backend  # noqa: E402
from serve_helpers import RunningServer, SlowModel  # noqa: E402

import credit_compile as cc  # noqa: E402
from credit_compile.serve.app import ServeOptions, Service  # noqa: E402
from credit_compile.tokenizer import CharTokenizer  # noqa: E402

# What surrounds the step is tested here: it compiles without Inductor's code generation.
pytestmark = pytest.mark.cheap_compile

NAME = "credit-compile-default"
CONFIG = cc.DecodeConfig(gen_length=16, block_length=8, prompt_bucket=16, batch_bucket=4)
PROMPTS = ["0012+0034=", "R1234=", "S4213=", "0999+0001=", "R90817=", "S97531=", "1234+4321=",
           "P4213="]


class ChatCharTokenizer(CharTokenizer):
    """The default model's tokenizer with a chat template: the last user turn, as it is."""

    chat_template = "{{ messages[-1]['content'] }}"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return messages[-1]["content"]


@pytest.fixture(scope="module")
def model():
    from credit_compile.assets import has_default_model, load_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    model, _ = load_default_model()
    return model


@pytest.fixture(scope="module")
def cheap():
    """The conftest's cheap_compile for the module's fixtures (their steps compile in them)."""
    with pytest.MonkeyPatch.context() as patch:
        use_cheap_backend(patch)
        yield


@pytest.fixture(scope="module")
def fast(model, cheap):
    return cc.optimize(model, CONFIG)


@pytest.fixture(scope="module")
def expected(fast):
    """Each prompt decoded alone by the eager reference, without buckets: the answer text."""
    tokenizer = CharTokenizer()
    alone = CONFIG.replace(prompt_bucket=None, batch_bucket=None)
    answers = {}
    for prompt in PROMPTS:
        out = cc.generate_reference(fast.model, tokenizer([prompt])["input_ids"], config=alone)
        answers[prompt] = tokenizer.answer(out.generated[0])
    return answers


def serve(fast, tokenizer=None, **options):
    options.setdefault("model_name", NAME)
    service = Service(fast, tokenizer or ChatCharTokenizer(), ServeOptions(**options))
    return service, RunningServer(service.app())


@pytest.fixture(scope="module")
def server(fast):
    service, running = serve(fast, batch_wait=0.05)
    yield service, running
    running.stop()


def test_completion_answers_with_usage(server, expected):
    _, running = server
    done = running.client().completions.create(model=NAME, prompt="0012+0034=")
    assert done.choices[0].text == expected["0012+0034="] == "00046"
    assert done.choices[0].finish_reason == "stop"  # the model ended its answer
    assert done.object == "text_completion" and done.model == NAME
    assert done.usage.prompt_tokens == 10
    assert done.usage.completion_tokens == 5
    assert done.usage.total_tokens == 15


def test_max_tokens_trims_the_block_and_stop_cuts_the_text(server):
    client = server[1].client()
    done = client.completions.create(model=NAME, prompt="0012+0034=", max_tokens=3)
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("000", "length")
    assert done.usage.completion_tokens == 3
    done = client.completions.create(model=NAME, prompt="0012+0034=", stop=["4"])
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("000", "stop")


def test_several_prompts_in_one_request_are_choices_in_order(server, expected):
    done = server[1].client().completions.create(model=NAME, prompt=PROMPTS[:3])
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.text for c in done.choices] == [expected[p] for p in PROMPTS[:3]]


def test_token_id_prompts_decode_as_their_text(server, expected):
    ids = CharTokenizer().encode("R1234=")
    done = server[1].client().completions.create(model=NAME, prompt=ids)
    assert done.choices[0].text == expected["R1234="]


def test_chat_uses_the_tokenizer_template(server, expected):
    done = server[1].client().chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "S4213="}], logprobs=False, n=1,
        top_p=1)  # neutral values, accepted
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == expected["S4213="]
    assert done.usage.completion_tokens == len(expected["S4213="])


def test_chat_without_a_template_is_a_400_naming_the_fix(server, monkeypatch):
    service, running = server
    monkeypatch.setattr(service.tokenizer, "chat_template", None)
    with pytest.raises(openai.BadRequestError) as raised:
        running.client().chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "S4213="}])
    error = raised.value.body
    assert error["param"] == "messages" and error["code"] == "no_chat_template"
    assert "/v1/completions" in error["message"]


def test_the_plain_char_tokenizer_has_no_chat_template(fast):
    service = Service(fast, CharTokenizer(), ServeOptions(model_name=NAME))
    from credit_compile.serve.protocol import APIError, parse_request

    with pytest.raises(APIError) as raised:
        parse_request({"model": NAME, "messages": [{"role": "user", "content": "R12="}]}, "chat",
                      service.info)
    assert raised.value.status == 400 and raised.value.param == "messages"


def test_every_option_a_strategy_reads_is_a_request_field(fast):
    """config.READ_BY decides which options requests may set: one a strategy reads is never an
    unknown field (where the served strategy does not read it, the 400 says who does)."""
    from credit_compile.config import READ_BY, DecodeConfig
    from credit_compile.serve.protocol import APIError, parse_request

    info = Service(fast, CharTokenizer(), ServeOptions(model_name=NAME)).info
    for name in READ_BY:
        body = {"model": NAME, "prompt": "R12=", name: getattr(DecodeConfig(), name)}
        try:
            parse_request(body, "completion", info)
        except APIError as error:
            assert error.code == "unsupported_parameter" and error.param == name, error.message


def test_streaming_sends_a_chunk_per_block_then_done(server, expected):
    client = server[1].client()
    chunks = list(client.completions.create(model=NAME, prompt="R90817=", stream=True))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    # 16 tokens in 2 blocks of 8: the answer (5 characters) fits the first block, whose chunk
    # carries it whole; the second block holds end-of-text only.
    assert texts == [expected["R90817="]]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    # Over 8 tokens, the text arrives in two chunks, one per block.
    chunks = list(client.completions.create(model=NAME, prompt="R90817=", stream=True,
                                            max_tokens=16, extra_body={"strategy": "llada"}))
    assert 1 <= len([c for c in chunks if c.choices and c.choices[0].text]) <= 2


def test_streaming_ends_with_done_on_the_wire(server):
    running = server[1]
    with httpx.stream("POST", running.url + "/v1/chat/completions", timeout=30, json={
            "model": NAME, "messages": [{"role": "user", "content": "R1234="}],
            "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"] == {"content": "4321", "role": "assistant"}
    assert events[-1]["usage"]["total_tokens"] == 6 + 4


def test_concurrent_requests_are_batched_and_each_equals_its_prompt_alone(fast, expected):
    slow = SlowModel(fast, delay=0.01)
    service, running = serve(slow, batch_wait=0.05, max_queue=64)
    try:
        async def all_of_them():
            client = running.async_client()
            calls = [client.completions.create(model=NAME, prompt=PROMPTS[i % len(PROMPTS)])
                     for i in range(32)]
            return await asyncio.wait_for(asyncio.gather(*calls), timeout=90)

        answers = asyncio.run(all_of_them())
    finally:
        running.stop()
    assert len(answers) == 32
    for i, done in enumerate(answers):
        assert done.choices[0].text == expected[PROMPTS[i % len(PROMPTS)]], i
    assert max(slow.batch_sizes) > 1  # decoded together
    assert sum(slow.batch_sizes) >= 32 and len(slow.batch_sizes) < 32


def test_a_client_that_leaves_a_stream_cancels_its_row(fast):
    slow = SlowModel(fast, delay=0.2)
    service, running = serve(slow)
    try:
        client = running.client()
        stream = client.completions.create(model=NAME, prompt="0012+0034=", stream=True,
                                           extra_body={"strategy": "llada"})
        next(iter(stream))  # the first block's chunk
        stream.close()
        _wait_until(lambda: slow.ended, 30)
        # The next request is served as usual.
        done = client.completions.create(model=NAME, prompt="R1234=")
    finally:
        running.stop()
    assert slow.ended[0] == "_BatchOver"  # ended at a host check, not decoded to its end
    assert done.choices[0].text == "4321"


def test_a_client_that_gives_up_waiting_cancels_its_row(fast):
    slow = SlowModel(fast, delay=0.2)
    service, running = serve(slow)
    try:
        with pytest.raises(openai.APITimeoutError):
            running.client(timeout=0.5).completions.create(model=NAME, prompt="0012+0034=",
                                                          extra_body={"strategy": "llada"})
        _wait_until(lambda: slow.ended, 30)
    finally:
        running.stop()
    assert slow.ended == ["_BatchOver"]


def test_a_request_past_the_timeout_gets_504(fast):
    slow = SlowModel(fast, delay=0.2)
    service, running = serve(slow, request_timeout=0.3)
    try:
        with pytest.raises(openai.APIStatusError) as raised:
            running.client().completions.create(model=NAME, prompt="0012+0034=",
                                                extra_body={"strategy": "llada"})
        _wait_until(lambda: slow.ended, 30)
    finally:
        running.stop()
    assert raised.value.status_code == 504 and raised.value.body["code"] == "timeout"
    assert slow.ended == ["_BatchOver"]


def test_overload_is_a_503_with_retry_after_and_the_others_are_answered(fast, expected):
    slow = SlowModel(fast, delay=0.05)
    service, running = serve(slow, max_batch=1, max_queue=1)
    try:
        async def burst():
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                calls = [client.post("/v1/completions", json={"model": NAME, "prompt": p})
                         for p in PROMPTS[:6]]
                return await asyncio.wait_for(asyncio.gather(*calls), timeout=90)

        responses = asyncio.run(burst())
        metrics = httpx.get(running.url + "/metrics", timeout=10).text
    finally:
        running.stop()
    refused = [r for r in responses if r.status_code == 503]
    answered = [(p, r) for p, r in zip(PROMPTS[:6], responses, strict=True) if r.status_code == 200]
    assert refused and answered and len(refused) + len(answered) == 6
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "overloaded"
    for prompt, response in answered:
        assert response.json()["choices"][0]["text"] == expected[prompt]
    assert f"credit_compile_overloaded_total {float(len(refused))}" in metrics


def test_an_exception_in_one_request_fails_that_request_only(fast, expected):
    bad = CharTokenizer().encode("0999+0001=")
    slow = SlowModel(fast, fail_on=bad)
    service, running = serve(slow, batch_wait=0.2)
    try:
        async def mixed():
            client = running.async_client()
            calls = [client.completions.create(model=NAME, prompt=p) for p in PROMPTS[:5]]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 90)

        results = asyncio.run(mixed())
        after = running.client().completions.create(model=NAME, prompt="R1234=")
        health = httpx.get(running.url + "/health", timeout=10)
    finally:
        running.stop()
    for prompt, result in zip(PROMPTS[:5], results, strict=True):
        if prompt == "0999+0001=":
            assert isinstance(result, openai.InternalServerError)
            assert result.body["code"] == "internal_error"
        else:
            assert result.choices[0].text == expected[prompt], prompt
    assert after.choices[0].text == "4321" and health.json()["status"] == "ok"


def test_input_that_generate_refuses_is_a_400_not_a_500(fast):
    bad = CharTokenizer().encode("R1234=")
    service, running = serve(SlowModel(fast, fail_on=bad, fail_with=ValueError))
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            running.client().completions.create(model=NAME, prompt="R1234=")
        done = running.client().completions.create(model=NAME, prompt="S4213=")
    finally:
        running.stop()
    assert raised.value.body["code"] == "invalid_request"
    assert done.choices[0].text == "1234"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gpt-4", "prompt": "R12="}, "model"),
    ({"model": NAME, "prompt": "hello"}, "prompt"),
    ({"model": NAME, "prompt": ""}, "prompt"),
    ({"model": NAME, "prompt": [31, 1]}, "prompt"),  # the mask token
    ({"model": NAME, "prompt": [99]}, "prompt"),
    ({"model": NAME, "prompt": {"text": "R12="}}, "prompt"),
    ({"model": NAME, "prompt": "R12=", "max_tokens": 100}, "max_tokens"),
    ({"model": NAME, "prompt": "R12=", "max_tokens": 0}, "max_tokens"),
    ({"model": NAME, "prompt": "R" + "1" * 60 + "="}, "prompt"),
    ({"model": NAME, "prompt": "R12=", "tau": 2}, "tau"),
    ({"model": NAME, "prompt": "R12=", "alpha": -1}, "alpha"),
    ({"model": NAME, "prompt": "R12=", "strategy": "beam"}, "strategy"),
    ({"model": NAME, "prompt": "R12=", "kv_cache": "prefix"}, "kv_cache"),
    ({"model": NAME, "prompt": "R12=", "temperature": 0.7}, "temperature"),
    ({"model": NAME, "prompt": "R12=", "temperature": "hot"}, "temperature"),
    ({"model": NAME, "prompt": "R12=", "seed": 1.5}, "seed"),
    ({"model": NAME, "prompt": "R12=", "top_p": 0.9}, "top_p"),  # greedy: no filter to apply
    ({"model": NAME, "prompt": "R12=", "top_p": 2, "strategy": "llada2", "temperature": 1},
     "top_p"),
    ({"model": NAME, "prompt": "R12=", "top_k": 4, "strategy": "llada2"}, "top_k"),
    ({"model": NAME, "prompt": "R12=", "alpha": 0.5, "strategy": "threshold"}, "alpha"),
    ({"model": NAME, "prompt": "R12=", "dream_alg": "maskgit_plus"}, "dream_alg"),
    ({"model": NAME, "prompt": "R12=", "dream_alg": "origin", "strategy": "dream"}, "dream_alg"),
    ({"model": NAME, "prompt": "R12=", "stop": 3}, "stop"),
    ({"model": NAME, "prompt": "R12=", "n": 2}, "n"),
    ({"model": NAME, "prompt": "R12=", "stream": "yes"}, "stream"),
    ({"model": NAME, "prompt": "R12=", "compile": False}, "compile"),
    ({"model": NAME, "prompt": ["R12="] * 9}, "prompt"),
    ({"model": NAME, "messages": "hi"}, "messages"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(server[1].url + path, json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_dream_model_answers_what_its_reference_decodes(cheap):
    """A model other than LLaDA, served: Dream (logits shifted by one, its own mask and
    end-of-text ids, read from its config) with its own sampler answers each prompt as its eager
    reference decodes it (a character for each ordinary id, so every answer token shows)."""
    from credit_compile.models import presets

    model = presets.build_model(presets.get_config("tiny-dream", initializer_range=0.5), seed=1)
    tokenizer = char_tokenizer_for(model.config)
    config = cc.DecodeConfig(strategy="dream", steps=8, gen_length=8, block_length=8)
    _, running = serve(cc.optimize(model, config), tokenizer)
    try:
        for prompt in ("12+34=", "R321="):
            done = running.client().completions.create(model=NAME, prompt=prompt)
            out = cc.generate_reference(model, tokenizer([prompt])["input_ids"], config=config)
            assert done.choices[0].text == tokenizer.answer(out.generated[0]) != ""
    finally:
        running.stop()


def test_top_p_and_top_k_reach_llada2s_sampler(server, fast):
    """OpenAI's top_p and the extra top_k filter LLaDA2's sampler: each answer is the one
    generate() gives with the same filter and seed (a temperature high enough that the filters
    change the draws)."""
    knobs = dict(strategy="llada2", temperature=20.0, seed=5)
    tokenizer, answers = CharTokenizer(), []
    for extra in ({"top_p": 0.8}, {"top_k": 3}):
        done = server[1].client().completions.create(model=NAME, prompt="R1234=",
                                                     extra_body={**knobs, **extra})
        ids = fast.generate(tokenizer(["R1234="])["input_ids"], **knobs, **extra).generated[0]
        ids = ids.tolist()[:ids.tolist().index(tokenizer.eos_token_id)]  # the answer, as served
        assert done.choices[0].text == tokenizer.decode(ids, skip_special_tokens=True)
        answers.append(done.choices[0].text)
    assert answers[0] != answers[1]


def test_bad_input_through_the_openai_client(server):
    client = server[1].client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="gpt-4", prompt="R12=")
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=NAME, prompt="R12=", extra_body={"tau": 0})
    assert raised.value.body["param"] == "tau" and "(0, 1]" in raised.value.body["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_a_400(server, raw):
    response = httpx.post(server[1].url + "/v1/completions", content=raw, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_an_unknown_route_is_an_openai_error(server):
    response = httpx.get(server[1].url + "/v1/embeddings", timeout=30)
    assert response.status_code in (404, 405)
    assert "/v1/completions" in response.json()["error"]["message"]


def test_models_health_and_metrics(server):
    running = server[1]
    models = running.client().models.list()
    assert [m.id for m in models.data] == [NAME]
    assert httpx.get(running.url + "/health", timeout=10).json()["status"] == "ok"
    metrics = httpx.get(running.url + "/metrics", timeout=10).text
    for name in ("credit_compile_requests_total", "credit_compile_batch_size_bucket",
                 "credit_compile_queued_prompts", "credit_compile_compiles_total"):
        assert name in metrics


def test_shutdown_answers_the_waiting_requests(fast):
    slow = SlowModel(fast, delay=0.05)
    service, running = serve(slow, max_batch=1, shutdown_grace=0.2)

    async def during_shutdown():
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            calls = [asyncio.ensure_future(client.post("/v1/completions", json={
                "model": NAME, "prompt": p, "strategy": "llada"})) for p in PROMPTS[:4]]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(running.stop)
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)

    results = asyncio.run(during_shutdown())
    # Each was answered or refused (503), or its connection closed: none hangs.
    for result in results:
        assert isinstance(result, httpx.HTTPError) or result.status_code in (200, 503)


def _wait_until(condition, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_the_client_example_in_the_docs_prints_what_it_says(server, capsys):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "openai.OpenAI(" in b]
    assert "http://127.0.0.1:8000/v1" in code
    exec(compile(code.replace("http://127.0.0.1:8000", server[1].url), "docs/serving.md", "exec"),
         {"__name__": "serving_client_example"})
    promised = re.findall(r"# (.+)$", "\n".join(line for line in code.splitlines()
                                               if line.startswith("print(")), re.M)
    assert capsys.readouterr().out.splitlines() == promised


def _row(max_tokens=16, stop=()):
    from credit_compile.serve.protocol import Request
    from credit_compile.serve.scheduler import Job, Row

    request = Request(kind="completion", model=NAME, prompts=[[1]], max_tokens=max_tokens,
                      overrides={}, stop=tuple(stop))
    job = Job.__new__(Job)  # no event loop needed to read a row's text
    job.request = request
    return Row(job, 0, [1])


def test_a_row_holds_back_what_may_begin_a_stop_string_until_the_next_block():
    tokenizer = CharTokenizer()
    row = _row(stop=["34"])
    ids = tokenizer.encode
    assert row.feed(ids("0123"), (30,), tokenizer.decode) == "012"  # "3" may begin "34"
    assert row.feed(ids("5678"), (30,), tokenizer.decode) == "35678"
    assert not row.done
    row = _row(stop=["34"])
    row.feed(ids("0123"), (30,), tokenizer.decode)
    assert row.feed(ids("4567"), (30,), tokenizer.decode) == ""
    assert (row.done, row.reason, row.sent) == (True, "stop", 3)


def test_a_row_ends_at_end_of_text_or_max_tokens():
    tokenizer = CharTokenizer()
    row = _row(max_tokens=6)
    assert row.feed(tokenizer.encode("0123") + [30] * 4, (30,), tokenizer.decode) == "0123"
    assert (row.done, row.reason, row.count) == (True, "stop", 4)
    row = _row(max_tokens=6)
    assert row.feed(tokenizer.encode("01234567"), (30,), tokenizer.decode) == "012345"
    assert (row.done, row.reason, row.count) == (True, "length", 6)


def test_a_request_of_a_new_shape_is_counted_as_a_compile(server):
    import re
    import time

    running = server[1]

    def counted(name: str) -> float:
        text = httpx.get(running.url + "/metrics", timeout=10).text
        return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])

    def settled() -> None:
        deadline = time.monotonic() + 30
        while counted("credit_compile_generate_calls_total") < counted(
                "credit_compile_batch_size_count"):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    client = running.client()
    client.completions.create(model=NAME, prompt="R1234=")  # the default shape: compiled
    settled()
    before = counted("credit_compile_compiles_total")
    client.completions.create(model=NAME, prompt="R1234=")
    settled()
    assert counted("credit_compile_compiles_total") == before
    # 24 tokens: a generation length (a step) of its own, compiled on the request path; the
    # call ends at the answer's end of text, before its last block (no timings): still counted.
    done = client.completions.create(model=NAME, prompt="R1234=", max_tokens=24)
    settled()
    assert done.choices[0].text == "4321"
    assert counted("credit_compile_compiles_total") == before + 1
