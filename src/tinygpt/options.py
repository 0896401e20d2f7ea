"""Option sections that several commands share and no one component owns: where a command
writes (``--out``, ``--force``, ``--json``, ``--show``) and which text it reads (``--data``,
``--max-chars``). Each is declared once here; a command takes the fields it needs with
``config.section(..., only=...)``, a library config with ``config.like``."""

from __future__ import annotations

from dataclasses import dataclass

from .config import opt


@dataclass
class OutputOptions:
    out: str | None = opt(None, "where to write what the command makes (a folder, or the file the command names)")
    force: bool = opt(False, "write into --out even if it holds files (the one way to replace anything)")
    json: str | None = opt(None, "also write the numbers as JSON to this file", metavar="FILE")
    show: bool = opt(False, "open the pictures in windows as well")


@dataclass
class TextOptions:
    data: str | None = opt(None, "the text: a file, a folder, a glob or a built-in corpus (shakespeare, names)")
    max_chars: int | None = opt(None, "read only the first N characters of the text (none: all)", metavar="N")
