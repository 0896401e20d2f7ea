"""Whole runs as a library: config.json, and run directories written before the run section."""

import json

import pytest

from tinygpt.train import Session


def test_config_json_holds_every_setting(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    session = Session.start({"data": str(corpus), "out": str(tmp_path / "run"), "n_layer": 1, "n_embd": 16,
                             "n_head": 2, "block_size": 8, "device": "cpu", "dtype": "fp32", "max_steps": 2,
                             "progress": False}, log=lambda _: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config) == {"model", "data", "run", "train", "runtime", "tokenizer", "data_key", "versions"}
    assert config["model"]["vocab_size"] == session.data.tokenizer.vocab_size == config["tokenizer"]["vocab_size"]
    assert config["data_key"] == session.data.meta["key"] and config["versions"]["torch"]
    assert (tmp_path / "run" / "tokenizer_config.json").is_file()
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing trained yet


def test_a_run_recorded_with_preset_out_and_name_under_train_resumes_exactly(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    settings = {"data": str(corpus), "n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8, "batch_size": 4,
                "device": "cpu", "dtype": "fp32", "max_steps": 6, "eval_interval": 3, "eval_batches": 1,
                "progress": False, "max_new_tokens": 0, "preset": "char-nano"}
    losses = {}

    def run(path, stop_at=None, resume=False):
        session = Session.resume(path, log=lambda _: None) if resume else \
            Session.start({**settings, "out": str(path)}, log=lambda _: None)

        class Record:  # losses by step; stop like Ctrl+C at ``stop_at``
            main_process_only = False

            def __getattr__(self, name):
                return lambda *a: None

            def on_step_end(self, trainer, record):
                losses.setdefault(path.name, {})[record["step"]] = record["loss"]
                if trainer.state.step == stop_at:
                    trainer.request_stop("test")

        session.fit(Record())
        return session

    run(tmp_path / "straight")
    run(tmp_path / "old", stop_at=3)
    # As an earlier tinygpt wrote it: no run section, preset/out/name in train.
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    config["train"].update(config.pop("run"))
    path.write_text(json.dumps(config))
    resumed = run(tmp_path / "old", resume=True)
    assert resumed.cfg.preset == "char-nano" and resumed.trainer.state.step == 6
    assert losses["old"] == losses["straight"]  # steps 1-3, then 4-6 after the resume
    again = json.loads(path.read_text())
    assert again["run"] == {"preset": "char-nano", "out": str(tmp_path / "old"), "name": "old"}
    assert "preset" not in again["train"]


class _Killed(BaseException):
    """A kill -9 between two writes, in-process: nothing after it runs (not even an except Exception)."""


def _settings(tmp_path, **extra):
    corpus = tmp_path / "t.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    return {"data": str(corpus), "n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8, "batch_size": 4,
            "device": "cpu", "dtype": "fp32", "max_steps": 9, "eval_interval": 3, "eval_batches": 1,
            "progress": False, "max_new_tokens": 0, "diagnostics": 3, **extra}


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_steps_lines_are_on_disk_before_its_checkpoint(tmp_path, monkeypatch):
    from tinygpt.run import RunDir

    seen = []
    real = RunDir.save_weights

    def save_weights(self, model, which, info):
        seen.append((info.step, _steps(self.metrics_path)[-1], _steps(self.diagnostics_path)[-1]))
        real(self, model, which, info)

    monkeypatch.setattr(RunDir, "save_weights", save_weights)
    Session.start({**_settings(tmp_path), "out": str(tmp_path / "run")}, log=lambda _: None).fit()
    assert seen and all(step == metrics == diagnostics for step, metrics, diagnostics in seen)


# Each write of a checkpoint (best and last weights, then the trainer state), killed before
# or after: the resumed run's metrics and diagnostics hold every step exactly once, with the
# uninterrupted run's losses.
@pytest.mark.parametrize("kill", ["before best", "before last", "before state", "after state"])
def test_a_kill_at_any_point_of_a_checkpoint_loses_no_line_and_repeats_none(tmp_path, monkeypatch, kill):
    from tinygpt.run import RunDir

    settings = _settings(tmp_path)
    Session.start({**settings, "out": str(tmp_path / "straight")}, log=lambda _: None).fit()
    when, what = kill.split()
    real = {"best": RunDir.save_weights, "last": RunDir.save_weights, "state": RunDir.save_state}

    def patched(name):
        def write(self, *args):
            at_six = json.loads(self.metrics_path.read_text().splitlines()[-1])["step"] == 6
            is_it = name == "state" or args[1] == name
            if at_six and is_it and when == "before":
                raise _Killed
            real[name](self, *args)
            if at_six and is_it and when == "after":
                raise _Killed
        return write

    with monkeypatch.context() as m:
        m.setattr(RunDir, "save_weights", patched("last" if what == "last" else "best"))
        m.setattr(RunDir, "save_state", patched("state"))
        session = Session.start({**settings, "out": str(tmp_path / "killed")}, log=lambda _: None)
        with pytest.raises(_Killed):
            session.fit()
    if what == "best" and when == "before" and not json.loads(
            (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[-1]).get("best"):
        pytest.fail("step 6 should improve on step 3 for this kill point to mean anything")
    Session.resume(tmp_path / "killed", log=lambda _: None).fit()
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        straight = [json.loads(line) for line in (tmp_path / "straight" / name).read_text().splitlines()]
        killed = [json.loads(line) for line in (tmp_path / "killed" / name).read_text().splitlines()]
        every = 1 if name == "metrics.jsonl" else 3
        assert [r["step"] for r in killed] == [r["step"] for r in straight] == list(range(every, 10, every))
        keep = ("step", "tokens", "loss", "train_loss", "val_loss", "best")
        assert [{k: r.get(k) for k in keep} for r in killed] == [{k: r.get(k) for k in keep} for r in straight]
