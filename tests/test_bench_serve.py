"""``tinygpt bench serve`` runs end to end on a tiny model: a real server on 127.0.0.1 under
concurrent clients, every request answered (speed is measured, not tested)."""

import pytest

from tinygpt.bench.serve import ServeBench, run
from tinygpt.errors import TinyGPTError


def test_bench_serve_loads_a_real_server_and_reports_each_concurrency(monkeypatch):
    import tinygpt.bench.serve as bench

    monkeypatch.setattr(bench, "llama_server_installed", lambda: False)   # as on a machine without it
    lines = []
    loads = run(ServeBench(n_layer=1, n_head=2, n_embd=32, prompt_tokens=8, max_new_tokens=4, concurrency="1,3",
                           requests=4, server_rows=2, soak=0, prefix_tokens=24, long_prompt_tokens=300),
                log=lines.append)
    assert [(x.server, x.concurrency) for x in loads] == [("tinygpt", 1), ("tinygpt", 3)]
    assert all(x.failed == 0 and x.done + x.short == 4 and x.tokens > 0 for x in loads)
    assert all(len(x.ttft) == 4 for x in loads)
    text = "\n".join(lines)
    assert "llama.cpp: skipped, llama-cpp-python's server is not installed" in text
    assert "prefix cache: time to first token with a 24-token beginning read before" in text
    for how in ("in chunks (its default)", "at once (--prefill-chunk 0)"):
        assert f"a 300-token prompt arriving, read {how}: the running answer's longest pause" in text
    assert "tinygpt, concurrency 1: TPOT p50" in text and "the output tokens/s of concurrency 1" in text


def test_bench_serve_checks_its_options():
    for bad, message in ((dict(servers="vllm"), "unknown server 'vllm'"), (dict(concurrency="0"), "--concurrency"),
                         (dict(requests=0), "--requests must be at least 1"), (dict(soak=-1), "--soak"),
                         (dict(prefix_tokens=-1), "--prefix-tokens"),
                         (dict(long_prompt_tokens=-1), "--long-prompt-tokens")):
        with pytest.raises(TinyGPTError, match=message):
            ServeBench(**bad)
