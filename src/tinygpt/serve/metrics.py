"""The server's Prometheus metrics (``GET /metrics``), in the prometheus_client library's own
registry and text format: requests by route and status, errors, queue depth, active rows,
time to first token and per output token, output tokens and tokens/s, prefix-cache hits and
reused tokens, each by model."""

from __future__ import annotations

import threading
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, engines: Callable[[], dict]):
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram

        self.engines, self.content_type = engines, CONTENT_TYPE_LATEST
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tinygpt_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("tinygpt_errors", "requests refused or failed (status 400 and up), by route and status",
                              ["route", "status"], registry=r)
        self.queue = Gauge("tinygpt_queue_depth", "requests waiting for a row", ["model"], registry=r)
        self.active = Gauge("tinygpt_active_rows", "rows being decoded", ["model"], registry=r)
        self.ttft = Histogram("tinygpt_time_to_first_token_seconds", "from queued to the first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("tinygpt_time_per_output_token_seconds", "between a row's tokens after its first",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tinygpt_output_tokens", "tokens generated", ["model"], registry=r)
        self.speed = Gauge("tinygpt_tokens_per_second", "output tokens per second of the recent decode steps",
                           ["model"], registry=r)
        self.prefix_hits = Gauge("tinygpt_prefix_cache_hits", "requests whose prompt began like one read before",
                                 ["model"], registry=r)
        self.prefix_tokens = Gauge("tinygpt_prefix_cache_reused_tokens", "prompt tokens not read again thanks to "
                                   "the prefix cache", ["model"], registry=r)
        self._rate: dict[str, float] = {}
        self._lock = threading.Lock()

    def step(self, model: str, tokens: int, seconds: float) -> None:
        """After each decode step (the engine's thread): tokens made and the step's time."""
        self.tokens.labels(model).inc(tokens)
        with self._lock:   # an exponential average over the last ~10 steps
            now = tokens / max(seconds, 1e-9)
            rate = self._rate[model] = 0.9 * self._rate.get(model, now) + 0.1 * now
        self.speed.labels(model).set(rate)

    def finished(self, model: str, rows: list) -> None:
        for row in rows:
            if row.first_token_at is not None:
                self.ttft.labels(model).observe(row.first_token_at - row.queued_at)
                if row.completion_tokens > 1 and row.finished_at is not None:
                    per = (row.finished_at - row.first_token_at) / (row.completion_tokens - 1)
                    self.tpot.labels(model).observe(per)

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def text(self) -> str:
        from prometheus_client import generate_latest

        for name, engine in self.engines().items():
            self.queue.labels(name).set(engine.queue_depth)
            self.active.labels(name).set(len(engine.active))
            if engine.prefixes is not None:
                self.prefix_hits.labels(name).set(engine.prefixes.hits)
                self.prefix_tokens.labels(name).set(engine.prefixes.reused_tokens)
        return generate_latest(self.registry).decode()
