"""Streaming a Hugging Face dataset (local JSONL and parquet folders through datasets'
streaming reader): the windows of its tokens, an exact resume from any position without
reading from the start, and a bitwise continuation after kill -9."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import QUIET

from tinygpt.data import Batches, DataConfig, prepare_data
from tinygpt.data.stream import DOCS_PER_READ, StreamSpec
from tinygpt.errors import TinyGPTError
from tinygpt.run import RunDir
from tinygpt.tokenizer import GPT2Tokenizer
from tinygpt.train import Session

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 5) + f"End {i}." for i in range(150)]
VAL = [f"Held out {i}: a lazy dog sleeps." for i in range(20)]


def write_folder(root, kind):
    """A dataset folder as the hub lays one out: train split in two files, a validation split."""
    root.mkdir()
    parts = {"train-00000": DOCS[:90], "train-00001": DOCS[90:], "validation-00000": VAL}
    for name, texts in parts.items():
        rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
        if kind == "jsonl":
            (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), root / f"{name}.parquet", row_group_size=16)
    return root


@pytest.fixture(params=["jsonl", "parquet"])
def folder(tmp_path, request, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))   # datasets' own cache stays private
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return write_folder(tmp_path / "ds", request.param)


@pytest.fixture
def parquet_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return write_folder(tmp_path / "ds", "parquet")


def stream_data(folder):
    return prepare_data(DataConfig(data=f"hf:{folder}", tokenizer="gpt2"), **QUIET)


def all_tokens():
    tok = GPT2Tokenizer()
    ids = []
    for i, text in enumerate(DOCS):
        ids += ([tok.eot_id] if i else []) + tok.encode(text)
    return np.array(ids, dtype=np.int64)


def test_the_stream_is_the_sequential_windows_of_its_documents_and_the_validation_split(folder):
    data = stream_data(folder)
    tok = GPT2Tokenizer()
    expected_val = []
    for i, text in enumerate(VAL):
        expected_val += ([tok.eot_id] if i else []) + tok.encode(text)
    assert data.val.tolist() == expected_val
    assert data.meta["val_bytes"] == sum(len(t.encode()) for t in VAL)
    tokens = all_tokens()
    stream = data.batches("train", 3, 16)
    reference = Batches(tokens, 3, 16, mode="sequential")
    n = 2 * len(tokens) // (3 * 16) + 3     # past the end: two epochs and more
    for _ in range(n):
        x, y = next(stream)[:2]
        u, v = next(reference)[:2]
        assert torch.equal(x, u) and torch.equal(y, v)
    assert stream.epoch == reference.epoch == 2


def test_a_stream_resumes_exactly_from_any_position_without_reading_from_the_start(folder):
    data = stream_data(folder)
    per_epoch = (len(all_tokens()) - 1) // (2 * 8)   # windows of 8 tokens, 2 per batch
    for k in (0, 1, 7, per_epoch - 1, per_epoch, per_epoch + 5):
        a = data.batches("train", 2, 8)
        for _ in range(k):
            next(a)
        state = a.state_dict()
        b = data.batches("train", 2, 8)
        b.load_state_dict(torch.load(_saved(state), weights_only=True))
        for _ in range(4):
            assert all(torch.equal(p, q) for p, q in zip(next(a)[:2], next(b)[:2])), k
        # Only the documents from the saved position on were read again.
        if state["document"] > DOCS_PER_READ:
            assert b.docs_read < a.docs_read


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_stream_specs_and_their_mistakes():
    assert StreamSpec.parse("hf:roneneldan/TinyStories") == StreamSpec("roneneldan/TinyStories", None, "train")
    assert StreamSpec.parse("hf:wikitext:wikitext-2-raw-v1") == StreamSpec("wikitext", "wikitext-2-raw-v1", "train")
    assert StreamSpec.parse("hf:a/b:validation") == StreamSpec("a/b", None, "validation")
    assert StreamSpec.parse("hf:a/b:en:test") == StreamSpec("a/b", "en", "test")
    for bad in ("hf:", "hf:a::b", "hf:a:b:c:d"):
        with pytest.raises(TinyGPTError, match=r"write a streamed dataset as hf:owner/name\[:config\]\[:split\]"):
            StreamSpec.parse(bad)


def test_a_stream_refuses_the_char_tokenizer_and_names_the_text_fields_it_has(folder):
    with pytest.raises(TinyGPTError, match="the char tokenizer must see every character"):
        prepare_data(DataConfig(data=f"hf:{folder}", tokenizer="char"), **QUIET)
    with pytest.raises(TinyGPTError, match="no text field 'body' \\(text fields: text\\); name it with --text-field"):
        prepare_data(DataConfig(data=f"hf:{folder}", tokenizer="gpt2", text_field="body"), **QUIET)


SETTINGS = dict(tokenizer="bpe", bpe_vocab_size=300, n_layer=1, n_embd=16, n_head=2, block_size=16, batch_size=2,
                device="cpu", dtype="fp32", max_steps=8, eval_interval=2, eval_batches=1, progress=False,
                max_new_tokens=0, threads=1)
# The run kills itself (SIGKILL) at the end of step 5, a step after its checkpoint of step 4.
SCRIPT = f"""
import os, signal, sys
from tinygpt.train import Session
SETTINGS = {SETTINGS!r}
settings = dict(data=sys.argv[1], out=sys.argv[2], **SETTINGS)
session = Session.start(settings, log=lambda _: None)

class Kill:
    main_process_only = False
    def __getattr__(self, name):
        return lambda *a: None
    def on_step_end(self, trainer, record):
        if trainer.state.step == 5:
            os.kill(os.getpid(), signal.SIGKILL)   # kill -9: nothing after this runs

session.fit(Kill())
"""


def test_a_streamed_run_killed_with_sigkill_continues_bitwise(parquet_folder, tmp_path):
    folder = parquet_folder

    def run(out):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", SCRIPT, f"hf:{folder}", str(out)], env=env,
                              capture_output=True, text=True, timeout=120)

    # Uninterrupted, in this process (the same code and settings, one thread as in the child).
    Session.start({**SETTINGS, "data": f"hf:{folder}", "out": str(tmp_path / "straight")}, **QUIET).fit()
    killed = run(tmp_path / "killed")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert RunDir.open(tmp_path / "killed").checkpoint_info("last").step == 4
    Session.resume(tmp_path / "killed", **QUIET).fit()   # in this process: it reads only what is on disk

    def metrics(out):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in RunDir.open(out).read_metrics()]

    assert metrics(tmp_path / "killed") == metrics(tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "trainer.pt", weights_only=True)["batches"]
    b = torch.load(tmp_path / "killed" / "trainer.pt", weights_only=True)["batches"]
    assert a == b and a["mode"] == "stream"
