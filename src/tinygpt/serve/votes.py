"""The arena's votes: a SQLite database file (``tinygpt serve --votes FILE``).

Two tables. ``battles``: one prompt, the two contestants (a model name and its settings, as
JSON) in the left/right order the person saw, and both answers; written when the answers
are shown, before any vote. ``votes``: a battle's verdict (left, right, tie, both_bad) and
each side's 1-5 ratings of fluency, coherence and relevance; one per battle.

Every write is one transaction in WAL mode with synchronous=FULL: a vote the server
acknowledged survives a crash or a power cut, and a crash mid-write leaves the database as
it was before. Each call opens its own connection (they are cheap, and SQLite's connections
must not cross threads).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyGPTError

VERDICTS = ("left", "right", "tie", "both_bad")
ASPECTS = ("fluency", "coherence", "relevance")

SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,
    left_name TEXT NOT NULL, left_settings TEXT NOT NULL, left_text TEXT NOT NULL,
    right_name TEXT NOT NULL, right_settings TEXT NOT NULL, right_text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY REFERENCES battles(id),
    created REAL NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('left', 'right', 'tie', 'both_bad')),
    ratings TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Vote:
    """One verdict, by contestant name: ``winner`` is a name, or None for a tie / both bad."""
    a: str
    b: str
    winner: str | None
    verdict: str
    ratings: dict          # {name: {aspect: 1-5}}


class Votes:
    """The votes file at ``path``, created if new. ``named``: how messages call it (a flag, or
    the report's argument)."""

    def __init__(self, path: str | Path, named: str = "--votes"):
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise TinyGPTError(f"{named} {self.path} is a folder; give a file, e.g. votes.sqlite")
        if not self.path.parent.is_dir():
            raise TinyGPTError(f"{named} {self.path}: its folder does not exist; create it or give another path")
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and not {"battles", "votes"} <= tables:   # someone else's database: leave it alone
                    raise sqlite3.DatabaseError(f"it holds other tables: {', '.join(sorted(tables)[:3])}")
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise TinyGPTError(f"{named} {self.path} is not a tinygpt votes database ({e}); give the file "
                               "tinygpt serve --votes wrote, or a new one") from None

    def _connect(self) -> "_Transaction":
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")   # the `with` block is one transaction: commit on success, else roll back
        return _Transaction(db)

    def add_battle(self, prompt: str, left: tuple[str, dict, str], right: tuple[str, dict, str]) -> str:
        """Record a battle as shown; its id."""
        battle = uuid.uuid4().hex
        with self._connect() as db:
            db.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (battle, time.time(), prompt, left[0], json.dumps(left[1]), left[2],
                        right[0], json.dumps(right[1]), right[2]))
        return battle

    def vote(self, battle: str, verdict: str, ratings: dict) -> tuple[str, str]:
        """Record the verdict on ``battle``; the (left, right) names, revealed."""
        with self._connect() as db:
            row = db.execute("SELECT left_name, right_name FROM battles WHERE id = ?", (battle,)).fetchone()
            if row is None:
                raise KeyError(battle)
            db.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (battle, time.time(), verdict, json.dumps(ratings)))
        return row

    def read(self) -> list[Vote]:
        """Every vote, oldest first, by name (who sat left is forgotten: it was random)."""
        with self._connect() as db:
            rows = db.execute("SELECT b.left_name, b.right_name, v.verdict, v.ratings FROM votes v "
                              "JOIN battles b ON b.id = v.battle_id ORDER BY v.created").fetchall()
        out = []
        for left, right, verdict, ratings in rows:
            sides = json.loads(ratings)
            winner = left if verdict == "left" else right if verdict == "right" else None
            out.append(Vote(left, right, winner, verdict,
                            {name: sides.get(side, {}) for name, side in ((left, "left"), (right, "right"))}))
        return out


class _Transaction:
    """A connection used as ``with``: COMMIT at the end, ROLLBACK on an error, then closed."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, kind, value, trace) -> None:
        try:
            self.db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.db.close()
