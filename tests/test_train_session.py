"""Whole runs as a library: config.json, and run directories written before the run section."""

import json

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
