"""``tinygpt learn``: the from-scratch rungs of the ladder to GPT (micrograd, BPE).

Each subcommand lives in its own thin module (``learn_<name>.py``); this one only groups
them under ``tinygpt learn``. The makemore rungs have their own command, ``tinygpt makemore``.
"""

from __future__ import annotations

from . import learn_bpe, learn_micrograd


def add_parser(sub) -> None:
    p = sub.add_parser("learn", help="the ladder to GPT: micrograd, BPE from scratch",
                       description="Small, readable from-scratch versions of what tinygpt uses, runnable and "
                                   "checked against the real libraries: a scalar autograd engine (micrograd) and "
                                   "the byte-level BPE tokenizer. See also 'tinygpt makemore'.")
    lessons = p.add_subparsers(dest="lesson", required=True, metavar="lesson")
    for lesson in (learn_micrograd, learn_bpe):
        lesson.add_parser(lessons)
