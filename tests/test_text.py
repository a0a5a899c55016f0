import pytest

from textgen.config import TextgenError
from textgen.text import read_chunks, read_text

TEXT = "Hello, world!\r\nSecond line\twith tabs 😀 and more.\n" * 40


def test_bom_is_dropped_and_crlf_becomes_lf(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffline one\r\nline two\r\nold\rmac".encode("utf-8"))
    assert read_text(path) == "line one\nline two\nold\rmac"  # a lone CR is kept


def test_nul_bytes_are_refused_with_their_offset(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"hello\x00world")
    with pytest.raises(TextgenError, match="not a text file .NUL byte at offset 5"):
        read_text(path)


@pytest.mark.parametrize("encoding", ["utf-16", "UTF-16-LE", "utf_16be", "utf-32", "utf-32-le"])
def test_wide_encodings_keep_their_nul_bytes_and_lose_their_bom(tmp_path, encoding):
    path = tmp_path / "wide.txt"
    bom = "" if encoding in ("utf-16", "utf-32") else "\ufeff"  # the plain codecs write their own
    path.write_bytes((bom + "wide\r\ntext").encode(encoding))
    assert read_text(path, encoding) == "wide\ntext"
    assert "".join(read_chunks(path, encoding, chunk_bytes=3)) == "wide\ntext"


def test_invalid_text_is_refused_with_its_offset_and_another_encoding_reads_it(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(TextgenError, match=r"not valid utf-8 text \(byte offset 3\); try --encoding"):
        read_text(path)
    assert read_text(path, "latin-1") == "caf\u00e9 ok"


def test_empty_missing_and_unknown_encoding_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TextgenError, match="file is empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(TextgenError, match="missing.txt: cannot read"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(TextgenError, match="unknown encoding 'nope'"):
        read_text(tmp_path / "empty.txt", "nope")


def test_chunks_equal_whole_file_reading_with_cuts_inside_crlf_and_characters(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(("\ufeff" + TEXT).encode("utf-8"))
    expected = TEXT.replace("\r\n", "\n")
    assert read_text(path) == expected
    for size in (1, 2, 3, 7, 64):  # tiny chunks cut CRLF pairs and 4-byte emoji apart
        seen = []
        chunks = list(read_chunks(path, "utf-8", seen.append, chunk_bytes=size))
        assert "".join(chunks) == expected
        assert b"".join(seen) == path.read_bytes() and max(map(len, seen)) == size  # every byte, once


def test_chunked_reading_refuses_bad_bytes_with_their_file_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abcdef\xff")
    with pytest.raises(TextgenError, match="byte offset 6"):
        list(read_chunks(bad, "utf-8", chunk_bytes=4))
    bad.write_bytes(b"abc\xc3\xa9\xff")  # "abcé" then a bad byte; the é is split across chunks
    with pytest.raises(TextgenError, match="byte offset 5"):
        list(read_chunks(bad, "utf-8", chunk_bytes=4))
    bad.write_bytes(b"abcdef\x00")
    with pytest.raises(TextgenError, match="NUL byte at offset 6"):
        list(read_chunks(bad, "utf-8", chunk_bytes=4))


def test_reading_a_large_file_keeps_memory_flat(tmp_path):
    import tracemalloc

    path = tmp_path / "large.txt"
    path.write_text(TEXT * 1500, encoding="utf-8", newline="")  # ~3 MB
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in read_chunks(path, chunk_bytes=65536))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(TEXT.replace("\r\n", "\n")) * 1500
    assert peak < 1_000_000 < path.stat().st_size / 3
