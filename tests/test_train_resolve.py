"""Settings resolved once: layering over presets, each decision made exactly once, what
config.json records, the resume policy, run naming, and the measured training dtype."""

import json
from pathlib import Path

import pytest
import torch
from helpers import counted

from tinygpt import device as device_module
from tinygpt import presets as presets_module
from tinygpt.errors import TinyGPTError
from tinygpt.train import (
    DEFAULT_TIME_BUDGET,
    LambdaCallback,
    RunSection,
    Session,
    recipe,
    resolve_new_run,
    resumed_run_config,
)
from tinygpt.train import resolve as resolve_module
from tinygpt.train.resolve import data_name, run_dir

QUIET = {"log": lambda _: None}
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8, "batch_size": 4, "device": "cpu",
        "eval_interval": 2, "eval_batches": 1, "progress": False, "max_new_tokens": 0}


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello there, general kenobi\n" * 50)
    return path


# ---------------------------------------------------------------------------- each decision once

@pytest.mark.parametrize("budget", ["steps", "time"])
def test_a_run_is_resolved_once_and_config_json_is_what_was_resolved(tmp_path, text, monkeypatch, budget):
    monkeypatch.setattr(resolve_module, "cpu_has_bf16", lambda: True)  # so auto is measured on any CPU
    devices = counted(monkeypatch, device_module.resolve_device)
    measured = counted(monkeypatch, resolve_module.measure_training_dtype, torch.bfloat16)
    named = counted(monkeypatch, presets_module.resolve_preset)
    timed = counted(monkeypatch, recipe.preset_for_time, "char-nano")
    seeds = counted(monkeypatch, device_module.fresh_seed)
    settings = {**TINY, "data": str(text), "out": str(tmp_path / "run"), "dtype": "auto", "seed": "none",
                **({"max_steps": 2} if budget == "steps" else {"max_time": "1m"})}
    session = Session.start(settings, **QUIET)
    cfg = session.cfg
    assert len(devices) == 1 and len(measured) == 1 and len(seeds) == 1
    assert (len(named), len(timed)) == ((1, 0) if budget == "steps" else (0, 1))
    assert cfg.preset == ("char-tiny" if budget == "steps" else "char-nano") and cfg.dtype == torch.bfloat16
    assert session.trainer.dtype == cfg.dtype and session.trainer.device == cfg.device == torch.device("cpu")
    # config.json holds exactly the resolved settings, with every choice as made.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config) == {"model", "data", "run", "train", "runtime", "tokenizer", "data_key", "versions"}
    assert {k: config[k] for k in cfg.RECORDED} == cfg.record()
    assert config["run"] == {"preset": cfg.preset, "out": str(tmp_path / "run"), "name": "run"}
    assert config["runtime"] == {"device": "cpu", "dtype": "bf16", "seed": cfg.seed, "threads": 1}  # as computed
    assert isinstance(cfg.seed, int)
    assert config["model"]["vocab_size"] == session.data.tokenizer.vocab_size
    assert config["data"]["data"] == str(text) and config["train"]["lr"] == 6e-3  # the preset's lr
    # The rules' values are derived, not recorded: a resume derives them again from what it has.
    assert config["train"]["max_time"] == (None if budget == "steps" else 60.0) and config["train"]["min_lr"] is None
    assert cfg.train.final_lr == 6e-3 / 10 and cfg.train.time_limit == (None if budget == "steps" else 60.0)

    session.fit(LambdaCallback(lambda trainer, record: record["step"] == 2 and trainer.request_stop("test")))
    devices.clear(), measured.clear(), named.clear(), timed.clear(), seeds.clear()
    torch.set_num_threads(2)  # a resume computes with its run's thread count, whatever the process had
    try:
        resumed = Session.resume(tmp_path / "run", {"max_steps": 3}, **QUIET)  # the record is the resolution
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert (len(devices), len(measured), len(named), len(timed), len(seeds)) == (1, 0, 0, 0, 0)
    assert (resumed.cfg.dtype, resumed.cfg.seed, resumed.cfg.preset) == (torch.bfloat16, cfg.seed, cfg.preset)


def test_a_dtype_that_was_not_measured_is_recorded_as_decided(tmp_path, text, monkeypatch):
    monkeypatch.setattr(resolve_module, "cpu_has_bf16", lambda: False)
    measured = counted(monkeypatch, resolve_module.measure_training_dtype, torch.bfloat16)
    session = Session.start({**TINY, "data": str(text), "out": str(tmp_path / "run"), "dtype": "auto",
                             "max_steps": 2}, **QUIET)
    assert measured == [] and session.cfg.dtype == torch.float32 and session.cfg.runtime.dtype == "fp32"


def test_the_default_budget_and_min_lr_follow_what_a_resume_changes(tmp_path, text):
    """A run given no budget trains for the default time; a resume that gives a step budget
    trains to it instead, and one that lowers --lr lowers the final lr with it."""
    settings = {**TINY, "data": str(text), "out": str(tmp_path / "run"), "dtype": "fp32", "preset": "char-nano"}
    session = Session.start(settings, **QUIET)
    assert session.cfg.train.time_limit == DEFAULT_TIME_BUDGET and session.cfg.train.max_time is None
    session.fit(LambdaCallback(lambda trainer, record: trainer.request_stop("test")))  # one step, saved
    resumed = Session.resume(tmp_path / "run", {"max_steps": 4, "lr": 1e-3}, **QUIET)
    assert resumed.cfg.train.time_limit is None and resumed.cfg.train.final_lr == 1e-3 / 10
    assert resumed.describe()[2].startswith("budget: steps 4;")


# ---------------------------------------------------------------------------- layering and the decisions

def test_layers_lay_over_the_preset_and_auto_is_resolved():
    cfg = resolve_new_run({"lr": 0.5}, {"n_layer": 2, "device": "cpu", "dtype": "fp32", "max_steps": 5},
                          vocab_size=40, **QUIET)
    assert cfg.preset == "char-tiny" and cfg.path.name.startswith("shakespeare-char-tiny-")  # auto on a CPU
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (2, 192, 128)  # flag < preset < default
    assert cfg.train.lr == 0.5 and cfg.seed == 1337 and cfg.model.vocab_size == 40
    baby = resolve_new_run({"preset": "baby", "device": "cpu", "dtype": "fp32"}, vocab_size=40, **QUIET)
    assert baby.model.n_embd == 384 and baby.train.batch_size == 64 and baby.train.lr == 1e-3


def test_shape_flags_are_checked_with_the_named_preset_under_them(text, tmp_path):
    flags = {"preset": "char-nano", "n_embd": 64, "device": "cpu", "dtype": "fp32", "max_steps": 5}
    cfg = resolve_new_run(flags, vocab_size=40, **QUIET)  # char-nano's 4 heads, not the defaults' 6
    assert (cfg.model.n_embd, cfg.model.n_head, cfg.model.n_layer) == (64, 4, 4)
    tiny = {k: v for k, v in TINY.items() if k != "n_head"}
    session = Session.start({**tiny, "preset": "char-nano", "n_embd": 64, "data": str(text),
                             "out": str(tmp_path / "run")}, **QUIET)
    assert session.cfg.model.n_head == 4
    from tinygpt.train.resolve import given_settings

    assert given_settings({"n_embd": 64}).model.n_embd == 384  # under auto: checked once the preset is chosen
    with pytest.raises(TinyGPTError, match=r"n_embd \(65\) must be divisible by n_head \(4\)"):
        given_settings({**flags, "n_embd": 65})  # a named preset's: before the data is read


def test_no_seed_draws_one():
    a, b = (resolve_new_run({"seed": "none", "device": "cpu", "dtype": "fp32", "max_steps": 5}, vocab_size=40,
                            **QUIET) for _ in range(2))
    assert isinstance(a.seed, int) and a.seed != b.seed


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
    with pytest.raises(TinyGPTError, match="--preset cannot change when resuming"):
        resumed_run_config({**saved, "run": {"preset": "char-tiny"}}, {"preset": "baby"})
    assert resumed_run_config(saved, {"schedule": "wsd"}).train.schedule == "wsd"  # a schedule may change


def test_older_layouts_read_into_their_sections():
    # 0.1 kept device/dtype/seed in the train section, and until the run section preset/out/name;
    # leaf names are unique, so each lands where it lives now.
    cfg = resumed_run_config({"model": {"vocab_size": 5}, "train": {"device": "cpu", "dtype": "fp32", "seed": 3,
                                                                    "preset": "char-nano", "out": "x", "name": "y"}})
    assert (cfg.runtime.device, cfg.runtime.dtype, cfg.runtime.seed) == ("cpu", "fp32", 3)
    assert (cfg.run.preset, cfg.run.out, cfg.run.name) == ("char-nano", "x", "y")


def test_run_directory_names():
    assert data_name("books/*.txt") == "books"
    for spec, stem in [("my_book.txt", "my_book"), ("notes/", "notes"), ("books/**/*.txt", "books"), ("*.txt", "data"),
                       ("/", "data"), ("shakespeare", "shakespeare")]:
        assert data_name(spec) == stem, spec
    name = run_dir(RunSection(), "books-char-tiny")
    assert name.parent == Path("runs") and name.name.startswith("books-char-tiny-20")
    assert run_dir(RunSection(name="mine"), "x").as_posix() == "runs/mine"
    assert run_dir(RunSection(out="/tmp/x", name="mine"), "x").as_posix() == "/tmp/x"


def test_measuring_the_training_dtype_leaves_model_and_random_state_as_they_were():
    from tinygpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, dropout=0.1))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng, lines = torch.get_rng_state(), []
    assert resolve_module.measure_training_dtype(model, 4, lines.append) in (torch.float32, torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert lines[0].startswith("dtype auto: ") and "x fp32's speed" in lines[0]
