"""``tinygpt bench train`` runs end to end and reports what it measured (speed is benchmarked, not tested)."""

import json

import pytest
import torch

from tinygpt.bench.train import ReferenceGPT, matmul_shapes
from tinygpt.cli import main
from tinygpt.device import dtype_candidates
from tinygpt.model import GPT, GPTConfig


def test_bench_train_reports_tokens_mfu_reference_and_loop_overhead(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "char-tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--warmup", "1", "--loop-steps", "4", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    dtypes = dtype_candidates(torch.device("cpu"))  # --dtype auto: each format this CPU could pick, side by side
    assert [r["name"] for r in report["results"]] == [f"tinygpt {d}" for d in dtypes] + ["reference fp32"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["peak_mem_mb"] > 0 for r in report["results"])
    assert set(report["matmul_peak_flops"]) == set(dtypes) and set(report["train_loop_step_s"]) == set(dtypes)
    assert "matmul peak at this model's shapes: fp32" in out
    assert f"tinygpt {dtypes[-1]} / reference fp32 = " in out
    assert "tinygpt train (fp32):" in out and "over its own train_step" in out


def test_bench_train_measures_only_a_named_dtype_and_reads_the_old_flags(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "char-tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--warmup", "1", "--loop-steps", "0", "--dtypes", "fp32", "--no-reference", "--compile", "false",
                 "--json", str(out_json)]) == 0
    err = capsys.readouterr().err
    assert "warning: --dtypes is deprecated; use --dtype" in err
    assert "warning: --no-reference is deprecated; use --reference" in err
    report = json.loads(out_json.read_text())
    assert [r["name"] for r in report["results"]] == ["tinygpt fp32"] and report["train_loop_step_s"] == {}
    assert report["bench"]["dtype"] == "fp32" and report["bench"]["reference"] is False


def test_bench_train_reports_what_activation_checkpointing_saves_and_costs(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "char-tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--warmup", "1", "--loop-steps", "0", "--dtype", "fp32", "--no-reference",
                 "--activation-checkpointing", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    plain, recomputed = json.loads(out_json.read_text())["results"]
    assert (plain["name"], recomputed["name"]) == ("tinygpt fp32", "recompute fp32")
    # Counted from the tensors themselves: what every block's saved activations weigh, less its input.
    assert 0 < recomputed["peak_mem_mb"] < plain["peak_mem_mb"]
    assert "activation checkpointing (every 1 block(s)): " in out and "MB less at the step's peak" in out


def test_the_peak_is_measured_over_every_linear_product_of_a_training_step():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50)
    shapes = matmul_shapes(cfg, tokens=32)
    assert len(shapes) == 3 * (4 * 2 + 1)  # forward and two backward products per linear, head included
    flops = sum(2 * m * k * n for m, k, n in shapes)
    # The 6N rule over the linear layers' weights (the head at its padded width).
    linear = sum(m.weight.numel() for m in GPT(cfg).modules() if isinstance(m, torch.nn.Linear))
    assert flops == 6 * 32 * linear


def test_the_reference_is_gpt2_shaped():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    ours, ref = GPT(cfg), ReferenceGPT(cfg)
    assert ref.wte.weight is ref.lm_head.weight
    assert sum(p.numel() for p in ref.parameters()) == ours.num_params()


def test_contention_times_the_work_on_every_core_and_on_the_free_ones(monkeypatch):
    from tinygpt.bench import busy

    monkeypatch.setattr(busy, "ALL_CORES", 4)
    monkeypatch.setattr(busy, "free_cores", lambda window: (3, 1.2))
    before, said = torch.get_num_threads(), []
    rows = busy.contention(lambda: 100.0 * torch.get_num_threads(), (0,), "things/s", said.append)
    assert rows == [{"busy": 0, "load": 1.2, "every core": (4, 400.0), "free cores": (3, 300.0)}]
    assert torch.get_num_threads() == before  # left as it was
    assert said[-1].split() == ["0", "1.2", "400", "(4)", "1.00x", "300", "(3)", "1.33x"]


def test_busy_processes_run_for_the_block_only(monkeypatch):
    from tinygpt.bench import busy

    started = []
    real = busy.subprocess.Popen
    monkeypatch.setattr(busy.subprocess, "Popen", lambda *a, **k: started.append(real(*a, **k)) or started[-1])
    with busy.busy_processes(2):
        assert len(started) == 2 and all(p.poll() is None for p in started)
    assert all(p.poll() is not None for p in started)


def test_bench_train_times_one_and_several_data_parallel_processes(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "char-nano", "--batch-size", "2", "--rounds", "1", "--warmup", "1",
                 "--loop-steps", "3", "--dtype", "fp32", "--data-parallel", "2", "--zero-stages", "",
                 "--micro-batches", "4", "--model-parallel", "pp,pp-gpipe", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out_json.read_text())["data_parallel"]
    assert [r["layout"] for r in rows] == ["1 process", "2 x PP 1F1B", "2 x PP GPipe"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert "1024 tokens per step (4 micro-batches of 2)" in out and "speed-up" in out and "2 x PP GPipe" in out
    one, f1b, gpipe = rows
    assert one["mem_weights_mb"] == one["mem_grads_mb"]  # AdamW: two moments per weight
    assert one["mem_optimizer_mb"] == pytest.approx(2 * one["mem_weights_mb"], rel=1e-3)
    # A pipeline stage holds its own blocks; 1F1B at most two micro-batches' activations, GPipe all four.
    assert f1b["mem_weights_mb"] < 0.6 * one["mem_weights_mb"] and f1b["mem_weights_mb"] == gpipe["mem_weights_mb"]
    assert gpipe["mem_activations_mb"] > 1.5 * f1b["mem_activations_mb"]
