"""Finding a corpus's text files and streaming their text in decoded, line-aligned chunks.

Corpora may be bigger than RAM, so text is read in ~``CHUNK_BYTES`` pieces cut at line
ends and decoded incrementally; an undecodable byte is reported with its exact offset.
"""

from __future__ import annotations

import codecs
import glob
import os
from pathlib import Path
from typing import Callable, Iterator

from ..errors import TinyGPTError
from .corpora import BUILTIN_CORPORA, corpus_files

CHUNK_BYTES = 1 << 20       # bytes read per step; text is cut at the last newline in it


def check_encoding(encoding: str) -> str:
    """The canonical codec name for ``encoding``; TinyGPTError if Python has no such text encoding."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        info = None
    # rot13/base64 etc. are known to codecs but are not bytes -> text encodings.
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise TinyGPTError(f"unknown text encoding {encoding!r} for --encoding; use e.g. utf-8, latin-1 or cp1252")
    return info.name


def resolve_files(spec: str, encoding: str | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """The text files named by ``spec``: a built-in corpus, a file, a folder (recursive) or a glob.

    Folders skip hidden files and hidden folders (``.git`` and the like); folders and globs
    skip files that are not text (a picture among the books), naming them in one ``log`` line.
    ``encoding``, when given, is checked first so a typo fails before anything is read or downloaded.
    """
    if encoding is not None:
        check_encoding(encoding)
    if spec in BUILTIN_CORPORA:
        return corpus_files(spec, log)
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune: os.walk won't descend
            found += [Path(root, n) for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n))]
        files = sorted(found, key=lambda p: p.relative_to(path).as_posix())
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
    skipped = [f for f in files if not looks_like_text(f, encoding or "utf-8")]
    if skipped:
        files = [f for f in files if f not in skipped]
        if log is not None:
            names = [_display(f) for f in skipped]
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            log(f"data: skipped {len(names)} file(s) that are not text: {', '.join(names[:5])}{more}")
    if not files:
        raise TinyGPTError(f"no text found at {spec!r}: give a file, a folder, a glob like 'books/*.txt', "
                           f"or a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
    return files


def looks_like_text(path: Path, encoding: str = "utf-8") -> bool:
    """Whether ``path`` may be text: no NUL byte in its first 8 KB (git's test; pictures, archives and
    other binaries have them early). UTF-16 and UTF-32 text has NULs, so in those encodings all may be."""
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        return True
    with open_binary(path) as handle:
        return b"\0" not in handle.read(8192)


def absolute_spec(spec: str) -> str:
    """``spec`` as recorded in a run: a built-in corpus's name, else an absolute path or glob,
    so the run resumes from any working directory."""
    if spec in BUILTIN_CORPORA:
        return spec
    if spec.startswith("hf:"):   # a streamed dataset: a hub name stays, a local folder becomes absolute
        path, colon, rest = spec[3:].partition(":")
        local = os.path.expanduser(path)
        return f"hf:{os.path.abspath(local)}{colon}{rest}" if path and os.path.exists(local) else spec
    return os.path.abspath(os.path.expanduser(spec))


def relative_names(files: list[Path]) -> list[str]:
    """Each file's path relative to the files' common folder, so moving a corpus keeps its cache key."""
    absolute = [p.resolve() for p in files]
    try:
        root = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError:  # e.g. files on different Windows drives: no common root
        return [p.as_posix() for p in absolute]
    return [p.relative_to(root).as_posix() for p in absolute]


def _display(path: Path) -> str:
    """``path`` as the user would recognise it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another Windows drive
        return str(path)
    return str(path) if rel.startswith("..") else rel


def open_binary(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise TinyGPTError(f"cannot read {_display(path)}: {e.strerror or e}; check the file's permissions") from None


def read_text(spec: str, max_chars: int | None = None, encoding: str = "utf-8",
              log: Callable[[str], None] | None = None) -> str:
    """The text ``spec`` names (files joined by blank lines, in :func:`resolve_files`'s
    order), read only as far as the first ``max_chars`` characters."""
    files, size = [], 0
    for path in resolve_files(spec, encoding, log):
        parts = []
        for chunk in iter_chunks(path, encoding):
            parts.append(chunk)
            size += len(chunk)
            if max_chars is not None and size >= max_chars:
                break
        files.append("".join(parts))
        if max_chars is not None and size >= max_chars:
            break
    text = "\n\n".join(files)
    return text if max_chars is None else text[:max_chars]


def iter_chunks(path: Path, encoding: str) -> Iterator[str]:
    """Decoded text of ``path`` in pieces of about CHUNK_BYTES, each cut after a newline when there is one.

    Decoding is incremental, so a multi-byte character split across two reads is fine;
    an undecodable byte raises TinyGPTError with its exact offset in the file.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0      # bytes of the file handed to the decoder so far
    carry = ""      # decoded text after the last cut, waiting for its line to end
    with open_binary(path) as handle:
        while True:
            raw = handle.read(CHUNK_BYTES)
            # Bytes the decoder kept back from the previous read (a partial character):
            # the error offset below is relative to those bytes plus ``raw``.
            held = len(decoder.getstate()[0])
            try:
                carry += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                where = offset - held + e.start
                fix = ("convert it to UTF-8 or pass --encoding latin-1 (or the file's real encoding)"
                       if codecs.lookup(encoding).name == "utf-8"
                       else "pass --encoding with the file's real encoding (e.g. utf-8 or latin-1)")
                raise TinyGPTError(f"{_display(path)} is not valid {encoding} at byte {where}; {fix}") from None
            offset += len(raw)
            if not raw:
                if carry:
                    yield carry
                return
            # Cut at a line end so the tokenizer never sees a word split in two. A line
            # longer than a few chunks (minified text) is cut at a space, or anywhere,
            # to bound memory.
            cut = carry.rfind("\n") + 1
            if not cut and len(carry) > 4 * CHUNK_BYTES:
                cut = carry.rfind(" ") + 1 or len(carry)
            if cut:
                yield carry[:cut]
                carry = carry[cut:]
