"""Continuous batching: one thread per model owns its decoder and KV cache rows.

Requests wait in a bounded queue. Each step the engine admits waiting requests into free
rows (the decoder reads their prompts in that step's forward; a long prompt a chunk per
step, so the running rows are not stalled for its whole length), drops rows whose client
went away, and gives every active row one token (generation/decoder.py: per-row settings and
generators, so a request's tokens are what it gives alone). Tokens become text through the
row's own TextStream (stop strings held back, split UTF-8 characters waited for) and go to
the request's asyncio queue from this thread with ``call_soon_threadsafe``.

A thread, not an asyncio task: a step is one blocking forward (torch releases the GIL in
it), and the event loop must keep answering other clients meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..generation.decoder import Decoder, worth_packing
from ..generation.lm import TinyGPT
from ..generation.prefix import PrefixStore
from ..generation.processors import LimitVocab
from ..generation.sampling import Sampling
from ..generation.stream import TextStream


class QueueFull(Exception):
    """The engine's waiting queue is at its bound (the server answers 429)."""


@dataclass
class Row:
    """One choice of one request: what it asks for, and where its events go."""
    prompt: list[int]
    sampling: Sampling
    stops: tuple[str, ...]
    index: int                                    # the choice's index in the request (n > 1)
    events: asyncio.Queue                         # (index, text piece | None, finish reason | None)
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    cancelled: bool = False                       # set by the server's side: the row leaves at the next step
    finish_reason: str | None = None

    def send(self, piece: str | None, finish: str | None = None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, piece, finish))


class Engine:
    """The decoding loop of one model: ``submit`` rows from the event loop, ``close`` at shutdown."""

    def __init__(self, lm: TinyGPT, *, rows: int = 8, queue_size: int = 64, prefix_cache_mb: float = 0,
                 prefill_chunk: int = 0, on_step: Callable[[int, float], None] | None = None):
        self.lm, self.max_rows, self.queue_size = lm, rows, queue_size
        self.prefill_chunk = prefill_chunk         # prompt tokens read per step (0: a prompt at once)
        # Prompts' keys and values, for requests that begin alike (generation/prefix.py); None: off.
        self.prefixes = PrefixStore(int(prefix_cache_mb * 1e6)) if prefix_cache_mb > 0 else None
        self.on_step = on_step                     # (tokens made, seconds) after every step
        self.waiting: collections.deque[Row] = collections.deque()
        self.active: dict[int, Row] = {}           # decoder row handle -> row
        self._wake = threading.Condition()
        self._closing = False
        self._streams: dict[int, TextStream] = {}
        self._thread = threading.Thread(target=self._run, name="tinygpt-engine", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def submit(self, rows: list[Row]) -> None:
        """Queue a request's rows together (all or none: QueueFull when they do not fit)."""
        with self._wake:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(rows) > self.queue_size:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the limit is {self.queue_size})")
            self.waiting.extend(rows)
            self._wake.notify()

    def cancel(self, rows: list[Row]) -> None:
        """The client left: its rows leave at the next step (or are never admitted)."""
        with self._wake:
            for row in rows:
                row.cancelled = True
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop admitting; rows still waiting or running end with finish reason "cancelled"."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop (its own thread)

    def _run(self) -> None:
        lm = self.lm
        limit = [LimitVocab(lm.tokenizer.vocab_size)] if lm.tokenizer.vocab_size < lm.model.config.vocab_size else []
        with Decoder(lm.model, device=lm.device, dtype=lm.dtype, autocast=lm.autocast, processors=limit,
                     rows=self.max_rows, pack=worth_packing(lm.model, self.max_rows, 1 << 20, lm.device),
                     prefixes=self.prefixes, chunk=self.prefill_chunk) as decoder:
            while True:
                with self._wake:
                    while not self._closing and not self.waiting and not self.active:
                        self._wake.wait()
                    if self._closing:
                        break
                    self._admit(decoder)
                    cancelled = [h for h, r in self.active.items() if r.cancelled]
                for handle in cancelled:
                    decoder.remove(handle)
                    self._finish(handle, "cancelled")
                if not decoder.busy:
                    continue
                started = time.perf_counter()
                tokens = decoder.step()
                if self.on_step is not None:   # first: a client that has its last token sees it counted
                    self.on_step(len(tokens), time.perf_counter() - started)
                for t in tokens:
                    self._deliver(decoder, t)
            for handle in list(self.active):
                self._finish(handle, "cancelled")
            with self._wake:
                while self.waiting:
                    self.waiting.popleft().send(None, "cancelled")

    def _admit(self, decoder: Decoder) -> None:
        while self.waiting and len(self.active) < self.max_rows:
            row = self.waiting.popleft()
            if row.cancelled:
                row.send(None, "cancelled")
                continue
            handle = decoder.add(row.prompt, row.sampling)
            self.active[handle] = row
            self._streams[handle] = TextStream(self.lm.tokenizer, row.stops)

    def _deliver(self, decoder: Decoder, t) -> None:
        row, stream = self.active[t.row], self._streams[t.row]
        now = time.perf_counter()
        if row.first_token_at is None:
            row.first_token_at = now
        row.completion_tokens += 1
        if t.id in row.sampling.stop_ids:   # a stop id (end-of-text) ends the row and is not text
            self._finish(t.row, "stop")
            return
        if piece := stream.push(t.id):
            row.send(piece)
        if stream.stopped:                  # a stop string: the text ends before it
            if t.done is None:
                decoder.remove(t.row)
            self._finish(t.row, "stop")
        elif t.done is not None:
            self._finish(t.row, "length" if t.done == "length" else "stop")

    def _finish(self, handle: int, reason: str) -> None:
        row, stream = self.active.pop(handle), self._streams.pop(handle)
        if reason != "cancelled" and (rest := stream.flush()):
            row.send(rest)
        row.finish_reason, row.finished_at = reason, time.perf_counter()
        row.send(None, reason)
