"""tinygpt prepare's token shards: the same tokens and batches as the raw text, and a folder
that refuses damage and bad requests with one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEXTS
from helpers import QUIET

from tinygpt.cli import main
from tinygpt.data import Batches, DataConfig, prepare_data
from tinygpt.data.shards import TokenShards, prepare_corpus
from tinygpt.errors import TinyGPTError
from tinygpt.train import Session


@pytest.fixture(scope="module")
def _prepared_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    corpus = root / "corpus"
    for name, text in TINY_TEXTS.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(text.encode("utf-8"))
    return prepare_corpus(DataConfig(data=str(corpus), tokenizer="gpt2"), root / "prepared",
                          workers=2, shard_tokens=7, progress=False, **QUIET)


@pytest.fixture
def prepared(_prepared_once, tmp_path):
    """tiny_corpus's texts prepared with 2 worker processes into 7-token shards (many
    boundaries): once for the module (worker processes take a while to start), a copy each."""
    return Path(shutil.copytree(_prepared_once, tmp_path / "prepared"))


def test_prepared_shards_hold_the_raw_texts_tokens_split_and_bytes(tiny_corpus, prepared):
    raw = prepare_data(DataConfig(data=str(tiny_corpus), tokenizer="gpt2", val_fraction=0.2), **QUIET)
    shards = prepare_data(DataConfig(data=str(prepared), tokenizer="gpt2", val_fraction=0.2), **QUIET)
    index = json.loads((prepared / "index.json").read_text())
    assert len(index["shards"]) > 10 and all(s["tokens"] == 7 for s in index["shards"][:-1])
    assert np.array_equal(np.asarray(raw.train), np.asarray(shards.train))
    assert np.array_equal(np.asarray(raw.val), np.asarray(shards.val))
    for key in ("n_tokens", "val_start", "n_bytes", "train_bytes", "val_bytes", "vocab_size"):
        assert raw.meta[key] == shards.meta[key], key
    # The split is chosen when the corpus is read, and it is part of the run's data key.
    other = prepare_data(DataConfig(data=str(prepared), tokenizer="gpt2", val_fraction=0.1), **QUIET)
    assert other.meta["key"] != shards.meta["key"] and len(other.val) < len(shards.val)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_batches_from_shards_equal_batches_from_the_raw_text(tiny_corpus, prepared, mode):
    raw = prepare_data(DataConfig(data=str(tiny_corpus), tokenizer="gpt2"), **QUIET)
    shards = prepare_data(DataConfig(data=str(prepared)), **QUIET)
    a = Batches(raw.train, 4, 16, mode=mode, seed=5)
    b = Batches(shards.train, 4, 16, mode=mode, seed=5)
    for _ in range(30):
        x, y = next(a)[:2]
        u, v = next(b)[:2]
        assert x.dtype == u.dtype and bool((x == u).all()) and bool((y == v).all())


def test_the_shard_view_indexes_like_one_array():
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 1000, 50).astype("<u2")
    view = TokenShards([whole[:7], whole[7:8], whole[8:30], whole[30:]]).view(3, 45)
    part = whole[3:45]
    assert len(view) == len(part) and view.dtype == part.dtype
    index = rng.integers(0, len(part), (5, 9))
    assert np.array_equal(view[index], part[index])
    for s in (slice(0, 42), slice(4, 6), slice(5, 33), slice(40, 100), slice(10, 2), slice(1, 30, 4)):
        assert np.array_equal(view[s], part[s]), s
    assert view[0] == part[0] and view[-1] == part[-1] and list(view) == list(part)
    with pytest.raises(IndexError):
        view[np.array([42])]


def test_training_on_the_prepared_corpus_takes_the_raw_texts_steps(tiny_corpus, prepared, tmp_path):
    settings = {"tokenizer": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8, "batch_size": 4,
                "device": "cpu", "dtype": "fp32", "max_steps": 4, "eval_interval": 2, "eval_batches": 1,
                "progress": False, "max_new_tokens": 0}

    def losses(data, out):
        Session.start({**settings, "data": str(data), "out": str(tmp_path / out)}, **QUIET).fit()
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]

    assert losses(tiny_corpus, "run-raw") == losses(prepared, "run-prepared")
    recorded = json.loads((tmp_path / "run-prepared" / "config.json").read_text())
    assert recorded["data"]["tokenizer"] == "gpt2" and recorded["tokenizer"]["kind"] == "gpt2"


def test_a_prepared_corpus_fixes_its_tokenizer(prepared, tmp_path):
    with pytest.raises(TinyGPTError, match="prepared with the gpt2 tokenizer, not bpe; drop --tokenizer"):
        Session.start({"data": str(prepared), "tokenizer": "bpe", "out": str(tmp_path / "r")}, **QUIET)
    assert not (tmp_path / "r").exists()


def test_prepare_refuses_a_folder_that_holds_files_and_writes_nothing(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TinyGPTError, match="already exists and is not an empty folder"):
        prepare_corpus(DataConfig(data=str(tiny_corpus)), out, progress=False, **QUIET)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert (out / "keep.txt").read_text() == "mine"


def test_a_damaged_prepared_folder_is_refused_with_one_line(prepared, tmp_path):
    index = json.loads((prepared / "index.json").read_text())
    (prepared / index["shards"][1]["name"]).write_bytes(b"\0" * 3)   # truncated
    with pytest.raises(TinyGPTError, match=r"shard-00001.bin has 3 bytes, the index says 14; .*prepare it again"):
        prepare_data(DataConfig(data=str(prepared)), **QUIET)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 14)
    index["shards"][1]["name"] = "../outside.bin"
    (prepared / "index.json").write_text(json.dumps(index))
    with pytest.raises(TinyGPTError, match="names a shard '../outside.bin' that is not a file of that folder"):
        prepare_data(DataConfig(data=str(prepared)), **QUIET)
    index["shards"][1]["name"] = "link.bin"
    (prepared / "link.bin").symlink_to(outside)
    (prepared / "index.json").write_text(json.dumps(index))
    with pytest.raises(TinyGPTError, match="names a shard 'link.bin' that is not a file of that folder"):
        prepare_data(DataConfig(data=str(prepared)), **QUIET)


def test_the_prepare_command(tiny_corpus, tmp_path, capsys):
    assert main(["prepare", str(tiny_corpus), "--out", str(tmp_path / "p"), "--workers", "1",
                 "--shard-tokens", "1k", "--progress", "false"]) == 0
    out = capsys.readouterr().err   # the log goes to stderr
    assert "4,110 tokens in 5 shard(s)" in out and f"tinygpt train --data {tmp_path / 'p'}" in out
    index = json.loads((tmp_path / "p" / "index.json").read_text())
    assert index["tokenizer"]["kind"] == "char" and index["dtype"] == "uint16"
    assert main(["prepare", str(tiny_corpus), "--out", str(tmp_path / "p")]) == 1
    assert "already exists" in capsys.readouterr().err
