"""``tinygpt train`` end to end: files written, config precedence, resume, refusals, one-line errors."""

import json
import subprocess
import sys

import pytest
from conftest import ROMEO, TINY_TRAIN

from tinygpt.cli import main
from tinygpt.run import RunDir


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "romeo.txt"
    p.write_text(ROMEO, encoding="utf-8")
    return p


def train(corpus, out, *extra):
    return main(["train", "--data", str(corpus), "--out", str(out), "--max-steps", "6",
                 "--eval-interval", "3", "--sample-tokens", "20", *TINY_TRAIN, *extra])


def test_train_writes_a_complete_run_and_a_sample(tmp_path, corpus, capsys):
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
    assert config["runtime"] == {"device": "cpu", "dtype": "auto", "seed": 1337}
    assert config["tokenizer"]["kind"] == "char" and config["versions"]["torch"]
    sample = captured.out.split("--- sample ---\n")[1].split("\n--------------")[0]
    assert len(sample) == 20 and set(sample) <= set(ROMEO)


def test_config_file_and_flags(tmp_path, corpus):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  n_layer: 2\ntrain:\n  lr: 0.002\nmax_steps: 4\nruntime:\n  seed: 5\n")
    out = tmp_path / "run"
    # The flag wins over the file; the file wins over the preset.
    assert main(["train", "--config", str(cfg), "--data", str(corpus), "--out", str(out), "--lr", "0.003",
                 "--eval-interval", "2", "--sample-tokens", "0", *TINY_TRAIN[2:]]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["lr"] == 0.003 and config["train"]["max_steps"] == 4
    assert config["train"]["preset"] == "char-tiny" and config["runtime"]["seed"] == 5  # 'auto' on a CPU


def test_resume_continues_and_refuses_model_changes(tiny_run, capsys):
    assert main(["train", "--resume", str(tiny_run), "--max-steps", "9", "--progress", "false"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert RunDir.open(tiny_run).checkpoint_info("last").step == 9
    before = (tiny_run / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(tiny_run), "--n-layer", "3"]) == 1
    assert "--n-layer cannot change when resuming" in capsys.readouterr().err
    assert (tiny_run / "last.safetensors").read_bytes() == before
    assert main(["train", "--resume", str(tiny_run), "--max-steps", "9"]) == 0
    assert "already used its budget at step 9" in capsys.readouterr().err


def test_resume_refuses_changed_text(tiny_run, tmp_path, capsys):
    config = json.loads((tiny_run / "config.json").read_text())
    changed = tmp_path / "changed.txt"
    changed.write_text(ROMEO + "more text\n", encoding="utf-8")
    config["data"]["data"] = str(changed)  # as if the file at the run's --data had been edited
    (tiny_run / "config.json").write_text(json.dumps(config))
    before = (tiny_run / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(tiny_run), "--max-steps", "12", "--progress", "false"]) == 1
    assert "is not the text" in capsys.readouterr().err
    assert (tiny_run / "last.safetensors").read_bytes() == before


def test_existing_run_is_never_overwritten(tiny_run, corpus, capsys):
    files = {p.name: p.read_bytes() for p in tiny_run.iterdir()}
    assert train(corpus, tiny_run) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir()} == files


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


def test_module_entry_point_and_help():
    proc = subprocess.run([sys.executable, "-m", "tinygpt", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--data", "--preset", "--out", "--max-steps", "--max-time", "--batch-size", "--block-size",
                 "--dropout", "--lr", "--eval-interval", "--device", "--dtype", "--compile", "--seed", "--resume"):
        assert flag in proc.stdout, flag
    assert "--vocab-size" not in proc.stdout  # taken from the tokenizer
