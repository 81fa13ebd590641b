"""The OpenAI request and response formats: bodies read and checked, answers written.

Nothing here imports the web libraries, so it is tested on plain dicts. Every refusal is an
`APIError` carrying OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`)
with the field at fault in `param` and a message naming the fix: bad input is a 400, never a
500 and never a hang.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field

from ..config import READ_BY

# DecodeConfig fields a request may set, as extra body fields (the OpenAI client's
# `extra_body`): the strategy, every option a strategy reads (config.READ_BY; top_p is OpenAI's
# own field) and the options all strategies share. The rest (compile, buckets, dtype, mask and
# end-of-text ids) are the server's.
DECODE_KNOBS = ("strategy", *(name for name in READ_BY if name != "top_p"), "cfg_scale",
                "remasking", "kv_cache", "kv_cache_refresh")
# OpenAI fields this server accepts at their neutral value only (clients send some by default).
NEUTRAL = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": None,
           "top_logprobs": None, "logit_bias": None, "best_of": 1, "echo": False, "suffix": None,
           "parallel_tool_calls": None, "tools": None, "tool_choice": None,
           "response_format": None}
IGNORED = ("user", "metadata", "store", "service_tier", "stream_options", "modalities")


class APIError(Exception):
    """An HTTP error answered with OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str | None = None, code: str | None = None,  # noqa: A002 - OpenAI's name
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ModelInfo:
    """What request checking needs to know of the served model."""

    name: str
    tokenizer: object
    block_length: int
    default_max_tokens: int
    context: int | None  # the model's positions (prompt + generation); None: unbounded
    vocab_size: int | None
    mask_id: int
    eos_ids: tuple[int, ...]
    max_prompts: int  # prompts one request may carry (the server's batch size)
    resolve: object  # callable(**overrides) -> DecodeConfig, raising ValueError
    tokenizer_lock: object = None


@dataclass
class Request:
    """A checked request: token ids per prompt and what to decode them with."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: list[list[int]]
    max_tokens: int
    overrides: dict  # DecodeConfig overrides of this request (gen_length among them)
    stop: tuple[str, ...] = ()
    stream: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON ({error}); send a JSON object "
                          f"with Content-Type: application/json", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body is a JSON {type(body).__name__}, not an object: "
                          f"send an object such as {{\"model\": ..., \"prompt\": ...}}", None,
                          "invalid_json")
    return body


def parse_request(body: dict, kind: str, info: ModelInfo) -> Request:
    """`body` of /v1/completions (kind "completion") or /v1/chat/completions ("chat") checked
    against the served model; APIError(400) names the first field at fault."""
    text_field = "prompt" if kind == "completion" else "messages"
    known = {"model", text_field, "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
             *DECODE_KNOBS, *NEUTRAL, *IGNORED}
    if kind == "chat":
        known.add("max_completion_tokens")
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"unrecognized request argument(s) {unknown}; this server reads "
                          f"{sorted(known - set(IGNORED))}", unknown[0], "unknown_parameter")
    model = body.get("model")
    if model != info.name:
        raise bad_request(f"the model {model!r} is not served here; use model={info.name!r} "
                          f"(GET /v1/models lists it)", "model", "model_not_found")
    for name, neutral in NEUTRAL.items():
        # None-neutral fields are off when empty or false (chat's `logprobs: false`).
        if name in body and body[name] != neutral and not (
                neutral is None and body[name] in (None, False, [], {})):
            raise bad_request(f"{name}={body[name]!r} is not supported by this server; leave it "
                              f"out or use {neutral!r}", name, "unsupported_parameter")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request(f"stream={stream!r}: use true or false", "stream")
    if kind == "completion":
        prompts = _completion_prompts(body.get("prompt"), info)
    else:
        prompts = [_encode(_chat_text(body.get("messages"), info), info, "messages")]
    if len(prompts) > info.max_prompts:
        raise bad_request(f"{len(prompts)} prompts in one request; this server decodes at most "
                          f"{info.max_prompts} together: send at most {info.max_prompts} per "
                          f"request", text_field)
    max_name = "max_tokens"
    max_tokens = body.get("max_tokens")
    if kind == "chat" and max_tokens is None and body.get("max_completion_tokens") is not None:
        max_name, max_tokens = "max_completion_tokens", body["max_completion_tokens"]
    longest = max(len(p) for p in prompts)
    room = None if info.context is None else info.context - longest
    if room is not None and room < info.block_length:
        raise bad_request(f"the prompt is {longest} tokens and the model's context "
                          f"{info.context}: a block of {info.block_length} tokens does not fit "
                          f"after it; shorten it to at most {info.context - info.block_length} "
                          f"tokens", text_field, "context_length_exceeded")
    if max_tokens is None:
        max_tokens = info.default_max_tokens
        if room is not None and max_tokens > room:
            max_tokens = room // info.block_length * info.block_length
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise bad_request(f"{max_name}={max_tokens!r}: use a positive integer", max_name)
    gen_length = math.ceil(max_tokens / info.block_length) * info.block_length
    if room is not None and gen_length > room:
        fits = room // info.block_length * info.block_length
        raise bad_request(
            f"{max_name}={max_tokens} does not fit: the model's context is {info.context} "
            f"tokens, the prompt takes {longest} and the generation is decoded in whole blocks "
            f"of {info.block_length} ({gen_length} tokens); use {max_name} <= {fits}",
            max_name, "context_length_exceeded")
    overrides = {"gen_length": gen_length}
    for name in ("temperature", "top_p", "seed", *DECODE_KNOBS):
        if body.get(name) is not None:
            overrides[name] = body[name]
    if overrides.get("top_p") == 1:  # OpenAI's default: no nucleus filter
        del overrides["top_p"]
    if "seed" in overrides and not _is_int(overrides["seed"]):
        raise bad_request(f"seed={overrides['seed']!r}: use an integer", "seed")
    try:
        config = info.resolve(**overrides)
    except (ValueError, TypeError) as error:
        named = re.match(r"(\w+)=", str(error))
        param = named[1] if named and named[1] in overrides else None
        raise bad_request(str(error), max_name if param == "gen_length" else param) from None
    _check_read(config, overrides)
    return Request(kind=kind, model=model, prompts=prompts, max_tokens=max_tokens,
                   overrides=overrides, stop=_stops(body.get("stop")), stream=stream)


def _check_read(config, overrides: dict) -> None:
    """A knob the request's strategy does not read would be ignored: refused, naming who reads
    it (`generate()` warns instead; an API client sees no warning)."""
    from ..config import readers_of, strategy_reads

    for name in overrides:
        if name in READ_BY and not strategy_reads(config, name):
            raise bad_request(
                f"{name}={overrides[name]!r} is read by strategy {readers_of(name)}; this request "
                f"decodes with strategy={config.strategy!r}, temperature={config.temperature}: "
                f"leave {name} out or choose such a strategy", name, "unsupported_parameter")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and len(stops) <= 4
            and all(isinstance(s, str) and s for s in stops)):
        raise bad_request(f"stop={stop!r}: use a non-empty string or a list of up to 4", "stop")
    return tuple(stops)


def _completion_prompts(prompt, info: ModelInfo) -> list[list[int]]:
    """A string, a list of strings, a list of token ids or a list of such lists."""
    if isinstance(prompt, str):
        return [_encode(prompt, info, "prompt")]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [_encode(p, info, "prompt") for p in prompt]
        if all(_is_int(t) for t in prompt):
            return [_checked_ids(prompt, info)]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [_checked_ids(p, info) for p in prompt]
    raise bad_request(f"prompt={_short(prompt)}: use a non-empty string, a list of strings, a "
                      f"list of token ids or a list of such lists", "prompt")


def _checked_ids(ids: list[int], info: ModelInfo) -> list[int]:
    bad = [t for t in ids if t < 0 or (info.vocab_size is not None and t >= info.vocab_size)
           or t == info.mask_id]
    if bad:
        raise bad_request(f"prompt holds token ids {bad[:5]} that are not the model's input "
                          f"tokens: use ids in [0, {info.vocab_size}) other than the mask token "
                          f"{info.mask_id}", "prompt")
    return list(ids)


def _encode(text: str, info: ModelInfo, param: str) -> list[int]:
    if not text:
        raise bad_request(f"the {param} is empty: give the model text to answer", param)
    try:
        with info.tokenizer_lock:
            ids = info.tokenizer(text, return_tensors=None)["input_ids"]
    except Exception as error:  # the tokenizer's own refusal (characters it does not know)
        raise bad_request(f"the {param} does not tokenize: {error}", param,
                          "invalid_prompt") from None
    if ids and isinstance(ids[0], list):  # a tokenizer that batches a single text
        ids = ids[0]
    if not ids:
        raise bad_request(f"the {param} is no tokens once tokenized: give the model text to "
                          f"answer", param)
    return _checked_ids([int(i) for i in ids], info)


def _chat_text(messages, info: ModelInfo) -> str:
    tokenizer = info.tokenizer
    if not (callable(getattr(tokenizer, "apply_chat_template", None))
            and getattr(tokenizer, "chat_template", None)):
        raise bad_request(
            f"this model's tokenizer ({type(tokenizer).__name__}) has no chat template, so "
            f"/v1/chat/completions cannot format messages: use /v1/completions with the text "
            f"as the prompt, or serve an instruction-tuned checkpoint whose "
            f"tokenizer_config.json has a chat_template", "messages", "no_chat_template")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in messages)):
        raise bad_request(f"messages={_short(messages)}: use a non-empty list of "
                          f"{{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": str}}",
                          "messages")
    try:
        with info.tokenizer_lock:
            return tokenizer.apply_chat_template(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                add_generation_prompt=True, tokenize=False)
    except Exception as error:
        raise bad_request(f"the chat template refused the messages: {error}", "messages") \
            from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Answers.

def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(request: Request, texts: list[str], reasons: list[str], counts: list[int]) -> dict:
    """The whole answer of a request that did not stream."""
    if request.kind == "completion":
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))]
        obj = "text_completion"
    else:
        choices = [{"index": i, "message": {"role": "assistant", "content": text},
                    "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))]
        obj = "chat.completion"
    return {"id": _id(request), "object": obj, "created": request.created,
            "model": request.model, "choices": choices,
            "usage": usage(sum(len(p) for p in request.prompts), sum(counts))}


def chunk(request: Request, index: int, text: str | None, reason: str | None = None,
          first: bool = False) -> dict:
    """One streamed chunk: the text a finished block added to choice `index`."""
    if request.kind == "completion":
        choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        obj = "text_completion"
    else:
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        obj = "chat.completion.chunk"
    return {"id": _id(request), "object": obj, "created": request.created,
            "model": request.model, "choices": [choice]}


def usage_chunk(request: Request, counts: list[int]) -> dict:
    """The last chunk of a stream: no choices, the usage (OpenAI's `include_usage` form, sent
    always)."""
    obj = "text_completion" if request.kind == "completion" else "chat.completion.chunk"
    return {"id": _id(request), "object": obj, "created": request.created,
            "model": request.model, "choices": [],
            "usage": usage(sum(len(p) for p in request.prompts), sum(counts))}


def _id(request: Request) -> str:
    return ("cmpl-" if request.kind == "completion" else "chatcmpl-") + request.id
