"""``tinygpt bench serve``: an OpenAI-compatible server under load, tinygpt's against llama.cpp's.

A GPT-2-small-shaped model (random weights, seeded) is written once as a Hugging Face
directory (what ``tinygpt serve`` loads) and as a GGUF file (what llama-cpp-python's server
loads, when its ``[server]`` extra is installed). Each server runs alone, as its own process
on 127.0.0.1, and takes the same load: for each concurrency, that many clients send
streamed completion requests from a fixed set of prompts until ``--requests`` are done.
Reported per server and concurrency: requests/s, output tokens/s, time to first token and
time per output token (p50 / p99), and requests that failed or came back short. A soak
(``--soak N``) sends N more requests and samples the server's resident memory every 100.

Before any server starts, the same model decodes one row in this process (``tinygpt
sample``'s path), the reference the server's time per output token is compared with.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..checkpoint import weight_tensors
from ..config import like, opt, parse_ints, parse_names
from ..device import cpu_name
from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from ..tokenizer import GPT2Tokenizer
from .generate import GenerateBench

SERVERS = ("tinygpt", "llama.cpp")
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it "
        "was the season of Darkness, it was the spring of hope, it was the winter of despair. ") * 20


@dataclass
class ServeBench:
    n_layer: int = like(GenerateBench, "n_layer")
    n_head: int = like(GenerateBench, "n_head")
    n_embd: int = like(GenerateBench, "n_embd")
    prompt_tokens: int = like(GenerateBench, "prompt_tokens")
    max_new_tokens: int = like(GenerateBench, "max_new_tokens", 64)
    concurrency: tuple[int, ...] = opt((1, 2, 4, 8, 16), "client counts, comma-separated", parse=parse_ints)
    requests: int = opt(32, "requests per concurrency (at least the concurrency)")
    server_rows: int = opt(16, "the tinygpt server's --rows: requests it decodes together")
    weights: str = opt("fp32", "both servers' weights: fp32 (llama.cpp: f32) or bf16 (llama.cpp: f16)",
                       choices=("fp32", "bf16"))
    prefix_tokens: int = opt(512, "then time to first token of a request whose first N tokens another request "
                                  "just had, against one whose beginning is new: the prefix cache's gain (0: skip)")
    long_prompt_tokens: int = opt(768, "then the longest pause in a running answer while another request's prompt "
                                       "of N new tokens is read, by the tinygpt server reading prompts in chunks "
                                       "(its default) and by one reading them at once (0: skip)")
    soak: int = opt(0, "then this many more requests at the highest concurrency, sampling the server's memory "
                       "every 100 (0: none)")
    servers: tuple[str, ...] = opt(SERVERS, f"servers to load, comma-separated ({', '.join(SERVERS)}); one that "
                                            "is not installed is skipped, saying so", parse=parse_names)

    def __post_init__(self) -> None:
        self.concurrency, self.servers = parse_ints(self.concurrency), parse_names(self.servers)
        if set(self.servers) - set(SERVERS):
            raise TinyGPTError(f"unknown server {sorted(set(self.servers) - set(SERVERS))[0]!r}; choose from: "
                               f"{', '.join(SERVERS)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise TinyGPTError("--concurrency needs one or more positive client counts such as 1,8")
        for name in ("prefix_tokens", "long_prompt_tokens"):
            if getattr(self, name) < 0:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("requests", "server_rows", "prompt_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.soak < 0:
            raise TinyGPTError(f"--soak must be 0 or more, got {self.soak}")


@dataclass
class Load:
    server: str
    concurrency: int
    done: int           # answered in full
    failed: int         # an error or a lost connection
    short: int          # answered, but with fewer tokens than asked (an end-of-text came first)
    seconds: float
    tokens: int
    ttft: list[float]
    tpot: list[float]

    def pct(self, values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else \
            (values[0] if values else float("nan"))


def llama_server_installed() -> bool:
    """llama-cpp-python with its ``[server]`` extra (the server needs sse_starlette)."""
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "sse_starlette"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(b: ServeBench, tok: GPT2Tokenizer) -> list[str]:
    """8 prompts of about ``prompt_tokens`` tokens, each starting at another word of TEXT."""
    ids = tok.encode(TEXT)
    return [tok.decode(ids[k * 7: k * 7 + b.prompt_tokens]) for k in range(8)]


async def _one(client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, float, int]:
    """(send, first token, end, tokens) of one streamed request; raises on a failure."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    sent, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                tokens += 1   # one chunk per token in both servers (a held-back piece merges two: rare)
                if first is None:
                    first = time.perf_counter()
    return sent, first if first is not None else time.perf_counter(), time.perf_counter(), tokens


async def _load(base: str, model: str, prompts: list[str], concurrency: int, n: int, max_tokens: int,
                name: str) -> Load:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for k in range(n):
        queue.put_nowait(prompts[k % len(prompts)])
    results, failed = [], 0

    async def worker(client):
        nonlocal failed
        while not queue.empty():
            prompt = queue.get_nowait()
            try:
                results.append(await _one(client, f"{base}/v1/completions", model, prompt, max_tokens))
            except Exception:
                failed += 1

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    short = sum(t < max_tokens for *_, t in results)
    return Load(name, concurrency, len(results) - short, failed, short, seconds, sum(t for *_, t in results),
                [f - s for s, f, _, _ in results], [(e - f) / (t - 1) for s, f, e, t in results if t > 1])


def _wait_up(base: str, proc: subprocess.Popen, log_path: Path, limit: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TinyGPTError(f"the server exited while starting: {log_path.read_text()[-800:]}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)   # starting up (loading the model): poll, within the limit above
    raise TinyGPTError(f"the server at {base} did not come up in {limit:.0f} s")


def _prefix_gain(base: str, model: str, n: int) -> str:
    """Time to first token of a prompt whose first ``n`` tokens were just read for another
    request (the prefix cache's), against the same prompt's beginning read afresh; median of 3."""
    import httpx

    tok = GPT2Tokenizer()
    ids = tok.encode(TEXT * 3)

    def ttft(prompt: str) -> float:
        started = time.perf_counter()
        with httpx.stream("POST", f"{base}/v1/completions", timeout=600,
                          json={"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0,
                                "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    return time.perf_counter() - started
        raise TinyGPTError("the server sent no token")

    fresh, cached = [], []
    for k in range(3):
        prefix = tok.decode(ids[101 * k + 1: 101 * k + 1 + n])   # a beginning no request had before
        fresh.append(ttft(prefix + " And so the first question."))
        cached.append(ttft(prefix + " And then another one."))
    a, c = statistics.median(fresh), statistics.median(cached)
    return (f"prefix cache: time to first token with a {n}-token beginning read before {c * 1000:.0f} ms, "
            f"read afresh {a * 1000:.0f} ms ({a / c:.1f}x faster)")


def _pause(base: str, model: str, prompt: str, n: int, seed: int) -> tuple[float, float, float]:
    """A streamed answer is under way when a request with an ``n``-token prompt (new to the
    server) arrives: (the answer's longest gap between tokens from then until the long
    request's first token, its median gap before, the long request's time to first token)."""
    import httpx

    tok = GPT2Tokenizer()
    ids = tok.encode(TEXT * 4)
    long = tok.decode(ids[seed * 13 + 5: seed * 13 + 5 + n])

    async def go():
        arrivals: list[float] = []
        started = asyncio.Event()
        sent_at, first_at = 0.0, 0.0

        async def running(client):
            body = {"model": model, "prompt": prompt, "max_tokens": 400, "temperature": 0, "stream": True}
            async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.perf_counter())
                        if len(arrivals) == 16:
                            started.set()
                        if first_at and arrivals[-1] > first_at + 0.5:
                            return   # well past the long prompt: enough seen

        async def arriving(client):
            nonlocal sent_at, first_at
            await started.wait()
            sent_at = time.perf_counter()
            body = {"model": model, "prompt": long, "max_tokens": 1, "temperature": 0, "stream": True}
            async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and not first_at:
                        first_at = time.perf_counter()

        async with httpx.AsyncClient(timeout=600) as client:
            await asyncio.gather(running(client), arriving(client))
        before = [b - a for a, b in zip(arrivals, arrivals[1:]) if b <= sent_at]
        during = [b - a for a, b in zip(arrivals, arrivals[1:]) if b > sent_at and a <= first_at]
        # (No gap at all: the answer ended before the long prompt's first token, nothing to say.)
        return max(during, default=float("nan")), statistics.median(before), first_at - sent_at
    return asyncio.run(go())


def _chunk_gain(base: str, prompt: str, b: ServeBench, how: str, log: Callable[[str], None]) -> None:
    """``_pause`` on the server at ``base`` (reading prompts ``how``), median of 3 after a warm-up."""
    _pause(base, "bench", prompt, 64, 0)
    runs = [_pause(base, "bench", prompt, b.long_prompt_tokens, k + 1) for k in range(3)]
    worst, step, ttft = (statistics.median(r[i] for r in runs) for i in range(3))
    log(f"a {b.long_prompt_tokens}-token prompt arriving, read {how}: the running answer's longest pause "
        f"{worst * 1000:.0f} ms (its usual {step * 1000:.0f} ms), the new request's first token after "
        f"{ttft * 1000:.0f} ms (medians of 3)")


def _rss(pid: int) -> float:
    """The process's resident memory in MB."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


@contextmanager
def _started(cmd: list[str], name: str, threads: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server process on a free loopback port, up: (its base URL, the process); stopped after."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # The server's log goes to a file: llama.cpp's server logs every request, and a pipe that
    # nobody reads fills up and stops it mid-answer.
    log_path = Path(tempfile.mkstemp(prefix=f"tinygpt-bench-{name}-", suffix=".log")[1])
    with open(log_path, "w") as err:
        proc = subprocess.Popen([*cmd, "--port", str(port)], env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_up(base, proc, log_path)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_path.unlink(missing_ok=True)


def _serve(cmd: list[str], name: str, model: str, b: ServeBench, prompts: list[str], threads: int,
           log: Callable[[str], None]) -> tuple[list[Load], list[float]]:
    loads, memory = [], []
    with _started(cmd, name, threads) as (base, proc):
        asyncio.run(_load(base, model, prompts, 1, 2, b.max_new_tokens, name))   # warm-up, not counted
        for c in b.concurrency:
            loads.append(asyncio.run(_load(base, model, prompts, c, max(b.requests, c), b.max_new_tokens, name)))
            log(_line(loads[-1]))
        if b.prefix_tokens and name == "tinygpt":
            log(_prefix_gain(base, model, b.prefix_tokens))
        if b.long_prompt_tokens and name == "tinygpt":
            _chunk_gain(base, prompts[0], b, "in chunks (its default)", log)
        if b.soak:
            memory.append(_rss(proc.pid))
            for k in range(0, b.soak, 100):
                soak = asyncio.run(_load(base, model, prompts, max(b.concurrency), min(100, b.soak - k),
                                         b.max_new_tokens, name))
                memory.append(_rss(proc.pid))
                if soak.failed:
                    log(f"{name}: soak: {soak.failed} of {soak.done + soak.short + soak.failed} requests failed")
            log(f"{name}: memory over {b.soak} more requests (MB, every 100): "
                + ", ".join(f"{m:.0f}" for m in memory))
    return loads, memory


def _line(x: Load) -> str:
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    return (f"{x.server:<10} {x.concurrency:>5} {(x.done + x.short) / x.seconds:>8.2f} {x.tokens / x.seconds:>10.1f} "
            f"{ms(x.pct(x.ttft, 50)):>9} {ms(x.pct(x.ttft, 99)):>9} {ms(x.pct(x.tpot, 50)):>9} "
            f"{ms(x.pct(x.tpot, 99)):>9} {x.failed:>6} {x.short:>6}")


def _reference(model: GPT, dtype: torch.dtype, prompt: str, b: ServeBench) -> float:
    """Seconds per token of one row decoding in this process (tinygpt sample's path), median of 3."""
    from ..generation.lm import TinyGPT

    lm = TinyGPT(model.to(dtype), GPT2Tokenizer(), torch.device("cpu"), dtype)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        lm.generate(prompt, b.max_new_tokens, temperature=0, stop_at_eot=False)
        times.append((time.perf_counter() - started) / b.max_new_tokens)
    model.float()
    return statistics.median(times)


def run(b: ServeBench, log: Callable[[str], None] = print) -> list[Load]:
    from ..interop import gguf_file, hf_dir

    tok = GPT2Tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=b.n_layer, n_head=b.n_head, n_embd=b.n_embd, block_size=1024,
                          vocab_size=tok.vocab_size)).eval()
    prompts = _prompts(b, tok)
    dtype = torch.float32 if b.weights == "fp32" else torch.bfloat16
    threads = torch.get_num_threads()
    per_token = _reference(model, dtype, prompts[0], b)
    log(f"{model.num_params() / 1e6:.0f}M-parameter GPT-2-shaped model, {b.weights}; prompts of ~{b.prompt_tokens} "
        f"tokens, {b.max_new_tokens} new tokens each (greedy, streamed); {threads} threads; {cpu_name()}")
    log(f"one row in this process (tinygpt sample's decoder): {per_token * 1000:.1f} ms per token")
    header = (f"{'server':<10} {'conc.':>5} {'req/s':>8} {'tokens/s':>10} {'TTFT p50':>9} {'p99':>9} "
              f"{'TPOT p50':>9} {'p99':>9} {'failed':>6} {'short':>6}   (times in ms)")
    loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="tinygpt-bench-serve-") as tmp:
        tensors = weight_tensors(model)
        served = Path(tmp) / "bench"
        hf_dir.export(model.config, tensors, tok, served)
        log(header)
        if "tinygpt" in b.servers:
            # The cap on max_tokens lets the long-prompt measurement's running answer outlast
            # the prompt's reading (400 tokens); the load asks for --max-new-tokens.
            cmd = [sys.executable, "-m", "tinygpt", "serve", str(served), "--rows", str(b.server_rows),
                   "--dtype", b.weights, "--threads", str(threads),
                   "--max-request-tokens", str(max(b.max_new_tokens, 512)), "--queue-size", str(max(b.concurrency) + 8)]
            loads += _serve(cmd, "tinygpt", "bench", b, prompts, threads, log)[0]
            if b.long_prompt_tokens:
                with _started([*cmd, "--prefill-chunk", "0"], "tinygpt", threads) as (base, _):
                    _chunk_gain(base, prompts[0], b, "at once (--prefill-chunk 0)", log)
        if "llama.cpp" in b.servers:
            if not llama_server_installed():
                log("llama.cpp: skipped, llama-cpp-python's server is not installed "
                    "(pip install 'llama-cpp-python[server]')")
            else:
                path = Path(tmp) / "bench.gguf"
                gguf_file.export(model.config, tensors, tok, path, dtype="f32" if b.weights == "fp32" else "f16",
                                 force=True)
                # Its default interrupts the running answer when a new request arrives, which cuts
                # every concurrent answer short; queueing them (interrupt_requests off) is its best
                # setting for this load, and the only one changed.
                log("llama.cpp: llama-cpp-python's server at its defaults but --interrupt_requests False "
                    "(requests wait their turn instead of cutting the running one short)")
                cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", "bench",
                       "--host", "127.0.0.1", "--n_ctx", "1024", "--n_threads", str(threads),
                       "--interrupt_requests", "False"]
                loads += _serve(cmd, "llama.cpp", "bench", b, prompts, threads, log)[0]
    _summary(loads, per_token, log)
    return loads


def _summary(loads: list[Load], per_token: float, log: Callable[[str], None]) -> None:
    ours = {x.concurrency: x for x in loads if x.server == "tinygpt"}
    theirs = {x.concurrency: x for x in loads if x.server == "llama.cpp"}
    if 1 in ours:
        log(f"tinygpt, concurrency 1: TPOT p50 {ours[1].pct(ours[1].tpot, 50) * 1000:.1f} ms vs "
            f"{per_token * 1000:.1f} ms in-process ({ours[1].pct(ours[1].tpot, 50) / per_token:.2f}x)")
    for c, x in ours.items():
        if c != 1 and 1 in ours:
            log(f"tinygpt, concurrency {c}: {x.tokens / x.seconds / (ours[1].tokens / ours[1].seconds):.2f}x "
                "the output tokens/s of concurrency 1")
        if c in theirs:
            y = theirs[c]
            log(f"concurrency {c}: tinygpt / llama.cpp output tokens/s = "
                f"{(x.tokens / x.seconds) / (y.tokens / y.seconds):.2f}")
