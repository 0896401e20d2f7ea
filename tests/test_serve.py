"""tinygpt serve: OpenAI's wire format through httpx's ASGI transport on a tiny model, the
continuous-batching engine's per-row exactness, a client that leaves, and one real uvicorn
server driven by the official openai client."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest

from tinygpt.generation.sampling import Sampling
from tinygpt.serve import Engine, Row, ServeConfig, create_app, load_models
from tinygpt.serve.engine import QueueFull

PROMPT = "the cat sat"


@pytest.fixture(scope="module")
def models(serve_run):
    return load_models([str(serve_run)], device="cpu", dtype="fp32")


@asynccontextmanager
async def client(models, **settings):
    app = create_app(models, ServeConfig(**settings))
    async with app.router.lifespan_context(app):   # the engines start and stop with the app
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


def call(models, requests, **settings):
    """[(method, path, json or raw bytes, headers)] -> responses, in order, through one app."""
    async def go():
        async with client(models, **settings) as c:
            out = []
            for method, path, body, headers in requests:
                kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
                out.append(await c.request(method, path, headers=headers or {}, **kw))
            return out
    return asyncio.run(go())


def alone(lm, prompt, **options):
    """What the model gives for ``prompt`` by itself (the library's own generate)."""
    return lm.generate(prompt, **options)[0]


def events(text):
    lines = [line for line in text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] for line in lines]


def test_completions_give_what_the_model_gives_alone_with_usage(models):
    lm = models[0].lm
    greedy, seeded = call(models, [
        ("POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}, None),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "seed": 7, "top_k": 5,
                                     "n": 2}, None)])
    body = greedy.json()
    assert greedy.status_code == 200 and body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"][0]["text"] == alone(lm, PROMPT, max_new_tokens=12, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(lm.tokenizer.encode(PROMPT)), "completion_tokens": 12,
                             "total_tokens": len(lm.tokenizer.encode(PROMPT)) + 12}
    texts = [c["text"] for c in seeded.json()["choices"]]
    # Choice i draws from its own generator seeded seed + i, as generate's sample i does.
    assert texts == lm.generate(PROMPT, max_new_tokens=12, seed=7, top_k=5, num_samples=2)
    assert texts[0] != texts[1]


def test_a_stream_is_chunks_then_usage_then_done_and_joins_to_the_whole(models):
    whole, streamed, chat = call(models, [
        ("POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0}, None),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0,
                                     "stream": True, "stream_options": {"include_usage": True}}, None),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 6, "seed": 1, "stream": True}, None)])
    assert streamed.headers["content-type"].startswith("text/event-stream")
    data = events(streamed.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    *pieces, last, usage = chunks
    assert "".join(c["choices"][0]["text"] for c in pieces) == whole.json()["choices"][0]["text"]
    assert last["choices"][0]["finish_reason"] == "length" and all(c["id"] == last["id"] for c in chunks)
    assert usage["choices"] == [] and usage["usage"] == whole.json()["usage"]
    data = events(chat.text)
    first = json.loads(data[0])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert data[-1] == "[DONE]" and json.loads(data[-2])["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_lays_the_messages_out_in_the_template(models):
    from tinygpt.data import instruct as ins

    lm, template = models[0].lm, models[0].template
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a cat"}]
    response, = call(models, [("POST", "/v1/chat/completions",
                               {"model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0}, None)])
    body = response.json()
    prompt = ins.chat_prompt(template, messages, lm.tokenizer)
    expected = alone(lm, prompt, max_new_tokens=8, temperature=0, stop=ins.stop_strings(template, lm.tokenizer))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"] == {"role": "assistant",
                                                                                   "content": expected}
    assert body["usage"]["prompt_tokens"] == len(lm.tokenizer.encode(prompt))


@pytest.mark.parametrize("request_, status, param, code", [
    ((b"{not json", None), 400, None, None),
    (({"model": "nope", "prompt": "a"}, None), 404, "model", "model_not_found"),
    (({"model": "tiny", "prompt": "a", "max_tokens": 10_000}, None), 400, "max_tokens", None),
    (({"model": "tiny", "prompt": "a" * 257}, None), 400, "prompt", "context_length_exceeded"),
    (({"model": "tiny", "prompt": "a", "temperature": 3}, None), 400, "temperature", None),
    (({"model": "tiny", "prompt": "a", "stop": [1]}, None), 400, "stop", None),
    (({"model": "tiny", "prompt": "a", "logprobs": 3}, None), 400, "logprobs", None),
    (({"model": "tiny", "prompt": "\u2603"}, None), 400, "prompt", None),        # not in the char vocabulary
    (({"model": "tiny", "prompt": "a"}, {"Authorization": "Bearer wrong"}), 401, None, "invalid_api_key"),
    ((b"[" + b"1," * 600 + b"1]", None), 413, None, None),
    (({"model": "tiny", "prompt": "a", "n": 2}, None), 429, None, "queue_full"),  # 2 rows, room for 1
])
def test_bad_requests_get_openais_error_object(models, request_, status, param, code):
    body, headers = request_
    response, = call(models, [("POST", "/v1/completions", body, headers or {"Authorization": "Bearer k"})],
                     api_key="k", max_body_bytes=1000, queue_size=1)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    if status == 429:
        assert response.headers["retry-after"] == "1"


def test_models_health_metrics_and_wrong_routes(models):
    listed, health, wrong_method, nowhere, _, metrics = call(models, [
        ("GET", "/v1/models", None, None), ("GET", "/health", None, None),
        ("GET", "/v1/completions", None, None), ("POST", "/v2/nothing", None, None),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 3}, None),
        ("GET", "/metrics", None, None)])
    assert [m["id"] for m in listed.json()["data"]] == ["tiny"] and health.json()["status"] == "ok"
    assert wrong_method.status_code == 405 and nowhere.status_code == 404
    assert "error" in wrong_method.json() and "error" in nowhere.json()
    text = metrics.text
    assert 'tinygpt_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'tinygpt_output_tokens_total{model="tiny"} 3.0' in text
    assert 'tinygpt_time_to_first_token_seconds_count{model="tiny"} 1.0' in text
    assert 'tinygpt_queue_depth{model="tiny"} 0.0' in text and 'tinygpt_active_rows{model="tiny"} 0.0' in text


def test_rows_that_join_at_different_steps_give_what_each_gives_alone(models):
    """Continuous batching: each row's tokens are its own, whoever else is in the batch."""
    lm = models[0].lm
    specs = [("the cat", Sampling(temperature=0, max_new_tokens=20)),
             ("a dog ran", Sampling(temperature=0.8, top_k=7, seed=3, max_new_tokens=25)),
             ("sat on", Sampling(top_p=0.9, repetition_penalty=1.3, seed=11, max_new_tokens=15)),
             ("x", Sampling(temperature=1.2, min_p=0.05, seed=5, max_new_tokens=30, presence_penalty=0.5))]

    async def decode(order, join_after, chunk=0):
        """Run the specs ``order`` names through one engine, each joining once the one before it
        has made ``join_after`` tokens; {spec: its text}. ``chunk``: prompt tokens read per step."""
        loop, engine = asyncio.get_running_loop(), Engine(lm, rows=4, prefill_chunk=chunk)
        queues = {i: asyncio.Queue() for i in order}
        texts, done = dict.fromkeys(order, ""), set()

        async def take(i):
            _, piece, finish = await queues[i].get()
            texts[i] += piece or ""
            if finish:
                done.add(i)

        try:
            for k, i in enumerate(order):
                prompt, sampling = specs[i]
                engine.submit([Row(lm.tokenizer.encode(prompt), sampling, (), 0, queues[i], loop)])
                for _ in range(join_after if k + 1 < len(order) else 0):   # let it get well on its way
                    if i not in done:
                        await take(i)
            for i in order:
                while i not in done:
                    await take(i)
            return texts
        finally:
            engine.close()

    by_itself = {i: asyncio.run(decode([i], 0))[i] for i in range(len(specs))}
    assert asyncio.run(decode([0, 1, 2, 3], join_after=3)) == by_itself
    assert asyncio.run(decode([3, 1, 0, 2], join_after=5)) == by_itself
    # Prompts read two tokens a step between the running rows' tokens change nothing.
    assert asyncio.run(decode([0, 1, 2, 3], join_after=1, chunk=2)) == by_itself
    assert all(by_itself.values())


def test_the_engine_refuses_past_its_queue_and_cancels_what_waits_at_close(models):
    lm = models[0].lm

    async def go():
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        engine = Engine(lm, rows=1, queue_size=2)
        rows = [Row(lm.tokenizer.encode("a"), Sampling(max_new_tokens=1), (), i, queue, loop) for i in range(3)]
        with pytest.raises(QueueFull):
            engine.submit(rows)               # all or none
        assert engine.queue_depth == 0
        engine.close()
        with pytest.raises(QueueFull, match="shutting down"):
            engine.submit(rows[:1])

    asyncio.run(go())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, proc=None, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)   # the server is still starting: bounded by the deadline
    raise AssertionError("the server did not come up")


@contextmanager
def serving(app):
    """``app`` under a real uvicorn server on 127.0.0.1, in a thread of this process; its port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_up(port)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def live(models):
    """A real server for ``models`` (their engines stay reachable through them); its port."""
    with serving(create_app(models, ServeConfig(max_request_tokens=100_000, rows=4))) as port:
        yield port


def test_a_client_that_leaves_mid_stream_frees_its_row(models, live, monkeypatch):
    finished = threading.Event()
    reasons = []
    original = Engine._finish

    def finish(self, handle, reason):
        original(self, handle, reason)
        reasons.append(reason)
        finished.set()

    monkeypatch.setattr(Engine, "_finish", finish)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 100_000, "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{live}/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())   # the first chunk arrives, then the client hangs up
    assert finished.wait(30), "the row was never freed"
    assert reasons == ["cancelled"]
    engine = models[0].engine
    assert engine.active == {} and engine.queue_depth == 0


def test_a_short_load_loses_nothing_and_each_answer_is_its_own(models, live):
    """32 requests, 8 at a time, streamed and not, over 127.0.0.1 to 4 rows: every one answered,
    each with the text its seed gives alone."""
    prompts = [f"{w} sat" for w in ("a cat", "the dog", "one owl", "my fox")]

    async def one(c, k):
        body = {"model": "tiny", "prompt": prompts[k % 4], "max_tokens": 6 + k % 5, "seed": k, "top_k": 9}
        if k % 2:
            async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                data = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
            assert r.status_code == 200 and data[-1] == "[DONE]"
            return k, "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1])
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 200
        return k, r.json()["choices"][0]["text"]

    async def go(at_once):
        gate = asyncio.Semaphore(at_once)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{live}", timeout=60) as c:
            async def bounded(k):
                async with gate:
                    return await one(c, k)
            return dict(await asyncio.gather(*(bounded(k) for k in range(32))))

    # Alone: one request at a time, through the same server (the same kernels: a batched
    # server decodes on packed weights, which round differently from generate's one row).
    assert asyncio.run(go(8)) == asyncio.run(go(1))
    metrics = httpx.get(f"http://127.0.0.1:{live}/metrics").text
    assert "tinygpt_errors_total{" not in metrics


def test_a_real_server_answers_the_official_openai_client(serve_run, tmp_path):
    openai = pytest.importorskip("openai")   # a dev dependency: installed wherever the suite runs
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinygpt", "serve", str(serve_run), "--port", str(port),
                             "--api-key", "secret", "--device", "cpu", "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(port, proc)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret", max_retries=0, timeout=30)
        assert [m.id for m in api.models.list()] == ["tiny"]
        whole = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
        pieces = [c.choices[0].text for c in api.completions.create(model="tiny", prompt=PROMPT, max_tokens=8,
                                                                      temperature=0, stream=True) if c.choices]
        assert whole.choices[0].text == "".join(pieces) and whole.usage.completion_tokens == 8
        chat = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                           seed=2)
        assert chat.choices[0].message.role == "assistant"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()   # SIGTERM: uvicorn shuts down gracefully, then ends by the signal as it came
        assert proc.wait(30) == -signal.SIGTERM
        assert "Traceback" not in proc.stderr.read()


def test_requests_that_begin_alike_reuse_the_prefix_and_answer_the_same(models):
    system = {"role": "system", "content": "You answer in one short line about cats and dogs."}
    ask = [({"model": "tiny", "messages": [system, {"role": "user", "content": q}], "max_tokens": 10,
             "temperature": 0}) for q in ("a cat?", "a dog?")]
    first, second, metrics = call(models, [("POST", "/v1/chat/completions", ask[0], None),
                                           ("POST", "/v1/chat/completions", ask[1], None),
                                           ("GET", "/metrics", None, None)], prefix_cache_mb=16)
    alone_, = call(models, [("POST", "/v1/chat/completions", ask[1], None)], prefix_cache_mb=0)
    assert second.json()["choices"] == alone_.json()["choices"]
    assert 'tinygpt_prefix_cache_hits{model="tiny"} 1.0' in metrics.text
    reused = float(metrics.text.split('tinygpt_prefix_cache_reused_tokens{model="tiny"} ')[1].split()[0])
    assert reused >= len(system["content"])   # the template's opening and the whole system message


def test_a_quantized_run_answers_as_sample_does(serve_run, tmp_path):
    from tinygpt.compress import QuantizeOptions, quantize_run

    out = quantize_run(serve_run, tmp_path / "tiny", QuantizeOptions(scheme="int4", quantize_head=True))
    quantized = load_models([str(out)], device="cpu", dtype="fp32")
    (r,) = call(quantized, [("POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 12,
                                                         "temperature": 0}, None)])
    assert r.json()["choices"][0]["text"] == alone(quantized[0].lm, PROMPT, max_new_tokens=12, temperature=0)
