"""Streaming text: never half a character, always the same text."""

import pytest

from tinygpt.generation import StreamDecoder
from tinygpt.tokenizer import CharTokenizer, GPT2Tokenizer


def stream(tokenizer, ids):
    dec = StreamDecoder(tokenizer)
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


@pytest.mark.parametrize("text", [
    "Hi 😀 世界 👩‍👩‍👧‍👦 café 🇫🇷! done",
    "日本語のテキスト",
    "emoji at the end 🤖",
])
def test_stream_decoder_gpt2_never_prints_half_characters(text):
    tok = GPT2Tokenizer()
    ids = tok.encode(text)
    # The text really is split mid-character by the byte-level tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces, rest = stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces + [rest])
    assert rest == ""  # every character was complete by the last token
    assert sum(1 for p in pieces if p) > 1  # it streams, not everything at the end


def test_stream_decoder_keeps_real_replacement_characters():
    tok = GPT2Tokenizer()
    for text in ("a \ufffd b", "ends with \ufffd"):
        pieces, rest = stream(tok, tok.encode(text))
        assert "".join(pieces) + rest == text


def test_stream_decoder_char_tokenizer_emits_one_char_per_id():
    tok = CharTokenizer("abc\n")
    pieces, rest = stream(tok, tok.encode("ab\nca"))
    assert pieces == ["a", "b", "\n", "c", "a"] and rest == ""
