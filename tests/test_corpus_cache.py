import os

import numpy as np
import pytest

from textgen.config import TokenizerConfig
from textgen.corpus_cache import _build, id_dtype, token_ids
from textgen.data import resolve_paths
from textgen.text import read_text
from textgen.tokenizer import DOC, build_tokenizer, encode

TEXT = "Hello, world!\r\nSecond line\twith tabs 😀 and more.\n" * 40


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
def test_cached_ids_equal_in_memory_encoding_with_doc_between_files(tmp_path, level, monkeypatch):
    import textgen.corpus_cache as module

    monkeypatch.setattr(module, "CHUNK_BYTES", 100)  # many pieces, cut mid-line
    monkeypatch.setattr(module, "SUBWORD_CHUNK_BYTES", 100)
    monkeypatch.setattr(module, "SUBWORD_PIECE_CHARS", 30)
    a = write(tmp_path / "a.txt", TEXT)
    b = write(tmp_path / "b.txt", TEXT.upper())
    got = token_ids([a, b], [], TokenizerConfig(level=level, vocab_size=300), root=tmp_path / "cache")
    tok = got.tokenizer
    doc = tok.token_to_id(DOC)
    expected = np.concatenate([encode(tok, read_text(a)), [doc], encode(tok, read_text(b))])
    assert np.array_equal(np.asarray(got.train), expected)
    assert got.characters == 2 * len(read_text(a))
    assert got.train.dtype == (np.uint8 if tok.get_vocab_size() <= 256 else np.uint16)


def test_cache_is_reused_when_unchanged_and_rebuilt_when_a_file_changes(tmp_path):
    a = write(tmp_path / "a.txt", TEXT)
    settings, root = TokenizerConfig(level="char"), tmp_path / "cache"
    first = token_ids([a], [], settings, root=root)
    assert not first.reused and isinstance(first.train, np.memmap)
    again = token_ids([a], [], settings, root=root)
    assert again.reused and again.folder == first.folder
    os.utime(a, ns=(1, 1))  # touched, same bytes: re-hashed and still reused
    assert token_ids([a], [], settings, root=root).reused
    write(a, TEXT.replace("world", "WORLD"))  # same size, new contents
    changed = token_ids([a], [], settings, root=root)
    assert not changed.reused and "W" in changed.tokenizer.get_vocab()
    assert token_ids([a], [], TokenizerConfig(level="word"), root=root).folder != changed.folder


def test_a_build_finishing_second_leaves_the_first_fresh_cache_in_place(tmp_path):
    # Two workers on one machine build the same cache at once; the one finishing second
    # must not delete the folder the first is already reading.
    a = write(tmp_path / "a.txt", TEXT)
    settings, root = TokenizerConfig(level="char"), tmp_path / "cache"
    first = token_ids([a], [], settings, root=root)
    ids = first.folder / "train.ids"
    inode = ids.stat().st_ino
    _build(first.folder, [a.resolve()], [], settings, None)  # the slower worker's build ends
    assert ids.stat().st_ino == inode and not list(root.glob(".*"))  # kept; its own work removed
    assert token_ids([a], [], settings, root=root).reused


def test_folder_glob_walks_subfolders_in_sorted_order(tmp_path):
    write(tmp_path / "b" / "deep" / "x.txt", "x")
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "b" / "notes.md", "skip")
    assert resolve_paths([str(tmp_path)]) == [tmp_path / "a.txt"]
    found = resolve_paths([str(tmp_path)], "**/*.txt")
    assert found == [tmp_path / "a.txt", tmp_path / "b" / "deep" / "x.txt"]


def test_id_dtype_is_sized_to_the_vocabulary():
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16
    assert id_dtype(65_536) == np.uint16 and id_dtype(65_537) == np.uint32


def test_streamed_char_vocabulary_equals_one_pass_vocabulary():
    pieces = [TEXT[i : i + 13] for i in range(0, len(TEXT), 13)]
    assert build_tokenizer(pieces, "char").get_vocab() == build_tokenizer([TEXT], "char").get_vocab()
