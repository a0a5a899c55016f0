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


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("level", ["char", "word", "bpe"])
def test_cached_ids_equal_in_memory_encoding_with_doc_between_files(tmp_path, level, lowercase, monkeypatch):
    import textgen.corpus_cache as module

    monkeypatch.setattr(module, "CHUNK_BYTES", 100)  # many pieces, cut mid-line
    monkeypatch.setattr(module, "SUBWORD_CHUNK_BYTES", 100)
    monkeypatch.setattr(module, "SUBWORD_PIECE_CHARS", 30)
    a = write(tmp_path / "a.txt", TEXT)
    b = write(tmp_path / "b.txt", TEXT.upper())
    got = token_ids([a, b], [], TokenizerConfig(level=level, vocab_size=300, lowercase=lowercase),
                    root=tmp_path / "cache")
    tok = got.tokenizer
    assert (tok.normalizer is not None) == lowercase
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


def test_every_tokenizer_setting_and_the_scheme_key_the_cache(tmp_path, monkeypatch):
    import textgen.corpus_cache as module

    a = write(tmp_path / "a.txt", TEXT)
    root = tmp_path / "cache"
    first = token_ids([a], [], TokenizerConfig(level="word"), root=root)
    folded = token_ids([a], [], TokenizerConfig(level="word", lowercase=True), root=root)
    assert not folded.reused and folded.folder != first.folder
    assert "hello" in folded.tokenizer.get_vocab() and "Hello" not in folded.tokenizer.get_vocab()
    monkeypatch.setattr(module, "SCHEME", module.SCHEME + 1)  # build_tokenizer makes other tokens
    assert not token_ids([a], [], TokenizerConfig(level="word"), root=root).reused


def test_word_vocabulary_coverage_is_counted_once_and_kept_in_the_manifest(tmp_path):
    text = "a a a a b b b c c d"  # capped at 5: "a" and " d" become [UNK], 2 of 10 tokens
    a = write(tmp_path / "a.txt", text)
    settings, root = TokenizerConfig(level="word", vocab_size=5), tmp_path / "cache"
    built = token_ids([a], [], settings, root=root)
    assert built.unknown == 2 and len(built.train) == 10
    again = token_ids([a], [], settings, root=root)
    assert again.reused and again.unknown == 2
    assert again.coverage_line() == "Vocabulary 5 covers 80.0 % of word tokens (2 [UNK] in 10)"
