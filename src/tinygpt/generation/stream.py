"""Ids -> printable text, as the ids arrive."""

from __future__ import annotations

from ..tokenizer import Tokenizer


class StreamDecoder:
    """Turns ids, pushed one at a time, into text pieces as soon as they are printable.

    A byte-level token can end inside a multi-byte character, which decodes to a
    trailing U+FFFD; such ids wait (at most 4, the longest UTF-8 character) until the
    character is whole. Decoding restarts after every emitted piece, so streaming a
    long text costs linear time."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text
