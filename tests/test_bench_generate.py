"""``tinygpt bench generate`` runs end to end and reports every engine it has (speed is measured, not tested)."""

from tinygpt.cli import main


def test_bench_generate_reports_a_table_with_ratios(capsys):
    assert main(["bench", "generate", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--max-new-tokens", "4",
                 "--prompt-tokens", "8", "--rounds", "1", "--batch-sizes", "1,2",
                 "--engines", "tinygpt,transformers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["engine", "batch", "1", "batch", "2"]
    rows = {line[:20].strip(): line[20:].split() for line in lines[2:6]}
    assert set(rows) == {"tinygpt fp32", "tinygpt bf16", "transformers fp32", "transformers bf16"}
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values())
    assert "batch 2: tinygpt bf16 / transformers bf16 = " in out
    assert "batch-1 ceiling, bf16 weights:" in out and "measured read bandwidth" in out


def test_bench_generate_checks_its_options():
    import pytest

    from tinygpt.bench.generate import GenerateBench
    from tinygpt.errors import TinyGPTError

    b = GenerateBench(batch_sizes="1,4", engines="tinygpt, llama.cpp")
    assert (b.batch_sizes, b.engines) == ((1, 4), ("tinygpt", "llama.cpp"))
    for bad, message in ((dict(engines="vllm"), "unknown engine 'vllm'"), (dict(batch_sizes="0"), "--batch-sizes"),
                         (dict(max_new_tokens=0), "--max-new-tokens must be at least 1")):
        with pytest.raises(TinyGPTError, match=message):
            GenerateBench(**bad)


def test_an_engine_not_installed_is_skipped_saying_so(capsys, monkeypatch):
    from tinygpt.bench import generate

    monkeypatch.setitem(generate.NEEDS, "llama.cpp", ("no_such_module_here", "pip install llama-cpp-python gguf"))
    tiny = ["bench", "generate", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--max-new-tokens", "2",
            "--prompt-tokens", "4", "--rounds", "1", "--batch-sizes", "1"]
    assert main([*tiny, "--engines", "tinygpt,llama.cpp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped llama.cpp: no_such_module_here is not installed (pip install llama-cpp-python")
    assert "tinygpt fp32" in out and "llama.cpp f32" not in out
    assert main([*tiny, "--engines", "llama.cpp"]) == 1  # nothing left to measure: not an empty table
    assert "none of the engines asked for (llama.cpp) is installed" in capsys.readouterr().err


def test_llama_cpp_defaults_are_tried_in_a_child_process_that_may_crash(monkeypatch, tmp_path):
    from tinygpt.bench import generate

    monkeypatch.setattr(generate, "_TRY_DEFAULTS", "import sys; assert sys.argv[1:] == ['m.gguf', '3']")
    assert generate._defaults_work("m.gguf", 3) == (True, "exit 0")
    monkeypatch.setattr(generate, "_TRY_DEFAULTS", "import os; os.abort()")  # a kernel that takes the process down
    works, why = generate._defaults_work(tmp_path / "m.gguf", 2)
    assert not works and why.startswith("exit -6")
    p = generate._no_repack(type("Params", (), {"use_extra_bufts": True})())
    assert p.use_extra_bufts is False
