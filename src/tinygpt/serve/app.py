"""The HTTP server: OpenAI's completions and chat completions (streamed as server-sent events),
models, health and Prometheus metrics, over one continuous-batching Engine per model.

    from tinygpt.serve import ServeConfig, create_app, load_models
    app = create_app(load_models(["runs/shakespeare"]), ServeConfig())   # an ASGI app: uvicorn, httpx

Every refusal is OpenAI's error object with a 4xx status: malformed JSON, a body over the
limit, an unknown model, a bad parameter, a prompt too long, a wrong API key, a full queue
(429 with Retry-After). A client that goes away frees its rows at the engine's next step.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``), and Request is imported inside create_app, so FastAPI stays an
# optional dependency that only serving imports.
import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from ..config import opt
from ..data import instruct as ins
from ..errors import TinyGPTError
from ..generation.lm import TinyGPT, start_ids
from .arena import Arena
from .engine import Engine, QueueFull, Row
from .metrics import Metrics
from .protocol import (
    ApiError,
    GenerationRequest,
    Limits,
    chunk,
    new_id,
    parse_request,
    response,
    usage_chunk,
)
from .votes import Votes

STATIC = Path(__file__).parent / "static"   # the pages: plain HTML, CSS and JS, no build step


@dataclass
class ServeConfig:
    host: str = opt("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    port: int = opt(8000, "port to listen on")
    api_key: str | None = opt(None, "require this key as 'Authorization: Bearer KEY' on every /v1 route")
    rows: int = opt(8, "requests decoded together per model (the continuous batch's rows)")
    queue_size: int = opt(64, "requests that may wait for a row per model; more are refused with 429")
    max_request_tokens: int = opt(512, "the most tokens one request may generate (max_tokens' cap, and chat's "
                                       "default)")
    max_prompt_tokens: int | None = opt(None, "the longest prompt in tokens", shown="the model's context")
    max_body_bytes: int = opt(1 << 20, "the largest request body in bytes")
    timeout: float = opt(300.0, "seconds a request may take before it is cancelled (504)")
    prefix_cache_mb: float = opt(256.0, "memory per model for the keys and values of prompts already read, which "
                                        "requests that begin alike reuse (0: off)", metavar="MB")
    prefill_chunk: int = opt(128, "prompt tokens read per decode step: a longer prompt is read in chunks between "
                                  "the running requests' tokens, which otherwise wait for all of it (0: at once)",
                             metavar="TOKENS")
    votes: str | None = opt(None, "keep the arena's blind votes in this SQLite file (created if new); without "
                                  "it the arena is off", metavar="FILE")

    def __post_init__(self) -> None:
        for name in ("port", "rows", "queue_size", "max_request_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise TinyGPTError(f"--timeout must be above 0 seconds, got {self.timeout}")
        if self.prefill_chunk < 0:
            raise TinyGPTError(f"--prefill-chunk must be 0 (off) or a token count, got {self.prefill_chunk}")


@dataclass
class ServedModel:
    """A model under its name, with its engine and chat template (None: completions only, and why)."""
    name: str
    lm: TinyGPT
    template: str | None = None
    no_chat: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    engine: Engine | None = None


def served(name: str, lm: TinyGPT) -> ServedModel:
    """``lm`` under ``name``, with the chat template its fine-tune was trained in (or the default)."""
    try:
        return ServedModel(name, lm, template=ins.run_template(lm.config, None, lm.tokenizer))
    except TinyGPTError as e:
        return ServedModel(name, lm, no_chat=str(e))


def create_app(models: list[ServedModel], cfg: ServeConfig = ServeConfig()):
    """The ASGI app serving ``models``; their engines start with the app and stop with it."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import (
            JSONResponse,
            PlainTextResponse,
            Response,
            StreamingResponse,
        )
    except ImportError:
        raise TinyGPTError("serving needs FastAPI and uvicorn: pip install 'tinygpt[serve]'") from None

    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise TinyGPTError("two models have the same name; give each a different one")
    metrics = Metrics(lambda: {m.name: m.engine for m in models if m.engine is not None})

    @asynccontextmanager
    async def lifespan(app):
        for m in models:
            m.engine = Engine(m.lm, rows=cfg.rows, queue_size=cfg.queue_size, prefix_cache_mb=cfg.prefix_cache_mb,
                              prefill_chunk=cfg.prefill_chunk,
                              on_step=lambda n, s, name=m.name: metrics.step(name, n, s))
        try:
            yield
        finally:   # graceful shutdown: uvicorn has let running requests finish; the rest are cancelled
            for m in models:
                m.engine.close()

    app = FastAPI(title="tinygpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def refused(request: Request, e: ApiError):
        metrics.request(request.url.path, e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, e):
        return JSONResponse(ApiError(404, f"no route {request.method} {request.url.path}").body(), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, e):
        return JSONResponse(ApiError(405, f"{request.url.path} does not take {request.method}").body(),
                            status_code=405)

    def authorize(request: Request) -> None:
        if cfg.api_key is not None and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                           kind="invalid_request_error", code="invalid_api_key")

    async def read_json(request: Request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
            raise ApiError(413, f"the request body is over {cfg.max_body_bytes} bytes")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > cfg.max_body_bytes:
                raise ApiError(413, f"the request body is over {cfg.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})") from None

    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def playground():
        return FileResponse(STATIC / "playground.html")

    limits = Limits(max_tokens=cfg.max_request_tokens, max_prompt_tokens=cfg.max_prompt_tokens)
    arena = Arena(models, Votes(cfg.votes)) if cfg.votes else None

    @app.get("/arena")
    async def arena_page():
        return FileResponse(STATIC / "arena.html")

    @app.post("/arena/battle")
    async def battle(request: Request):
        authorize(request)
        if arena is None:
            raise ApiError(400, "the arena is off: start tinygpt serve with --votes FILE to keep votes")
        body = await read_json(request)
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt must be a non-empty string", param="prompt")
        max_tokens = parse_request({"model": "-", "prompt": "", "max_tokens": body.get("max_tokens", 128)},
                                   chat=False, limits=limits).max_tokens
        return await arena.battle(prompt, max_tokens, lambda m, text, sampling: answer(m, text, sampling))

    @app.post("/arena/vote")
    async def vote(request: Request):
        authorize(request)
        if arena is None:
            raise ApiError(400, "the arena is off: start tinygpt serve with --votes FILE to keep votes")
        return arena.vote(await read_json(request))

    async def answer(model: ServedModel, text: str, sampling) -> str:
        """One whole answer, through the model's engine like any request."""
        ids = encode(model, text, "prompt")
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        stops = tuple(ins.stop_strings(model.template, model.lm.tokenizer)) if arena.chat(model) else ()
        row = Row(ids, sampling, stops, 0, events, loop)
        submit(model, [row])
        out = ""
        try:
            while True:
                _, piece, finish = await asyncio.wait_for(events.get(), timeout=cfg.timeout)
                out += piece or ""
                if finish is not None:
                    return out
        except asyncio.TimeoutError:
            raise ApiError(504, f"the answer took over {cfg.timeout:g} s", kind="timeout_error",
                           code="timeout") from None
        finally:
            if row.finish_reason is None:
                model.engine.cancel([row])

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(by_name)}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": m.created,
                                            "owned_by": "tinygpt"} for m in models]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def generate(request: Request, *, chat: bool):
        authorize(request)
        req = parse_request(await read_json(request), chat=chat, limits=limits)
        model = by_name.get(req.model)
        if model is None:
            raise ApiError(404, f"the model {req.model!r} is not served here; GET /v1/models lists: "
                           f"{', '.join(by_name)}", param="model", code="model_not_found")
        ids, stops = prompt_ids(model, req, chat)
        stop_ids = (model.lm.tokenizer.eot_id,) if model.lm.tokenizer.eot_id is not None else ()
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        rows = [Row(ids, req.sampling(i, stop_ids), stops, i, events, loop) for i in range(req.n)]
        submit(model, rows)
        rid = new_id("chatcmpl" if chat else "cmpl")
        deadline = time.monotonic() + cfg.timeout
        if req.stream:
            metrics.request(request.url.path, 200)
            return StreamingResponse(stream(model, req, rid, rows, events, len(ids), deadline, chat),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, finishes = [""] * req.n, [None] * req.n
        try:
            done = 0
            while done < req.n:
                try:
                    index, piece, finish = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        metrics.request(request.url.path, 499)
                        return Response(status_code=499)   # nobody to answer: the rows are freed below
                    if time.monotonic() > deadline:
                        raise ApiError(504, f"the request took over {cfg.timeout:g} s and was cancelled",
                                       kind="timeout_error", code="timeout") from None
                    continue
                texts[index] += piece or ""
                if finish is not None:
                    finishes[index], done = finish, done + 1
        finally:
            if any(r.finish_reason is None for r in rows):
                model.engine.cancel(rows)
        metrics.finished(model.name, rows)
        metrics.request(request.url.path, 200)
        return response(req, rid, texts, finishes, len(ids), sum(r.completion_tokens for r in rows), chat=chat)

    def prompt_ids(model: ServedModel, req: GenerationRequest, chat: bool) -> tuple[list[int], tuple[str, ...]]:
        lm, stops = model.lm, req.stop
        if chat:
            if model.template is None:
                raise ApiError(400, f"the model {model.name!r} cannot chat ({model.no_chat}); use /v1/completions",
                               param="model")
            try:
                text = ins.chat_prompt(model.template, req.messages, lm.tokenizer)
            except TinyGPTError as e:
                raise ApiError(400, str(e), param="messages") from None
            stops = stops + tuple(s for s in ins.stop_strings(model.template, lm.tokenizer) if s not in stops)
        else:
            text = req.prompt
        return encode(model, text, "messages" if chat else "prompt"), stops

    def encode(model: ServedModel, text: str, param: str) -> list[int]:
        """``text`` in the model's tokens (an empty one: a document start), within the prompt limit."""
        lm = model.lm
        try:
            ids = lm.tokenizer.encode(text) if text else start_ids(lm.tokenizer)
        except TinyGPTError as e:
            raise ApiError(400, str(e), param=param) from None
        most = min(cfg.max_prompt_tokens or lm.model.config.block_size, lm.model.config.block_size)
        if len(ids) > most:   # the model is not named: in the arena it must stay anonymous
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes at most {most}",
                           param=param, code="context_length_exceeded")
        return ids

    def submit(model: ServedModel, rows: list[Row]) -> None:
        """Queue a request's rows on the model's engine, or refuse it: 429 when the queue is full."""
        try:
            model.engine.submit(rows)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({e}); retry shortly", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None

    async def stream(model: ServedModel, req: GenerationRequest, rid: str, rows: list[Row], events: asyncio.Queue,
                     n_prompt: int, deadline: float, chat: bool) -> AsyncIterator[str]:
        first, done = [True] * req.n, 0
        try:
            while done < req.n:
                try:
                    index, piece, finish = await asyncio.wait_for(events.get(), timeout=deadline - time.monotonic())
                except asyncio.TimeoutError:
                    error = ApiError(504, f"the request took over {cfg.timeout:g} s and was cancelled",
                                     kind="timeout_error", code="timeout")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                if piece or (chat and first[index]):
                    yield f"data: {json.dumps(chunk(req, rid, index, piece, None, chat=chat, first=first[index]))}\n\n"
                    first[index] = False
                if finish is not None:
                    done += 1
                    yield f"data: {json.dumps(chunk(req, rid, index, None, finish, chat=chat))}\n\n"
            else:
                metrics.finished(model.name, rows)
                if req.include_usage:
                    total = sum(r.completion_tokens for r in rows)
                    yield f"data: {json.dumps(usage_chunk(req, rid, n_prompt, total, chat=chat))}\n\n"
            yield "data: [DONE]\n\n"
        finally:   # also when the client went away (the response task is cancelled): free the rows
            if any(r.finish_reason is None for r in rows):
                model.engine.cancel(rows)

    return app
