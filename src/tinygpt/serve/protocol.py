"""OpenAI's wire format: request bodies checked into typed requests, errors in its JSON shape,
and the response and stream-chunk objects.

The checks are written out here rather than left to pydantic models, because a client must
get OpenAI's error object (``{"error": {"message", "type", "param", "code"}}``, status 400)
naming the one parameter at fault, not a validation dump.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..generation.sampling import Sampling


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's flags)."""
    max_tokens: int = 512            # the cap on max_tokens (and its default for chat)
    max_prompt_tokens: int | None = None   # None: the model's context
    max_n: int = 8
    max_stops: int = 4


@dataclass
class GenerationRequest:
    """A checked /v1/completions or /v1/chat/completions request."""
    model: str
    prompt: str | None                   # completions: the text (chat: None, see messages)
    messages: list[dict] | None          # chat: the conversation
    max_tokens: int
    n: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    seed: int | None
    temperature: float
    top_p: float | None
    top_k: int | None
    min_p: float | None
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float

    def sampling(self, index: int, stop_ids: tuple[int, ...]) -> Sampling:
        """Choice ``index``'s decoding settings: its own generator, seeded ``seed + index``."""
        return Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                        repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
                        presence_penalty=self.presence_penalty, greedy=self.temperature == 0,
                        max_new_tokens=self.max_tokens, stop_ids=stop_ids,
                        seed=None if self.seed is None else self.seed + index)


def _number(body: dict, name: str, default: float | None, low: float, high: float, *,
            integer: bool = False, low_open: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", param=name)
    if value < low or value > high or (low_open and value == low):
        side = f"above {low}" if low_open else f"at least {low}"
        raise ApiError(400, f"{name} must be {side} and at most {high}, got {value}", param=name)
    return value


UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions", "logit_bias")


def parse_request(body: Any, *, chat: bool, limits: Limits) -> GenerationRequest:
    """``body`` (parsed JSON) as a GenerationRequest, or ApiError(400) naming the parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required: one of the names GET /v1/models lists", param="model")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0, [], {}):
            raise ApiError(400, f"{name} is not supported by this server", param=name)
    prompt = messages = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant") for m in messages):
            raise ApiError(400, "messages must be a non-empty list of {role: system|user|assistant, content: text}",
                           param="messages")
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (one prompt per request here)", param="prompt")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default = limits.max_tokens if chat else min(16, limits.max_tokens)   # OpenAI's completions default is 16
    max_tokens = _number(body, key, default, 1, limits.max_tokens, integer=True)
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None \
        else None
    if stops is None or not all(isinstance(s, str) and s for s in stops) or len(stops) > limits.max_stops:
        raise ApiError(400, f"stop must be a string or a list of at most {limits.max_stops} non-empty strings",
                       param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63 - 1024):
        raise ApiError(400, f"seed must be a non-negative integer, got {seed!r}", param="seed")
    top_k = _number(body, "top_k", None, 0, 1 << 20, integer=True)
    return GenerationRequest(
        model=model, prompt=prompt, messages=messages, max_tokens=max_tokens,
        n=_number(body, "n", 1, 1, limits.max_n, integer=True), stream=stream,
        include_usage=bool(options.get("include_usage", False)), stop=stops, seed=seed,
        temperature=float(_number(body, "temperature", 1.0, 0, 2)),
        top_p=_number(body, "top_p", None, 0, 1, low_open=True),
        top_k=top_k or None,
        min_p=_number(body, "min_p", None, 0, 1),
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2, 2)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2, 2)),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, 0, 10, low_open=True)))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(req: GenerationRequest, rid: str, texts: list[str], finishes: list[str | None],
             prompt_tokens: int, completion_tokens: int, *, chat: bool) -> dict:
    """The whole (non-streamed) response object."""
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f,
                    "logprobs": None} for i, (t, f) in enumerate(zip(texts, finishes))]
    else:
        choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                   for i, (t, f) in enumerate(zip(texts, finishes))]
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
            "system_fingerprint": None}


def chunk(req: GenerationRequest, rid: str, index: int, text: str | None, finish: str | None, *, chat: bool,
          first: bool = False) -> dict:
    """One server-sent-event chunk of a streamed response."""
    if chat:
        delta: dict = {"role": "assistant", "content": text or ""} if first else \
            ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [choice], "system_fingerprint": None}


def usage_chunk(req: GenerationRequest, rid: str, prompt_tokens: int, completion_tokens: int, *, chat: bool) -> dict:
    """The last chunk when stream_options.include_usage: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
