"""Whole runs as a library: settings layering with presets, the resume policy, run naming, config.json."""

import json

import pytest
import torch

from tinygpt.errors import TinyGPTError
from tinygpt.train import (
    RunConfig,
    Session,
    default_run_dir,
    new_run_config,
    resumed_run_config,
)


def test_layers_lay_over_the_preset_and_auto_is_resolved():
    cfg = new_run_config({"lr": 0.5}, {"n_layer": 2, "device": "cpu"})
    assert cfg.train.preset == "char-tiny"  # 'auto' on a CPU
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (2, 192, 128)  # flag < preset < default
    assert cfg.train.lr == 0.5 and cfg.runtime.seed == 1337
    baby = new_run_config({"preset": "baby", "device": "cpu"})
    assert baby.model.n_embd == 384 and baby.train.batch_size == 64 and baby.train.lr == 1e-3
    assert cfg.model.vocab_size is None  # known only once the tokenizer is


def test_no_seed_draws_one_and_records_it():
    a, b = new_run_config({"seed": "none", "device": "cpu"}), new_run_config({"seed": "none", "device": "cpu"})
    assert isinstance(a.runtime.seed, int) and a.runtime.seed != b.runtime.seed


def test_resume_allows_training_changes_and_refuses_model_or_data_changes():
    saved = {"model": {"n_layer": 2, "vocab_size": 40}, "data": {"data": "x.txt"}, "train": {"max_steps": 10},
             "runtime": {"seed": 7, "device": "cpu"}}
    cfg = resumed_run_config(saved, {"max_steps": "20", "dtype": "fp32"})
    assert cfg.train.max_steps == 20 and cfg.runtime.dtype == "fp32" and cfg.runtime.seed == 7
    assert cfg.model.n_layer == 2 and cfg.model.vocab_size == 40
    assert resumed_run_config(saved, {"n_layer": 2}).model.n_layer == 2  # the same value is fine
    with pytest.raises(TinyGPTError, match="--n-layer cannot change when resuming"):
        resumed_run_config(saved, {"n_layer": 3})
    with pytest.raises(TinyGPTError, match="--tokenizer cannot change when resuming"):
        resumed_run_config(saved, {}, {"data": {"tokenizer": "gpt2"}})
    with pytest.raises(TinyGPTError, match="--optimizer cannot change when resuming"):  # its state would not fit
        resumed_run_config(saved, {"optimizer": "muon"})
    assert resumed_run_config(saved, {"schedule": "wsd"}).train.schedule == "wsd"  # a schedule may change


def test_v0_1_configs_keep_their_runtime_settings():
    # 0.1 kept device/dtype/seed in the train section; leaf names are unique, so they land in runtime.
    cfg = resumed_run_config({"model": {"vocab_size": 5}, "train": {"device": "cpu", "dtype": "fp32", "seed": 3}})
    assert (cfg.runtime.device, cfg.runtime.dtype, cfg.runtime.seed) == ("cpu", "fp32", 3)


def test_run_directory_names():
    cfg = new_run_config({"data": "books/*.txt", "device": "cpu"})
    name = default_run_dir(cfg)
    assert name.parent.name == "runs" and name.name.startswith("books-char-tiny-")
    for spec, stem in [("my_book.txt", "my_book"), ("notes/", "notes"), ("books/**/*.txt", "books"), ("*.txt", "data"),
                       ("/", "data"), ("shakespeare", "shakespeare")]:
        assert default_run_dir(new_run_config({"data": spec, "device": "cpu"})).name.startswith(f"{stem}-char-tiny-")
    assert default_run_dir(new_run_config({"name": "mine", "device": "cpu"})).as_posix() == "runs/mine"
    assert default_run_dir(new_run_config({"out": "/tmp/x", "name": "mine", "device": "cpu"})).as_posix() == "/tmp/x"


def test_config_json_holds_every_setting(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    session = Session.start({"data": str(corpus), "out": str(tmp_path / "run"), "n_layer": 1, "n_embd": 16,
                             "n_head": 2, "block_size": 8, "device": "cpu", "progress": False}, log=lambda _: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config) == {"model", "data", "train", "runtime", "tokenizer", "data_key", "versions"}
    assert config["model"]["vocab_size"] == session.data.tokenizer.vocab_size == config["tokenizer"]["vocab_size"]
    assert config["data_key"] == session.data.meta["key"] and config["versions"]["torch"]
    assert RunConfig  # the schema config.json follows
    assert (tmp_path / "run" / "tokenizer_config.json").is_file()
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing trained yet


def test_auto_dtype_on_a_cpu_is_measured_on_the_model_once_and_recorded(tmp_path, monkeypatch):
    import tinygpt.train.session as session_module

    corpus = tmp_path / "t.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    monkeypatch.setattr(session_module, "cpu_has_bf16", lambda: True)
    measured = []
    monkeypatch.setattr(session_module, "measure_training_dtype",
                        lambda model, batch_size, log: measured.append(batch_size) or torch.bfloat16)
    settings = {"data": str(corpus), "out": str(tmp_path / "run"), "n_layer": 1, "n_embd": 16, "n_head": 2,
                "block_size": 8, "batch_size": 4, "device": "cpu", "dtype": "auto", "max_steps": 2,
                "eval_interval": 2, "eval_batches": 1, "progress": False, "sample_tokens": 0}
    session = Session.start(settings, log=lambda _: None)
    assert measured == [4] and session.trainer.dtype == torch.bfloat16
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["dtype"] == "bf16"
    session.fit()
    monkeypatch.setattr(session_module, "measure_training_dtype", lambda *a: pytest.fail("a resume measured again"))
    assert Session.resume(tmp_path / "run", {"max_steps": 3}, log=lambda _: None).trainer.dtype == torch.bfloat16


def test_measuring_the_training_dtype_leaves_model_and_random_state_as_they_were():
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.train.session import measure_training_dtype

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, dropout=0.1))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng, lines = torch.get_rng_state(), []
    assert measure_training_dtype(model, 4, lines.append) in (torch.float32, torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert lines[0].startswith("dtype auto: ") and "x fp32's speed" in lines[0]
