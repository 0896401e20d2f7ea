"""Tests for the from-scratch BPE (tinygpt.learn.bpe*): hand-checked merges, GPT-2's ids exactly
as tiktoken gives them, merges exactly as the tokenizers library learns them, save/load, CLI."""

import random
import string
import unicodedata

import pytest

from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.learn.bpe import BPE, get_stats, merge, split_special
from tinygpt.learn.bpe_compare import (
    load_gpt2,
    merges_as_bytes,
    tokenizers_merges,
    train_tokenizers,
)
from tinygpt.learn.bpe_train import count_chunks, learn_merges, train
from tinygpt.tokenizer import (
    GPT2_EOT,
    GPT2_PAT_STR,
    GPT2Tokenizer,
    _gpt2_encoding,
    gpt2_byte_decoder,
)

# A small corpus with many equally frequent pairs (so the tie rule matters), multi-byte
# characters, contractions, digits, whitespace runs and a special token inside the text.
CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
          "All:\nSpeak, speak.  We'll go; they're 42 or 1999 strong\tand I'm done.\n" * 3
          + "Café crème — €5, naïve résumé 😀 東京の天気 🙂👍🏽\n" * 2
          + GPT2_EOT + "The end of one document, the start of the next." + GPT2_EOT)


# ---------------------------------------------------------------------------- primitives and basic training


def test_get_stats_and_merge():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([7, 7, 7], (7, 7), 9) == [9, 7]  # left to right, never overlapping
    assert merge([7, 7, 7, 7], (7, 7), 9) == [9, 9]


def test_basic_training_gives_the_hand_computed_merges():
    # "aaabdaaabac": "aa" occurs 4 times (overlapping) -> 256. Then "aa"+"a" and "a"+"b"
    # both occur twice: the tie goes to the pair with the smaller first token, byte "a",
    # so "ab" -> 257; then "aa"+"ab" occurs twice -> 258 = "aaab".
    bpe = train("aaabdaaabac", 259, split="none", special_tokens=())
    a, b = ord("a"), ord("b")
    assert bpe.merges == {(a, a): 256, (a, b): 257, (256, 257): 258}
    assert bpe.vocab[258] == b"aaab"
    assert bpe.encode("aaabdaaabac") == [258, ord("d"), 258, a, ord("c")]
    assert bpe.decode(bpe.encode("aaabdaaabac")) == "aaabdaaabac"


def test_ties_go_to_printable_bytes_first_as_in_the_tokenizers_library():
    # " ab": (" ", "a") and ("a", "b") occur once each. By byte value the space (32) would
    # win; the tokenizers library (and so we) rank printable bytes before the space.
    bpe = train(" ab", 258, split="none", special_tokens=())
    assert merges_as_bytes(bpe) == [(b"a", b"b"), (b" ", b"ab")]
    assert merges_as_bytes(bpe) == tokenizers_merges(train_tokenizers(" ab", 258, "none", ()))


def test_gpt2_split_never_merges_across_chunks():
    text = "dog dog. dog! dog, dog dog"
    chunks = count_chunks(text, GPT2_PAT_STR)
    assert chunks == {b"dog": 1, b" dog": 5, b".": 1, b"!": 1, b",": 1}
    split = train(text, 300, split="gpt2", special_tokens=())
    basic = train(text, 300, split="none", special_tokens=())
    assert split.vocab[max(split.merges.values())] == b" dog"  # then nothing is left to merge
    learned = [split.vocab[idx] for idx in split.merges.values()]
    assert learned == [b"do", b"dog", b" dog"] and all(any(t in chunk for chunk in chunks) for t in learned)
    assert any(b"g " in basic.vocab[idx] for idx in basic.merges.values())  # basic merges across words


def test_training_stops_when_nothing_is_left_to_merge():
    bpe = train("abab", 1000, split="none", special_tokens=())
    assert merges_as_bytes(bpe) == [(b"a", b"b"), (b"ab", b"ab")]
    assert bpe.vocab_size == 258


def test_incremental_counts_give_the_plain_loops_merges():
    # The plain lecture loop: recount every pair of every chunk after each merge.
    chunks = count_chunks(CORPUS, GPT2_PAT_STR, [GPT2_EOT])
    words = [list(chunk) for chunk in chunks]
    plain = {}
    for idx in range(256, 256 + 150):
        stats = {}
        for word, n in zip(words, chunks.values()):
            for pair, k in get_stats(word).items():
                stats[pair] = stats.get(pair, 0) + k * n
        if not stats:
            break
        top = max(stats.values())
        pair = min((p for p, n in stats.items() if n == top),
                   key=lambda p: tuple(x if x >= 256 else _PRINTED[x] for x in p))
        words = [merge(word, pair, idx) for word in words]
        plain[pair] = idx
    assert learn_merges(chunks, 150) == plain


_PRINTED = {b: rank for rank, (_, b) in enumerate(sorted(gpt2_byte_decoder().items()))}


# ---------------------------------------------------------------------------- merges equal the tokenizers library's


@pytest.mark.parametrize("split, vocab_size, n_merges", [("gpt2", 260, 3), ("gpt2", 300, 43), ("none", 300, 43),
                                                         ("gpt2", 420, 145), ("none", 420, 163)])
def test_merges_equal_the_tokenizers_library(split, vocab_size, n_merges):
    # Same settings: byte-level, the same split, all 256 bytes, no minimum frequency, the
    # special token counted in the vocab size. At 420 the gpt2 chunks run out of pairs.
    ours = merges_as_bytes(train(CORPUS, vocab_size, split))
    assert ours == tokenizers_merges(train_tokenizers(CORPUS, vocab_size, split))
    assert len(ours) == n_merges


def test_without_the_tie_rule_the_merges_part_exactly_at_a_tie(monkeypatch):
    # Plain byte order instead of the library's: same counts, so the lists agree up to the
    # first tie that the two orders break differently, and differ there.
    import tinygpt.learn.bpe_train as bpe_train

    theirs = tokenizers_merges(train_tokenizers(CORPUS, 300))
    monkeypatch.setattr(bpe_train, "tie_order", lambda pair: pair)
    ours = merges_as_bytes(train(CORPUS, 300))
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    assert (k, ours[k], theirs[k]) == (16, (b" ", b"d"), (b"e", b"n"))  # byte 32 < 101, but " " is printed last
    counts = _pair_counts_after(ours[:k], CORPUS)
    assert counts[ours[k]] == counts[theirs[k]] == max(counts.values()) == 4


def _pair_counts_after(merges, text):
    # Pair counts (as byte strings) of the training text after the given merges.
    bpe = BPE({(_id_of(a, merges), _id_of(b, merges)): 256 + i for i, (a, b) in enumerate(merges)}, {})
    counts = {}
    for chunk, n in count_chunks(text, GPT2_PAT_STR, [GPT2_EOT]).items():
        ids = bpe.encode_ordinary(chunk.decode("utf-8"))
        for pair, k in get_stats(ids).items():
            key = (bpe.vocab[pair[0]], bpe.vocab[pair[1]])
            counts[key] = counts.get(key, 0) + k * n
    return counts


def _id_of(token, merges):
    return token[0] if len(token) == 1 else 256 + [a + b for a, b in merges].index(token)


def test_the_library_would_learn_merges_inside_special_tokens():
    # Why train_tokenizers hands the library the text between special tokens: its trainer
    # does not cut them out, and learns "<|" from "<|endoftext|>".
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[GPT2_EOT], show_progress=False)
    tok.train_from_iterator([f"a{GPT2_EOT}b{GPT2_EOT}"], trainer=trainer)
    assert (b"<", b"|") in tokenizers_merges(tok)
    assert all(b"|" not in a + b for a, b in merges_as_bytes(train(f"a{GPT2_EOT}b{GPT2_EOT}", 300)))


def test_trained_tokenizer_encodes_as_the_library_does():
    ours, theirs = train(CORPUS, 400), train_tokenizers(CORPUS, 400)
    byte_of = gpt2_byte_decoder()
    for text in [CORPUS, "Speak, speak! résumé 東京 we'll 1999", *random_strings(30, seed=3)]:
        hf_tokens = [bytes(byte_of[c] for c in t) if t != GPT2_EOT else t.encode() for t in theirs.encode(text).tokens]
        assert [ours.vocab[i] for i in ours.encode(text, allowed_special="all")] == hf_tokens


# ---------------------------------------------------------------------------- GPT-2's merges give tiktoken's ids


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2()


def random_strings(n, seed=0):
    """Deterministic random text: ASCII, whitespace runs, contractions, digits, and code points
    from every plane (astral ones included).

    Only code points this Python's unicodedata knows are drawn: the split regex's Unicode
    tables differ by version (the `regex` module follows the newest Unicode, tiktoken's
    Rust regex an older one), so a newly assigned letter is punctuation to one of them, and
    "X's" splits differently. That is the regex's table, not BPE.
    """
    rng = random.Random(seed)
    spaces = [" ", "  ", "\n", "\n\n", "\r\n", "\t", "\x0b", "\x0c", "\x85", "\xa0", "\u2009", "\u3000", "\u2028"]
    pieces = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "1999", "3.14", "٣٤", "Ⅻ", "e\u0301", "👩‍👩‍👧"]

    def code_point():
        while True:
            c = chr(rng.randrange(0x110000))
            if unicodedata.category(c) not in ("Cn", "Cs"):  # assigned; no lone surrogates
                return c

    out = []
    for _ in range(n):
        draws = [rng.random() for _ in range(rng.randint(0, 40))]
        out.append("".join(rng.choice(string.printable) if r < 0.35 else rng.choice(spaces) if r < 0.5
                           else rng.choice(pieces) if r < 0.65 else code_point() for r in draws))
    return out


TRICKY = ["", " ", "   leading", "trailing   ", "line\r\nbreaks\n\n\ttabs\t\t and\x0bvertical",
          "e\u0301 a\u0308 combining", "emoji 😀👩‍👩‍👧‍👦 👍🏽 flags 🇫🇷", "中文字符 日本語のテキスト 한국어",
          "עברית العربية", "\x00nul\x7f\x80\xa0\xad", "\ufeffBOM \U0010ffff \U0001d11e",
          "don't won't they'll I'm we've DON'T", "1234567890 3.14159 1e-9", "a" * 300, "  \n \n  x  "]


def test_gpt2_merges_reproduce_tiktoken_ids(gpt2):
    tiktoken_gpt2 = GPT2Tokenizer()
    for text in TRICKY + random_strings(400):
        ids = gpt2.encode(text)
        assert ids == tiktoken_gpt2.encode(text), repr(text)
        assert gpt2.decode(ids) == text


def test_gpt2_lone_surrogates_become_replacement_characters_as_in_tiktoken(gpt2):
    for text in ["a\ud800b", "x\udfff", "\ud83d\ude00 joined"]:
        assert gpt2.encode(text) == _gpt2_encoding().encode(text)


def test_gpt2_vocabulary_layout(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.byte_ids[ord("!")] == 0 and gpt2.byte_ids[ord(" ")] == 220  # encoder.json's order
    assert gpt2.vocab[50256] == GPT2_EOT.encode() and gpt2.vocab[256] == b" t"


def test_special_tokens_follow_tiktoken(gpt2):
    enc = _gpt2_encoding()
    text = f"one{GPT2_EOT}two"
    with pytest.raises(ValueError, match="special token"):
        gpt2.encode(text)
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken refuses it too by default
    as_id = gpt2.encode(text, allowed_special="all")
    assert as_id == enc.encode(text, allowed_special="all") and 50256 in as_id
    as_text = gpt2.encode(text, disallowed_special=())
    assert as_text == enc.encode(text, disallowed_special=()) and 50256 not in as_text
    assert gpt2.decode(as_id) == gpt2.decode(as_text) == text


def test_trained_special_tokens_get_the_ids_after_the_merges():
    bpe = train(CORPUS, 300, special_tokens=[GPT2_EOT, "<|pad|>", GPT2_EOT])  # a repeat is dropped
    assert bpe.special_tokens == {GPT2_EOT: 298, "<|pad|>": 299} and bpe.vocab_size == 300
    ids = bpe.encode(f"x{GPT2_EOT}y<|pad|>", allowed_special={GPT2_EOT}, disallowed_special=())
    assert ids.count(298) == 1 and 299 not in ids
    assert bpe.decode(ids) == f"x{GPT2_EOT}y<|pad|>"
    assert split_special("a<|x|>b<|x|>y", ["<|x|>", "<|x|>y"]) == [("a", "<|x|>"), ("b", "<|x|>y"), ("", None)]


# ---------------------------------------------------------------------------- saving, errors, CLI


def test_save_and_load_round_trip(tmp_path, gpt2):
    bpe = train(CORPUS, 320)
    files = bpe.save(tmp_path / "mine")
    back = BPE.load(tmp_path / "mine")
    assert (back.merges, back.special_tokens, back.pattern, back.vocab) == (bpe.merges, bpe.special_tokens,
                                                                             bpe.pattern, bpe.vocab)
    assert "\t= " in files[1].read_text(encoding="utf-8").splitlines()[256]  # "256  ' t'  = ' ' + 't'"
    gpt2.save(tmp_path / "gpt2")
    assert BPE.load(tmp_path / "gpt2" / "bpe.json").encode(CORPUS, allowed_special="all") == \
        gpt2.encode(CORPUS, allowed_special="all")


def test_bad_inputs_raise_one_line_errors(tmp_path):
    for call, words in [(lambda: train("abc", 200), "pass --vocab-size 257"),
                        (lambda: train("", 300), "empty"),
                        (lambda: train("abc", 300, split="words"), "unknown split"),
                        (lambda: BPE.load(tmp_path), "no BPE tokenizer")]:
        with pytest.raises(TinyGPTError, match=words) as err:
            call()
        assert "\n" not in str(err.value)
    (tmp_path / "bpe.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TinyGPTError, match="not a readable BPE tokenizer"):
        BPE.load(tmp_path)


def test_cli_trains_prints_and_writes(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(CORPUS, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["learn", "bpe", "--data", str(data), "--vocab-size", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "merges equal to the tokenizers library's: all 43, in the same order" in printed
    assert "bytes per token on this text: ours" in printed and "GPT-2" in printed
    assert BPE.load(out).merges == train(CORPUS, 300).merges
    assert (out / "vocab.txt").is_file()


@pytest.mark.parametrize("args, words", [(["--vocab-size", "100"], "too small"), (["--max-chars", "0"], "--max-chars"),
                                         (["--data", "missing.txt"], "no text found")])
def test_cli_bad_input_exits_1_with_one_line(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text", encoding="utf-8")
    assert main(["learn", "bpe", "--data", "t.txt", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err


def test_the_lesson_reads_all_of_a_text_except_for_the_basic_split():
    from tinygpt.learn.bpe_compare import BASIC_MAX_CHARS, BPELessonConfig

    assert BPELessonConfig().chars_to_read is None and BPELessonConfig().special_tokens == [GPT2_EOT]
    assert BPELessonConfig(split="none").chars_to_read == BASIC_MAX_CHARS  # every merge rescans the text
    assert BPELessonConfig(split="none", max_chars=10).chars_to_read == 10
    assert BPELessonConfig(special=["<a>"]).special_tokens == ["<a>"]
    for bad, message in ((dict(max_chars=0), "--max-chars must be a positive"), (dict(split="bytes"), "split")):
        with pytest.raises(TinyGPTError, match=message):
            BPELessonConfig(**bad)
