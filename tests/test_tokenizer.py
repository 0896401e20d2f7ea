"""Tests for tinygpt.tokenizer: real GPT-2 ids, exact round-trips, save/load, errors."""

import hashlib
import json
import random
import string

import pytest

from tinygpt.errors import TinyGPTError
from tinygpt.tokenizer import (
    GPT2_ASSETS,
    GPT2_SHA256,
    TOKENIZER_KINDS,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    _gpt2_mergeable_ranks,
    build_tokenizer,
    gpt2_byte_decoder,
    gpt2_files,
    load_tokenizer,
)

# Strings that trip up tokenizers: whitespace runs, CR/LF, combining marks, emoji
# with ZWJ and skin tones, CJK, RTL, NUL, the BOM, astral planes, the separator token.
TRICKY = [
    "",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "line\r\nbreaks\n\n\ttabs\t\t and\x0bvertical\x0c",
    "e\u0301 a\u0308 combining",
    "emoji 😀👩‍👩‍👧‍👦 👍🏽 flags 🇫🇷",
    "中文字符 日本語のテキスト 한국어",
    "עברית العربية mixed LTR",
    "\x00nul\x7f\x80\xa0\xad",
    "\ufeffBOM \U0010ffff \U0001d11e",
    "don't won't they'll I'm we've",
    "doc one<|endoftext|>doc two<|endoftext|>",
    "<|endoftext|>",
    "1234567890 3.14159 1e-9",
]


def random_strings(n, seed=0):
    """Random strings over all non-surrogate code points, biased towards ASCII so BPE merges fire."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.5:
                chars.append(rng.choice(string.printable))
            else:
                cp = rng.randrange(0x110000 - 0x800)
                chars.append(chr(cp if cp < 0xD800 else cp + 0x800))  # skip the surrogate block
        out.append("".join(chars))
    return out


def words_corpus(n_words=3000, seed=1):
    """A corpus with many distinct letter pairs, so BPE can reach a few hundred merges."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))) for _ in range(n_words)]
    text = " ".join(words)
    return [text[i : i + 1000] for i in range(0, len(text), 1000)]  # several chunks


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def bpe():
    chunks = words_corpus() + ["héllo wörld 😀 中文\r\n\t" * 20]
    return build_tokenizer("bpe", lambda: iter(chunks), vocab_size=400)


@pytest.fixture(scope="module")
def char():
    return build_tokenizer("char", lambda: iter(["hello world\n", "the quick brown fox"]))


# ---------------------------------------------------------------------------- gpt2


def test_gpt2_gives_real_gpt2_ids(gpt2):
    assert gpt2.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_id == 50256
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert gpt2.to_dict() == {"kind": "gpt2", "vocab_size": 50257}


def test_gpt2_vocabulary_files_are_openais_byte_for_byte(monkeypatch):
    # The shipped files hash to GPT2_SHA256, and those are the hashes tiktoken pins for the
    # files on OpenAI's server: its gpt2() is run with the loader swapped for a recorder.
    import tiktoken_ext.openai_public as openai_public

    merges, encoder = gpt2_files()
    assert (merges.parent, merges.name, encoder.name) == (GPT2_ASSETS, "vocab.bpe", "encoder.json")
    shipped = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (merges, encoder)}
    assert shipped == GPT2_SHA256
    pinned = {}
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", lambda **kw: pinned.update(kw) or {})
    openai_public.gpt2()
    assert pinned["vocab_bpe_file"].endswith("/gpt-2/encodings/main/vocab.bpe")
    assert {"vocab.bpe": pinned["vocab_bpe_hash"], "encoder.json": pinned["encoder_json_hash"]} == GPT2_SHA256
    assert (GPT2_ASSETS / "LICENSE").read_text("utf-8").startswith("Modified MIT License\n")


def test_gpt2_single_words_match_encoder_json(gpt2):
    encoder = json.loads(gpt2_files()[1].read_text("utf-8"))
    # encoder.json writes a leading space as "Ġ" (byte 0x20 shifted to U+0120).
    for word, key in [("Hello", "Hello"), (" world", "Ġworld"), (" the", "Ġthe"), ("The", "The"), ("!", "!")]:
        assert gpt2.encode(word) == [encoder[key]]
    assert gpt2.encode(" world") == [995]
    assert gpt2.encode(" the") == [262]


def test_gpt2_ranks_match_tiktoken_reference_loader(monkeypatch):
    # Our direct encoder.json reader must agree with tiktoken's own converter (which
    # also checks vocab.bpe's merge order). An empty cache dir disables its file cache.
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    merges, encoder = gpt2_files()
    reference = data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    assert _gpt2_mergeable_ranks() == reference
    assert sorted(gpt2_byte_decoder().values()) == list(range(256))


def test_gpt2_matches_independent_implementation_on_random_text(gpt2):
    # HF tokenizers' Rust BPE, loaded from the same encoder.json / vocab.bpe, is a
    # second implementation of GPT-2's algorithm; tiktoken must agree with it.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    merges, encoder = gpt2_files()
    ref = HFTokenizer(models.BPE.from_file(str(encoder), str(merges)))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for s in TRICKY[:12] + random_strings(300, seed=3):  # ref knows no special tokens: skip "<|endoftext|>"
        assert gpt2.encode(s) == ref.encode(s).ids, repr(s)


# ---------------------------------------------------------------------------- round trips & batching


@pytest.mark.parametrize("name", ["gpt2", "bpe"])
def test_byte_level_round_trip_arbitrary_unicode(name, request):
    tok = request.getfixturevalue(name)
    for s in TRICKY + random_strings(300):
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s, repr(s)


@pytest.mark.parametrize("name", ["char", "gpt2", "bpe"])
def test_encode_batch_equals_encode(name, request):
    tok = request.getfixturevalue(name)
    texts = ["hello world", "", "the fox", "  he\n"] if name == "char" else TRICKY + random_strings(50, seed=5)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


@pytest.mark.parametrize("name", ["char", "gpt2", "bpe"])
def test_decode_rejects_out_of_range_ids(name, request):
    tok = request.getfixturevalue(name)
    for bad in ([tok.vocab_size], [0, -1]):
        with pytest.raises(ValueError, match="cannot decode id"):
            tok.decode(bad)
    assert tok.decode([]) == ""


# ---------------------------------------------------------------------------- char


def test_char_vocab_is_sorted_unique_chars(char):
    assert char.chars == sorted(set("hello world\nthe quick brown fox"))
    assert char.vocab_size == len(char.chars)
    assert char.eot_id is None
    assert char.to_dict() == {"kind": "char", "vocab_size": char.vocab_size}
    assert char.encode("\n ") == [0, 1]
    text = "the world quick\nhello"
    assert char.decode(char.encode(text)) == text


def test_char_long_string_matches_naive_lookup():
    rng = random.Random(0)
    alphabet = list("abc xyz\n\t") + ["é", "中", "😀", "\U0010ffff", "\x00"]
    text = "".join(rng.choice(alphabet) for _ in range(200_000))
    tok = build_tokenizer("char", lambda: iter([text[:1000], text]))
    index = {c: i for i, c in enumerate(tok.chars)}
    ids = tok.encode(text)
    assert ids == [index[c] for c in text]
    assert tok.decode(ids) == text


def test_char_unknown_characters_error_lists_them_on_one_line(char):
    with pytest.raises(TinyGPTError) as err:
        char.encode("hello é€ é\nworld")
    msg = str(err.value)
    assert "\n" not in msg
    assert "2 characters" in msg and "'é', '€'" in msg
    assert "--tokenizer gpt2 or bpe" in msg
    with pytest.raises(TinyGPTError, match=r"20 characters.*\(and 10 more\)"):
        char.encode("".join(chr(0x4E00 + i) for i in range(20)))


def test_char_empty_corpus_is_an_error():
    with pytest.raises(TinyGPTError, match="empty"):
        build_tokenizer("char", lambda: iter(["", ""]))


# ---------------------------------------------------------------------------- bpe


def test_bpe_reaches_requested_vocab_and_puts_specials_first(bpe):
    assert bpe.vocab_size == 400
    assert bpe.eot_id == 0
    assert bpe.encode("<|endoftext|>") == [0]
    assert bpe.to_dict() == {"kind": "bpe", "vocab_size": 400, "special_tokens": ["<|endoftext|>"]}
    # Merges were learned: a frequent word takes fewer tokens than its bytes.
    assert len(bpe.encode("héllo wörld")) < len("héllo wörld".encode())


def test_bpe_several_special_tokens_and_small_corpus():
    tok = build_tokenizer("bpe", lambda: iter(["ab ab ab"]), vocab_size=1000, special_tokens=["<eot>", "<pad>"])
    assert tok.eot_id == 0 and tok.encode("<pad>") == [1]
    assert 258 <= tok.vocab_size <= 1000  # a tiny corpus cannot fill the requested vocabulary
    assert tok.decode(tok.encode("x<eot>ab 😀")) == "x<eot>ab 😀"


def test_bpe_too_small_vocab_names_the_minimum():
    with pytest.raises(TinyGPTError, match="at least 258") as err:
        build_tokenizer("bpe", lambda: iter(["abc"]), vocab_size=100, special_tokens=["<a>", "<b>"])
    assert "\n" not in str(err.value)


def test_bpe_empty_corpus_is_an_error():
    with pytest.raises(TinyGPTError, match="empty"):
        build_tokenizer("bpe", lambda: iter([]), vocab_size=300)


# ---------------------------------------------------------------------------- save / load / factory


@pytest.mark.parametrize("name", ["char", "gpt2", "bpe"])
def test_save_load_round_trip(name, request, tmp_path):
    tok = request.getfixturevalue(name)
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["kind"] == name
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok)
    assert (loaded.vocab_size, loaded.eot_id, loaded.to_dict()) == (tok.vocab_size, tok.eot_id, tok.to_dict())
    texts = ["hello world", "the fox\n"] if name == "char" else TRICKY + random_strings(30, seed=7)
    assert [loaded.encode(t) for t in texts] == [tok.encode(t) for t in texts]


def test_load_from_empty_dir_names_missing_file(tmp_path):
    with pytest.raises(TinyGPTError, match="tokenizer_config.json is missing.*incomplete") as err:
        load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "config",
    ["{not json", '["a list"]', '{"kind": "wordpiece"}', '{"kind": "char"}', '{"kind": "char", "chars": []}'],
)
def test_load_corrupt_config_is_an_error(tmp_path, config):
    (tmp_path / "tokenizer_config.json").write_text(config)
    with pytest.raises(TinyGPTError, match="tokenizer_config.json") as err:
        load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)


def test_load_bpe_with_missing_or_corrupt_tokenizer_json(bpe, tmp_path):
    bpe.save(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"broken": ')
    with pytest.raises(TinyGPTError, match="tokenizer.json is corrupt"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(TinyGPTError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path)


def test_build_tokenizer_kinds_and_errors():
    assert TOKENIZER_KINDS == ("char", "gpt2", "bpe")
    with pytest.raises(TinyGPTError, match="char, gpt2, bpe"):
        build_tokenizer("wordpiece", lambda: iter(["abc"]))
    with pytest.raises(ValueError):
        build_tokenizer("char")
    tok = build_tokenizer("gpt2")  # needs no corpus
    assert isinstance(tok, Tokenizer) and tok.kind == "gpt2"
    assert isinstance(build_tokenizer("char", lambda: iter(["ba", "c"])), CharTokenizer)
    assert isinstance(build_tokenizer("bpe", lambda: iter(["abc"]), vocab_size=300), BPETokenizer)
