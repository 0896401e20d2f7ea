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


# ---------------------------------------------------------------------------- stop strings


def _pieces(stream, ids):
    return [stream.push(i) for i in ids] + [stream.flush()]


def test_stop_strings_across_token_boundaries_are_held_back_then_cut():
    from tinygpt.generation.stream import TextStream
    from tinygpt.tokenizer import CharTokenizer

    tok = CharTokenizer("abcdEND\n")
    stream = TextStream(tok, ["END", "\n\n"])
    pieces = _pieces(stream, tok.encode("abEcENabENDcd"))
    # "E" and "EN" are held while they might start "END" and go out once they cannot; "END" cuts.
    assert pieces == ["a", "b", "", "Ec", "", "", "ENa", "b", "", "", "", "", "", ""]
    assert stream.stopped and stream.text == "abEcENab"
    # A held-back prefix that never completes is released at the end.
    stream = TextStream(tok, ["END"])
    assert "".join(_pieces(stream, tok.encode("abEN"))) == "abEN" and not stream.stopped


def test_without_stop_strings_the_stream_is_the_text():
    from tinygpt.generation.stream import TextStream
    from tinygpt.tokenizer import CharTokenizer

    tok = CharTokenizer("abc")
    stream = TextStream(tok)
    assert _pieces(stream, tok.encode("abcab")) == ["a", "b", "c", "a", "b", ""] and stream.text == "abcab"
