"""``tinygpt bench compress`` runs end to end on a small run: every variant measured, sizes in
the order the formats promise (speed is measured, not tested)."""

import pytest
from helpers import make_run

from tinygpt.bench.compress import VARIANTS, CompressBench, run
from tinygpt.errors import TinyGPTError


def test_bench_compress_measures_every_variant(tmp_path):
    path = tmp_path / "run"
    make_run(path, randomize=True, n_layer=2, n_head=2, n_embd=64, block_size=32)
    text = tmp_path / "held-out.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    lines = []
    rows = run(CompressBench(models=[str(path)], data=str(text), calibration_tokens=64, max_new_tokens=4,
                             prompt_tokens=4, rounds=1, llama_cpp=False), log=lines.append)
    assert [r.name for r in rows] == list(VARIANTS)
    size = {r.name: r.megabytes for r in rows}
    assert size["int4"] < size["int8"] < size["bf16"] < size["fp32"]
    assert size["int4"] == size["int4-gptq"] and size["int8"] == size["dynamic-int8"]
    assert size["int4-awq"] > size["int4"]                     # its input scales
    assert all(r.bpb > 0 and set(r.speed) == {1, 8} for r in rows)
    bpb = {r.name: r.bpb for r in rows}
    assert abs(bpb["bf16"] - bpb["fp32"]) < 0.01 * bpb["fp32"]
    table = "\n".join(lines)
    assert "bits/byte" in table and "vs fp32" in table


def test_bench_compress_checks_its_options():
    with pytest.raises(TinyGPTError, match="unknown variant 'int3'"):
        CompressBench(variants="int8,int3")
    with pytest.raises(TinyGPTError, match="--rounds"):
        CompressBench(rounds=0)
