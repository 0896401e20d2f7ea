"""The tokenize-and-cache step: round trips, cache keys, crash safety, byte accounting."""


import json

import numpy as np
import pytest
from conftest import TINY_TEXTS
from helpers import QUIET, data_dirs, decode_all

from tinygpt import tokenizer
from tinygpt.config import cache_dir
from tinygpt.data import DataConfig, cache, prepare_data, token_dtype
from tinygpt.errors import TinyGPTError


def corpus_text(order=("a.txt", "c.txt", "sub/b.txt")):
    """The tiny corpus as prepare_data reads it: files sorted by relative path."""
    return [TINY_TEXTS[name] for name in order]


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": 1.0}, "--val-fraction must be at least 0 and below 1"),
    ({"val_fraction": -0.1}, "--val-fraction"),
    ({"bpe_vocab_size": 256}, "--bpe-vocab-size must be at least 257"),
    ({"encoding": "klingon"}, "unknown text encoding 'klingon'"),
    ({"encoding": "rot13"}, "unknown text encoding 'rot13'"),
    ({"tokenizer": "words"}, "unknown value 'words' for --tokenizer"),
    ({"sampling": "shuffled"}, "unknown value 'shuffled' for --sampling"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(TinyGPTError, match=match):
        DataConfig(**kwargs)


def test_token_dtype():
    assert token_dtype(65) == np.dtype("<u2")
    assert token_dtype(50257) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")   # ids 0..65535 still fit
    assert token_dtype(65537) == np.dtype("<u4")
    assert token_dtype(70000) == np.dtype("<u4")


def test_char_round_trip_and_meta(tiny_corpus):
    d = prepare_data(DataConfig(data=str(tiny_corpus), val_fraction=0.25), **QUIET)
    text = "".join(corpus_text())   # char: no separators between files
    assert decode_all(d) == text
    m = d.meta
    assert m["n_tokens"] == len(text) == len(d.train) + len(d.val)
    assert m["val_start"] == len(text) - round(len(text) * 0.25) == len(d.train)
    assert m["files"] == ["a.txt", "c.txt", "sub/b.txt"]
    assert m["n_bytes"] == len(text.encode())
    assert m["train_bytes"] == len(d.tokenizer.decode(d.train.tolist()).encode())
    assert m["train_bytes"] + m["val_bytes"] == m["n_bytes"]
    assert d.directory == cache_dir() / "data" / m["key"][:16]
    assert m["dtype"] == "uint16" and d.train.dtype == np.dtype("<u2")
    # tokens.bin is raw little-endian uint16 holding exactly the tokens.
    raw = np.fromfile(d.directory / "tokens.bin", dtype="<u2")
    assert np.array_equal(raw, np.concatenate([d.train, d.val]))
    assert not d.train.flags.writeable
    assert json.loads((d.directory / "meta.json").read_text()) == m
    assert tokenizer.load_tokenizer(d.directory).vocab_size == m["vocab_size"]


def test_gpt2_puts_eot_between_files(tiny_corpus):
    d = prepare_data(DataConfig(data=str(tiny_corpus), tokenizer="gpt2"), **QUIET)
    tokens = np.concatenate([d.train, d.val])
    assert d.tokenizer.eot_id == 50256
    assert int((tokens == 50256).sum()) == 2   # three files, two separators, none at the ends
    assert tokens[0] != 50256 and tokens[-1] != 50256
    assert decode_all(d) == "<|endoftext|>".join(corpus_text())
    if "train_bytes" in d.meta:   # only written when exact
        assert d.meta["train_bytes"] + d.meta["val_bytes"] == d.meta["n_bytes"]


def test_bpe_round_trip_and_vocab_size_in_key(tiny_corpus):
    small = prepare_data(DataConfig(data=str(tiny_corpus), tokenizer="bpe", bpe_vocab_size=300), **QUIET)
    assert small.meta["vocab_size"] <= 300
    assert decode_all(small) == "<|endoftext|>".join(corpus_text())
    bigger = prepare_data(DataConfig(data=str(tiny_corpus), tokenizer="bpe", bpe_vocab_size=400), **QUIET)
    assert bigger.directory != small.directory


def test_second_call_is_a_cache_hit(tiny_corpus, monkeypatch):
    cfg = DataConfig(data=str(tiny_corpus))
    first = prepare_data(cfg, **QUIET)

    def must_not_run(*args, **kwargs):
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(cache, "build_tokenizer", must_not_run)
    monkeypatch.setattr(tokenizer.CharTokenizer, "encode_batch", must_not_run)
    second = prepare_data(cfg, **QUIET)
    assert second.directory == first.directory and second.meta == first.meta
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)


def test_changed_content_or_settings_miss_the_cache(tiny_corpus):
    first = prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    other_fraction = prepare_data(DataConfig(data=str(tiny_corpus), val_fraction=0.2), **QUIET)
    assert other_fraction.directory != first.directory
    (tiny_corpus / "c.txt").write_text("Changed.\n", encoding="utf-8")
    changed = prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    assert changed.directory != first.directory
    assert decode_all(changed).endswith("Changed.\n" + TINY_TEXTS["sub/b.txt"])
    assert first.directory.is_dir()   # the older cache is never deleted


def test_crash_mid_build_leaves_no_cache(tiny_corpus, monkeypatch):
    def crash(self, texts):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(tokenizer.CharTokenizer, "encode_batch", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    assert data_dirs() == []   # neither a half cache nor its temp dir
    monkeypatch.undo()
    d = prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    assert decode_all(d) == "".join(corpus_text())


def test_temp_dirs_of_killed_builds_are_removed(tiny_corpus):
    d = prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    key = d.meta["key"]
    for path in d.directory.iterdir():
        path.unlink()
    d.directory.rmdir()
    # What a SIGKILLed build leaves: a temp dir named after a process that is gone.
    stale = cache_dir() / "data" / f".tmp-{key[:16]}-999999999-x1y2"
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(b"\0" * 10)
    prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    assert data_dirs() == [key[:16]]


def test_empty_corpus(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"")
    (tmp_path / "b.txt").write_bytes(b"")
    with pytest.raises(TinyGPTError) as err:
        prepare_data(DataConfig(data=str(tmp_path)), **QUIET)
    assert str(err.value) == f"no text in {str(tmp_path)!r}: the corpus is empty"
    assert data_dirs() == []


def test_prepare_logs_what_it_does(tiny_corpus):
    lines = []
    prepare_data(DataConfig(data=str(tiny_corpus)), log=lines.append)
    assert any("tokenizing 3 file(s)" in line for line in lines)
    lines.clear()
    prepare_data(DataConfig(data=str(tiny_corpus)), log=lines.append)
    assert len(lines) == 1 and "tokens" in lines[0]   # cache hit: just the summary
