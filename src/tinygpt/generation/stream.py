"""Ids -> printable text, as the ids arrive."""

from __future__ import annotations

from ..tokenizer import Tokenizer


class StreamDecoder:
    """Turns ids, pushed one at a time, into text pieces as soon as they are printable.

    A byte-level token can end inside a multi-byte character, which decodes to a
    trailing U+FFFD; such ids wait (at most 4, the longest UTF-8 character) until the
    character is whole. Each piece is decoded after the previously emitted token and
    that token's text cut off, so decoders that treat a sequence's first token
    specially (SentencePiece's leading-space marker) still give the right spaces;
    decoding restarts there, so streaming a long text costs linear time."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending, self.context = tokenizer, [], []

    def _decode(self) -> str:
        before = self.tokenizer.decode(self.context) if self.context else ""
        text = self.tokenizer.decode(self.context + self.pending)
        return text[len(before):] if text.startswith(before) else text

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self._decode()
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.context, self.pending = self.pending[-1:], []
        return text

    def flush(self) -> str:
        text = self._decode() if self.pending else ""
        self.context, self.pending = self.pending[-1:] or self.context, []
        return text


class TextStream:
    """A row's text as it is generated, cut at the first stop string.

    ``push`` returns the text that is safe to show now: text that could still be the
    start of a stop string is held back until the next tokens decide, so a streaming UI
    never shows part of a stop string. ``stopped`` turns true once one has appeared;
    the text then ends right before it. The pieces joined are ``text``."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] | list[str] = ()):
        self.decoder, self.stops = StreamDecoder(tokenizer), tuple(stops)
        self.text, self.held, self.stopped = "", "", False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        return self._take(self.held + self.decoder.push(token_id), final=False)

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._take(self.held + self.decoder.flush(), final=True)

    def _take(self, pending: str, final: bool) -> str:
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.held = True, ""
            return self._emit(pending[:cut])
        keep = 0 if final else max((n for s in self.stops for n in range(1, len(s))
                                    if pending.endswith(s[:n])), default=0)
        self.held = pending[len(pending) - keep:] if keep else ""
        return self._emit(pending[:len(pending) - keep])

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece
