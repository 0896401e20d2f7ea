"""End to end through the command line: train a few steps on a tiny corpus, sample, resume, errors."""

import json
import subprocess
import sys

import pytest

from tinygpt import checkpoint as ckpt
from tinygpt.cli import main

TEXT = "".join(f"ROMEO: line {i}, and what light through yonder window breaks?\n" for i in range(200))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-batches", "2", "--progress", "false", "--device", "cpu"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "romeo.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def train(corpus, out, *extra):
    return main(["train", "--data", str(corpus), "--out", str(out), "--max-steps", "6",
                 "--eval-interval", "3", "--sample-tokens", "20", *TINY, *extra])


def test_train_then_sample(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(corpus, out) == 0
    captured = capsys.readouterr()
    assert f"run: {out}" in captured.err and "--- sample ---" in captured.out
    for name in ("config.json", "tokenizer_config.json", "model.safetensors", "last.safetensors",
                 "trainer.pt", "metrics.jsonl"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["train"]["max_steps"] == 6
    assert config["train"]["preset"] == "char-tiny" and config["train"]["lr"] == 6e-3  # the preset's own lr
    assert config["tokenizer"]["kind"] == "char" and config["versions"]["torch"]

    args = ["sample", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "25", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0
    second = capsys.readouterr()
    assert first.out == second.out  # seeded sampling is reproducible
    assert first.out.startswith("ROMEO:") and len(first.out) == len("ROMEO:") + 25 + 1
    assert "model.safetensors: step" in first.err and "val loss" in first.err


def test_config_file_and_flags(tmp_path, corpus, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  n_layer: 2\ntrain:\n  lr: 0.002\nmax_steps: 4\n")
    out = tmp_path / "run"
    # The flag wins over the file; the file wins over the preset.
    assert main(["train", "--config", str(cfg), "--data", str(corpus), "--out", str(out), "--lr", "0.003",
                 "--eval-interval", "2", "--sample-tokens", "0", *TINY[2:]]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["lr"] == 0.003 and config["train"]["max_steps"] == 4
    assert config["train"]["preset"] == "char-tiny"  # 'auto' on a CPU


def test_resume_continues_and_refuses_model_changes(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--sample-tokens", "0") == 0
    assert main(["train", "--resume", str(out), "--max-steps", "9", "--progress", "false"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert int(ckpt.read_metadata(out / ckpt.LAST_WEIGHTS)["step"]) == 9
    before = (out / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(out), "--n-layer", "3"]) == 1
    err = capsys.readouterr().err
    assert "--n-layer cannot change when resuming" in err
    assert (out / "last.safetensors").read_bytes() == before
    corpus.write_text(TEXT + "more text\n", encoding="utf-8")
    assert main(["train", "--resume", str(out), "--max-steps", "12", "--progress", "false"]) == 1
    assert "has changed since" in capsys.readouterr().err
    assert (out / "last.safetensors").read_bytes() == before


def test_existing_run_is_never_overwritten(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--sample-tokens", "0") == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert train(corpus, out) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.parametrize("make, args, message", [
    (lambda d: d.joinpath("empty.txt").write_text(""), ["--data", "{d}/empty.txt"], "the corpus is empty"),
    (lambda d: d.joinpath("short.txt").write_text("tiny"), ["--data", "{d}/short.txt"], "fewer than one block"),
    (lambda d: d.joinpath("bin.txt").write_bytes(b"abc\xffdef"), ["--data", "{d}/bin.txt"],
     "bin.txt is not valid utf-8 at byte 3"),
    (lambda d: None, ["--data", "{d}/missing.txt"], "no text found"),
    (lambda d: None, ["--data", "{d}/romeo.txt", "--norm", "groupnorm"], "unknown value 'groupnorm' for --norm"),
    (lambda d: None, ["--data", "{d}/romeo.txt", "--n-embd", "30", "--n-head", "4"], "must be divisible"),
    (lambda d: None, ["--data", "{d}/romeo.txt", "--max-time", "forever"], "--max-time"),
    (lambda d: None, ["--data", "{d}/romeo.txt", "--device", "tpu"], "unknown device"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, corpus, capsys, make, args, message):
    make(tmp_path)
    args = [a.format(d=tmp_path) for a in args]
    code = main(["train", "--out", str(tmp_path / "out"), "--max-steps", "2", "--block-size", "64",
                 "--progress", "false", *args])
    err = capsys.readouterr().err
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started


def test_sample_errors(tmp_path, corpus, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 1
    assert "no run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train(corpus, out, "--sample-tokens", "0") == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "Zé"]) == 1
    assert "characters the char tokenizer does not know: 'Z', 'é'" in capsys.readouterr().err
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[:100])
    assert main(["sample", str(out)]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_long_prompt_is_cropped_with_notice(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--sample-tokens", "0") == 0
    capsys.readouterr()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(TEXT[:200])
    assert main(["sample", str(out), "--prompt-file", str(prompt), "--max-new-tokens", "5", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert "using its last 16 tokens" in captured.err
    assert captured.out.startswith(TEXT[184:200])


def test_python_api(tmp_path, corpus):
    import tinygpt

    out = tmp_path / "run"
    assert train(corpus, out, "--sample-tokens", "0") == 0
    lm = tinygpt.load(out, device="cpu")
    a = lm.generate("ROMEO:", max_new_tokens=12, seed=5, num_samples=2)
    assert a == lm.generate("ROMEO:", max_new_tokens=12, seed=5, num_samples=2)
    assert len(a) == 2 and all(len(s) == 12 for s in a)


def test_module_entry_point_and_help():
    proc = subprocess.run([sys.executable, "-m", "tinygpt", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--data", "--preset", "--out", "--max-steps", "--max-time", "--batch-size", "--block-size",
                 "--dropout", "--lr", "--eval-interval", "--device", "--dtype", "--compile", "--seed", "--resume"):
        assert flag in proc.stdout, flag
