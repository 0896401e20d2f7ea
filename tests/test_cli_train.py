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
                 "--eval-interval", "3", "--max-new-tokens", "20", *TINY_TRAIN, *extra])


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
    assert config["run"]["preset"] == "char-tiny" and config["train"]["lr"] == 6e-3  # the preset's own lr
    assert config["runtime"] == {"device": "cpu", "dtype": "fp32", "seed": 1337, "threads": 1}  # the count it computed with
    assert config["tokenizer"]["kind"] == "char" and config["versions"]["torch"]
    sample = captured.out.split("--- sample ---\n")[1].split("\n--------------")[0]
    assert len(sample) == 20 and set(sample) <= set(ROMEO)


def test_config_file_and_flags(tmp_path, corpus):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  n_layer: 2\ntrain:\n  lr: 0.002\nmax_steps: 4\nruntime:\n  seed: 5\n")
    out = tmp_path / "run"
    # The flag wins over the file; the file wins over the preset.
    assert main(["train", "--config", str(cfg), "--data", str(corpus), "--out", str(out), "--lr", "0.003",
                 "--eval-interval", "2", "--max-new-tokens", "0", *TINY_TRAIN[2:]]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["lr"] == 0.003 and config["train"]["max_steps"] == 4
    assert config["run"]["preset"] == "char-tiny" and config["runtime"]["seed"] == 5  # 'auto' on a CPU


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


# ---------------------------------------------------------------------------- nothing lost under faults


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and p.name != ".lock"}


def _steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _one_error(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights and metrics of an uninterrupted 6-step run, for bitwise comparisons."""
    root = tmp_path_factory.mktemp("reference")
    (root / "romeo.txt").write_text(ROMEO, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_CACHE", str(root / "cache"))
        assert train(root / "romeo.txt", root / "run") == 0
    return root / "run"


def test_out_at_a_users_folder_is_refused_and_force_writes_into_it(tmp_path, corpus, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "model.safetensors").write_text("x\n")
    (d / "metrics.jsonl").write_text('{"step": 1, "note": "keep"}\n')
    (d / "notes.txt").write_text("mine")
    before = _files(d)
    assert train(corpus, d) == 1
    assert "is not empty and is not a tinygpt run (it holds metrics.jsonl, model.safetensors, notes.txt)" \
        in _one_error(capsys)
    assert _files(d) == before
    assert train(corpus, d, "--force") == 0
    assert _steps(d) == list(range(1, 7)) and (d / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert train(corpus, tmp_path / "file") == 1
    assert "is a file, not a directory" in _one_error(capsys)
    assert main(["train", "--resume", str(d), "--force"]) == 1
    assert "--resume never replaces anything" in _one_error(capsys)


def test_a_run_another_process_writes_is_refused(tiny_run, corpus, tmp_path, capsys):
    from helpers import hold_lock

    before = _files(tiny_run)
    holder = hold_lock(tiny_run / ".lock")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    starting = hold_lock(fresh / ".lock")  # another `train --out fresh` that is still starting
    try:
        assert main(["train", "--resume", str(tiny_run), "--max-steps", "9", "--progress", "false"]) == 1
        assert f"the run {tiny_run} is in use by process {holder.pid} " in _one_error(capsys)
        assert train(corpus, tiny_run, "--force") == 1
        assert f"in use by process {holder.pid} " in _one_error(capsys)
        assert train(corpus, fresh) == 1
        assert f"in use by process {starting.pid} " in _one_error(capsys)
    finally:
        for child in (holder, starting):
            child.kill()
            child.wait(timeout=60)
    assert _files(tiny_run) == before and sorted(p.name for p in fresh.iterdir()) == [".lock"]
    assert train(corpus, fresh) == 0  # the holder died: its lock went with it


def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, corpus, reference, capsys):
    out = tmp_path / "run"
    assert train(corpus, out) == 0
    # What a kill at step 2 leaves: config, tokenizer, two metrics lines (one torn), a temp file.
    for name in ("trainer.pt", "model.safetensors", "last.safetensors"):
        (out / name).unlink()
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().split("\n", 1)[0] + '\n{"step": 2, "l')
    (out / ".tinygpt-last.safetensors.a1b2c3d4.tmp").write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert train(corpus, out) == 1
    assert f"{out} holds a run that stopped before its first checkpoint; start it over with --resume {out}" \
        in _one_error(capsys)
    assert main(["train", "--resume", str(out), "--progress", "false"]) == 0
    assert "stopped before its first checkpoint; starting it over from step 0" in capsys.readouterr().err
    assert _steps(out) == list(range(1, 7)) and not list(out.glob(".*.tmp"))
    assert (out / "last.safetensors").read_bytes() == (reference / "last.safetensors").read_bytes()


@pytest.mark.parametrize("full_at", [1, 2])  # the first checkpoint's trainer.pt, or the second's
def test_a_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path, corpus, reference, monkeypatch,
                                                                   capsys, full_at):
    from test_checkpoint import FullDisk

    from tinygpt import checkpoint as ckpt

    real, calls = ckpt._open_temp, []

    def open_temp(path):
        tmp, f = real(path)
        calls.append(path.name)
        return (tmp, FullDisk(f, 1000)) if calls.count("trainer.pt") == full_at and path.name == "trainer.pt" \
            else (tmp, f)

    monkeypatch.setattr(ckpt, "_open_temp", open_temp)
    out = tmp_path / "run"
    assert train(corpus, out) == 1
    error = _one_error(capsys)
    assert f"the disk is full: {out / 'trainer.pt'} needs about" in error
    assert error.endswith(f". Free some space, then continue with: tinygpt train --resume {out}")
    assert ("the previous trainer.pt is intact" if full_at == 2 else "nothing was replaced") in error
    assert "run the command again" not in error
    assert not list(out.glob(".*.tmp"))
    if full_at == 2:
        assert RunDir.open(out).load_state()["step"] == 3
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--progress", "false"]) == 0
    assert (out / "last.safetensors").read_bytes() == (reference / "last.safetensors").read_bytes()
    assert _steps(out) == list(range(1, 7))


def test_resume_from_another_directory_and_from_a_moved_corpus(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "data.txt").write_text(ROMEO, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", "--data", "data.txt", "--out", "run", "--max-steps", "3", "--eval-interval", "3",
                 "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    config = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    assert config["data"]["data"] == str(tmp_path / "a" / "data.txt")  # recorded absolute
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "--resume", "../a/run", "--max-steps", "6", "--progress", "false"]) == 0
    (tmp_path / "b" / "moved").mkdir()
    (tmp_path / "a" / "data.txt").rename(tmp_path / "b" / "moved" / "data.txt")
    assert main(["train", "--resume", "../a/run", "--max-steps", "9", "--progress", "false"]) == 1
    assert "no text found" in _one_error(capsys)
    # The same text at a new path is accepted (by content) and recorded.
    assert main(["train", "--resume", "../a/run", "--data", "moved/data.txt", "--max-steps", "9",
                 "--progress", "false"]) == 0
    config = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    assert config["data"]["data"] == str(tmp_path / "b" / "moved" / "data.txt")
    # A 0.1 run recorded the path as typed: resuming from elsewhere says what to do.
    config["data"]["data"] = "moved/data.txt"
    (tmp_path / "a" / "run" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "a/run", "--max-steps", "12", "--progress", "false"]) == 1
    assert "the run's data 'moved/data.txt' is not found from here" in _one_error(capsys)


def test_a_torn_metrics_line_and_metrics_past_a_used_budget(tiny_run, capsys):
    with open(tiny_run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "loss": 1.0}) + "\n" + '{"step": 8, "lo')  # trained past 6, then killed
    assert main(["train", "--resume", str(tiny_run), "--progress", "false"]) == 0  # budget (6 steps) used
    err = capsys.readouterr().err
    assert "already used its budget at step 6" in err and "dropped 1 damaged line(s)" in err
    assert _steps(tiny_run) == list(range(1, 7))
    with open(tiny_run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    assert main(["train", "--resume", str(tiny_run), "--max-steps", "9", "--progress", "false"]) == 0
    assert _steps(tiny_run) == list(range(1, 10))


def test_resume_refuses_another_preset(tiny_run, capsys):
    before = _files(tiny_run)
    assert main(["train", "--resume", str(tiny_run), "--preset", "char-small"]) == 1
    assert "--preset cannot change when resuming (the run has 'char-tiny')" in _one_error(capsys)
    assert _files(tiny_run) == before


@pytest.mark.parametrize("damage, message", [
    ("[1, 2]", "holds list, not a mapping of settings"),
    ('{"model": null}', "the 'model' section is null, not a mapping"),
    ('{"model": {"n_layer": 1}, "train": [3]}', "the 'train' section is [3], not a mapping"),
])
def test_a_damaged_config_is_one_line_on_sample_and_resume(tiny_run, capsys, damage, message):
    (tiny_run / "config.json").write_text(damage)
    for command in (["sample", str(tiny_run)], ["train", "--resume", str(tiny_run)]):
        assert main(command) == 1
        assert message in _one_error(capsys)


def test_a_corrupt_trainer_state_suggests_only_what_train_accepts(tiny_run, capsys):
    state = tiny_run / "trainer.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert main(["train", "--resume", str(tiny_run)]) == 1
    error = _one_error(capsys)
    assert "trainer.pt is unreadable (truncated or corrupt" in error and "start a new run" in error
    assert "--checkpoint" not in error and "weights_only" not in error


def test_ctrl_c_during_start_up_is_not_a_traceback(monkeypatch, capsys):
    import tinygpt.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(tinygpt.cli, "build_parser", interrupted)  # as if Ctrl+C hit while torch imported
    assert main(["train"]) == 130 and capsys.readouterr().err == "aborted\n"
    # What runs before main() (the console script's import) must not import torch.
    proc = subprocess.run([sys.executable, "-c", "import sys, tinygpt.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "False\n", proc.stderr


def test_signals_give_the_shells_exit_codes(tmp_path, corpus):
    # In a child process: a regression in signal handling must fail this test, not kill the suite.
    script = (
        "import os, signal, sys\n"
        "from tinygpt.cli import main\n"
        "from tinygpt.train import LambdaCallback, Session\n"
        "standard = Session.callbacks\n"
        "sig = getattr(signal, sys.argv[1])\n"
        "stop = LambdaCallback(lambda t, r: os.kill(os.getpid(), sig) if t.state.step == 2 else None)\n"
        "Session.callbacks = lambda self: standard(self) + [stop]\n"
        "sys.exit(main(sys.argv[2:]))\n")
    for name, code in (("SIGTERM", 143), ("SIGINT", 130)):
        args = ["--data", str(corpus), "--out", str(tmp_path / name), "--max-steps", "6", *TINY_TRAIN]
        proc = subprocess.run([sys.executable, "-c", script, name, "train", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == code, proc.stderr
        assert f"continue with: tinygpt train --resume {tmp_path / name}" in proc.stderr
        assert RunDir.open(tmp_path / name).load_state()["step"] == 2


def test_early_stop_ends_the_run_with_success_and_keeps_the_best(tmp_path, capsys):
    """At lr 1e-12 an update is below fp32's resolution: the weights, so the validation loss,
    stay exactly as they were, and --early-stop 2 ends the run at its third evaluation."""
    corpus = tmp_path / "romeo.txt"
    corpus.write_text(ROMEO, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), "--max-steps", "50", "--eval-interval", "2",
                 "--lr", "1e-12", "--min-lr", "0", "--warmup-steps", "0", "--early-stop", "2",
                 "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    err = capsys.readouterr().err
    assert "early stop: the validation loss has not improved for 2 evaluations" in err
    assert "continue with" not in err  # not an interruption to resume from
    run = RunDir(out)
    assert run.checkpoint_info("last").step == 6 and run.checkpoint_info("best").step == 2


def test_a_run_that_ends_still_warming_up_says_so(tiny_corpus, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"), "--max-steps", "2",
                 "--warmup-steps", "50", "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    err = capsys.readouterr().err
    assert "notice: the run ended at step 2, still warming up (50 steps): the learning rate never reached" in err
    assert main(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "s"), "--max-steps", "2",
                 "--warmup-steps", "2", "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    assert "warming up" not in capsys.readouterr().err
