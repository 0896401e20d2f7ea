"""The run directory: creating and opening runs, config and tokenizer, typed checkpoint
metadata (and 0.1's string metadata), loading without init, and the paths other parts use."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, make_run, random_ids, same_weights

from tinygpt import checkpoint as ckpt
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT
from tinygpt.run import CheckpointInfo, RunDir

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1" / "run"


def test_create_refuses_an_existing_run_and_open_needs_one(tmp_path):
    run = RunDir.create(tmp_path / "a" / "run")
    assert run.path.is_dir() and not RunDir.is_run(run.path)
    run.write_config({"model": {}, "versions": {"tinygpt": "0.1.0"}})
    assert RunDir.is_run(run.path)
    with pytest.raises(TinyGPTError, match="holds a run that stopped before its first checkpoint; start it over "
                                           "with --resume"):
        RunDir.create(run.path)
    run.save_state({"step": 1})
    with pytest.raises(TinyGPTError, match="already holds a run; continue it with --resume .* or pass --force"):
        RunDir.create(run.path)
    with pytest.raises(TinyGPTError, match="no run directory at"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyGPTError, match="no run config at"):
        RunDir.open(tmp_path / "empty")


def test_config_round_trip_and_damage(tmp_path):
    _, config = make_run(tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    assert run.read_config() == config
    assert run.model_config().vocab_size == config["tokenizer"]["vocab_size"] == 30
    path = run.path / "config.json"
    path.write_text("{not json")
    with pytest.raises(TinyGPTError, match="is not valid JSON"):
        RunDir.open(run.path).read_config()
    path.write_text("[1, 2]")
    with pytest.raises(TinyGPTError, match="holds list, not a mapping of settings; the run directory is damaged"):
        RunDir.open(run.path).read_config()
    path.write_text(json.dumps({"tokenizer": config["tokenizer"]}))
    with pytest.raises(TinyGPTError, match="no model section"):
        RunDir.open(run.path).model_config()


def test_tokenizer_must_match_the_model(tmp_path):
    make_run(tmp_path / "run", config_overrides={"vocab_size": 31})
    with pytest.raises(TinyGPTError, match="has 30 tokens but config.json says 31; the run directory is inconsistent"):
        RunDir.open(tmp_path / "run").load_tokenizer()


def test_checkpoint_info_is_typed_json(tmp_path):
    info = CheckpointInfo(step=12, tokens=3072, val_loss=None)
    make_run(tmp_path / "run", info=info, which=("best", "last"))
    run = RunDir.open(tmp_path / "run")
    assert run.checkpoint_info("last") == info
    raw = ckpt.read_metadata(run.weights_path("last"))
    assert json.loads(raw["tinygpt"]) == {"step": 12, "tokens": 3072, "val_loss": None}


def test_v0_1_string_metadata_still_reads():
    # tinygpt 0.1 wrote each value with str(): {"step": "6", "tokens": "384", "val_loss": "3.58..."}.
    run = RunDir.open(FIXTURE)
    raw = ckpt.read_metadata(run.weights_path("best"))
    assert "tinygpt" not in raw and raw["step"] == "6"
    info = run.checkpoint_info("best")
    assert info.step == 6 and info.tokens == 384 and info.val_loss == float(raw["val_loss"])
    assert CheckpointInfo.from_metadata({"step": "3", "val_loss": "None"}) == CheckpointInfo(3, None, None)


def test_best_falls_back_to_last(tmp_path):
    make_run(tmp_path / "run", which=("last",))
    run = RunDir.open(tmp_path / "run")
    assert run.weights_path("best") == run.path / "last.safetensors"
    assert run.weights_path("elsewhere.safetensors") == Path("elsewhere.safetensors")


@pytest.mark.parametrize("modern", [False, True])
def test_load_model_assigns_the_file_without_init(tmp_path, monkeypatch, modern):
    kw = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False) if modern else {}
    saved, _ = make_run(tmp_path / "run", **kw)
    monkeypatch.setattr(GPT, "_init_weights", lambda self, module: pytest.fail("random init while loading"))
    model, info, path = RunDir.open(tmp_path / "run").load_model("best")
    assert same_weights(model, saved) and not model.training and info.step == 120
    assert path == tmp_path / "run" / "model.safetensors"
    assert (model.lm_head.weight is model.transformer.wte.weight) == (not modern)
    idx = random_ids((2, TINY_MODEL["block_size"]), vocab=30)
    with torch.no_grad():  # derived buffers (RoPE tables) were computed, not left on meta
        assert torch.equal(model(idx).logits, saved.eval()(idx).logits)


def test_paths_for_results_and_adapters(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics_path == tmp_path / "metrics.jsonl" and run.state_path == tmp_path / "trainer.pt"
    assert run.adapter_paths == (tmp_path / "adapter.safetensors", tmp_path / "adapter.json")
    assert run.results_path("eval") == tmp_path / "eval.json"
    assert run.pictures_dir("plots") == tmp_path / "plots"
    with pytest.raises(ValueError):
        run.pictures_dir("holiday")
