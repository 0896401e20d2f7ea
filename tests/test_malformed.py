"""Malformed input, as a table: broken configs, tokenizers, shard indexes and weight files, in
run directories and Hugging Face directories. Each must end ``tinygpt sample`` with exit 1
and one line naming the problem: no traceback, no wrong advice, nothing built first.

To cover a new kind of input, add a row: (id, what the directory starts as, how to break it,
the line expected). ``hf`` rows start from a transformers GPT-2 save, ``run`` rows from the
session's trained run.
"""

import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_interop_hf_dir import saved

from tinygpt.cli import main

transformers = pytest.importorskip("transformers")


def _config(key, value):
    def brk(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return brk


def _run_model(key, value):
    def brk(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"][key] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return brk


def _sharded(weight_map):
    def brk(d):
        (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
        wm = weight_map(d) if callable(weight_map) else weight_map
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return brk


def _all_in_one_shard(d):
    from safetensors import safe_open

    with safe_open(str(d / "model-00001-of-00001.safetensors"), "pt") as f:
        return {k: "model-00001-of-00001.safetensors" for k in f.keys()}


def _named(shard):
    def wm(d):
        return {k: shard for k in _all_in_one_shard(d)}
    return wm


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def _pickled_bin(d):
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)


def _wider_tokenizer(d):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [chr(c) for c in range(0x100, 0x100 + 80)]  # 80 ids for a 50-id model
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(d / "tokenizer.json"))


def _truncated_weights(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _nonfinite_run(d):
    from safetensors.torch import load_file

    for name in ("model.safetensors", "last.safetensors"):
        tensors = load_file(str(d / name))
        key = next(iter(tensors))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
        save_file(tensors, str(d / name))


def _link(name, target):
    def brk(d):
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(target)
    return brk


CASES = [
    # Hugging Face directories
    ("hf-n_layer-a-string", "hf", _config("n_layer", "2"), r"config.json: --n-layer must be a positive whole number, got '2'"),
    ("hf-n_embd-a-float", "hf", _config("n_embd", 1e9), r"--n-embd must be a positive whole number, got 1000000000.0"),
    ("hf-n_embd-huge", "hf", _config("n_embd", 1_000_000_000),
     r"a model 1000000000 wide with 50 tokens is too large to exist"),
    ("hf-n_layer-huge", "hf", _config("n_layer", 100_000), r"declares a model of [0-9,]+ parameters"),
    ("hf-dropout-text", "hf", _config("resid_pdrop", "lots"), r"config.json: .*the config is damaged"),
    ("hf-config-a-list", "hf", lambda d: (d / "config.json").write_text("[1, 2]"),
     r"config.json holds list, not a mapping of settings"),
    ("hf-config-without-model_type", "hf", lambda d: (d / "config.json").write_text('{"n_layer": 2}'),
     r"is neither a tinygpt run's .* nor a Hugging Face model's"),
    ("hf-index-weight_map-a-list", "hf", _sharded(["a", "b"]), r"has no weight_map of tensor name -> shard file"),
    ("hf-index-parent", "hf", _sharded(_named("../outside.safetensors")),
     r"names '\.\./outside\.safetensors', which is not a file of"),
    ("hf-index-absolute", "hf", _sharded(_named("/etc/passwd")), r"names '/etc/passwd', which is not a file of"),
    ("hf-index-missing-shard", "hf", _sharded(_named("model-00009-of-00009.safetensors")),
     r"names the shard model-00009-of-00009.safetensors, which .* lacks; the model directory is damaged"),
    ("hf-pickle-runs-code", "hf", _pickled_bin, r"unpickling them could run code: refused"),
    ("hf-more-ids-than-the-model", "hf", _wider_tokenizer, r"the tokenizer has 80 ids but the model only 50"),
    ("hf-truncated-weights", "hf", _truncated_weights,
     r"model.safetensors is unreadable .*; the model directory is damaged: download or save it again"),
    ("hf-weights-link-out", "hf", _link("model.safetensors", "/etc/hostname"), r"is a link out of the model directory"),
    # Run directories
    ("run-n_layer-huge", "run", _run_model("n_layer", 100_000), r"declares a model of [0-9,]+ parameters"),
    ("run-n_head-zero", "run", _run_model("n_head", 0), r"--n-head must be a positive whole number, got 0"),
    ("run-config-link-out", "run", _link("config.json", "/etc/hostname"), r"config.json is a link out of the run"),
    ("run-metrics-link-out", "run", _link("metrics.jsonl", "/etc/hostname"), r"metrics.jsonl is a link out of the run"),
    ("run-nonfinite-weights", "run", _nonfinite_run, r"holds non-finite weights"),
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("hf"), "gpt2")[1]


@pytest.mark.parametrize("name, start, brk, expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line(name, start, brk, expected, hf_dir, trained_run, tmp_path, capsys):
    d = tmp_path / name
    shutil.copytree(hf_dir if start == "hf" else trained_run, d, symlinks=True)
    brk(d)
    assert main(["sample", str(d), "--prompt", "ab", "--max-new-tokens", "2"]) == 1
    out, err = capsys.readouterr()
    assert "this ran" not in out
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    if start == "hf":
        assert "--checkpoint" not in err  # a run's advice, not an HF directory's
    import re
    assert re.search(expected, err), err


def test_an_absurd_config_is_refused_before_anything_is_built(trained_run, tmp_path):
    """Within a second-scale bound and well under 100 MB: nothing of 100000 layers is built."""
    d = tmp_path / "run"
    shutil.copytree(trained_run, d)
    _run_model("n_layer", 100_000)(d)
    script = (
        "import resource, sys, time\n"
        "from tinygpt import source\n"
        "from tinygpt.errors import TinyGPTError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    source.open_source(sys.argv[1])\n"
        "except TinyGPTError as e:\n"
        "    print(type(e).__name__, time.perf_counter() - t, "
        "(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    done = subprocess.run([sys.executable, "-c", script, str(d)], capture_output=True, text=True, timeout=120)
    kind, seconds, megabytes = done.stdout.split()
    # Before the check it built layer after layer for minutes, past 1.2 GB.
    assert kind == "TinyGPTError" and float(megabytes) < 100 and float(seconds) < 10, done.stdout


def test_a_config_counts_its_parameters_without_building_them(tiny_model):
    from tinygpt.model import GPT

    cfg = tiny_model.config
    pad = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd * (1 if cfg.tie_embeddings else 2)
    assert cfg.stored_params() == GPT(cfg).num_params() - pad
    assert torch.device("meta") != next(tiny_model.parameters()).device
