"""``tinygpt arena report``: the ranking the arena's blind votes give."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import add_command, add_group, opt, section
from ..console import log
from ..errors import TinyGPTError
from ..options import OutputOptions


@dataclass
class ArenaReportCommand:
    votes: str = opt(None, "the votes database tinygpt serve --votes wrote", positional=True, metavar="VOTES")
    output: OutputOptions = section(OutputOptions, only=("out",), shown={"out": "VOTES with .png"})


def add_parser(sub) -> None:
    kinds = add_group(sub, "arena", help="the blind side-by-side evaluation's results")
    add_command(kinds, "report", ArenaReportCommand, run_report,
                help="win rates, a Bradley-Terry / Elo ranking and a picture from the arena's votes",
                description="Read VOTES (tinygpt serve --votes FILE) and print each contestant's wins, losses and "
                            "ties, win rate with a 95% Wilson interval, Bradley-Terry strength on the Elo scale "
                            "with a 95% bootstrap interval, and mean ratings; draw them as a PNG (--out).")


def run_report(cmd: ArenaReportCommand) -> int:
    from ..serve.report import draw, standings, table
    from ..serve.votes import Votes

    path = Path(cmd.votes).expanduser()
    if not path.is_file():
        raise TinyGPTError(f"no votes database at {path}; give the file tinygpt serve --votes wrote")
    votes = Votes(path, named="VOTES").read()
    if not votes:
        raise TinyGPTError(f"{path} holds no votes yet; vote in the arena (/arena) first")
    rows = standings(votes)
    print(table(rows))
    out = draw(rows, cmd.output.out or path.with_suffix(".png"), len(votes))
    log(f"{len(votes)} votes; picture: {out}")
    return 0
