from pathlib import Path

import numpy as np
import pytest

from textgen.config import TextgenError
from textgen.data import StreamLayout, load_corpus, make_stream_dataset, read_text, resolve_paths, split_ids


def test_bom_is_dropped_and_crlf_becomes_lf(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffline one\r\nline two\r\n".encode("utf-8"))
    assert read_text(path) == "line one\nline two\n"


def test_nul_bytes_are_refused_with_their_offset(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"hello\x00world")
    with pytest.raises(TextgenError, match="NUL byte at offset 5"):
        read_text(path)


def test_invalid_utf8_is_refused_with_its_offset_and_encoding_flag_reads_it(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(TextgenError, match="byte offset 3"):
        read_text(path)
    assert read_text(path, "latin-1") == "caf\u00e9 ok"


def test_empty_file_and_missing_path_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TextgenError, match="empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(TextgenError, match="no such file"):
        resolve_paths([str(tmp_path / "missing.txt")])


def test_folder_is_read_in_sorted_order_and_needs_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored")
    corpus = load_corpus([str(tmp_path)])
    assert corpus.text == "first\nsecond"
    assert [s["file"] for s in corpus.sources] == ["a.txt", "b.txt"]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(TextgenError, match="no files matching"):
        resolve_paths([str(empty)])


def test_existing_path_wins_over_corpus_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pydoc").write_text("my own file")
    assert resolve_paths(["pydoc"]) == [Path("pydoc")]


def test_pydoc_corpus_is_built_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path))
    corpus = load_corpus(["pydoc"])
    assert len(corpus.text) > 100_000 and "assert" in corpus.text


def test_shakespeare_is_fetched_through_the_mirror_with_checksum(shakespeare_mirror, tmp_path):
    corpus = load_corpus(["shakespeare"])
    assert len(corpus.text) == 1_115_394
    assert corpus.text.startswith("First Citizen:")
    assert (tmp_path / "cache" / "corpora" / "tinyshakespeare.txt").is_file()  # cached for next time


def test_stream_batches_shift_by_one_and_continue_each_other():
    ids = np.arange(103, dtype=np.int32)
    layout = StreamLayout.fit(len(ids), batch=4, seq_len=5)  # 4 streams of 25 tokens
    assert (layout.batch, layout.stream_len, layout.steps) == (4, 25, 5)
    batches = list(make_stream_dataset(ids, layout).take(7))
    for step, ((x, reset), y) in enumerate(batches):
        x, y = x.numpy(), y.numpy()
        assert list(reset.numpy()) == [step % 5 == 0] * len(x)  # the streams start over every 5 batches
        step %= 5
        assert x.shape == y.shape == (4, 5)
        assert np.array_equal(y, x + 1)  # target = input shifted by one
        assert np.array_equal(x[:, 0], np.arange(4) * 25 + step * 5)  # row b continues stream b
    resumed = next(iter(make_stream_dataset(ids, layout, first_step=6)))
    assert np.array_equal(resumed[0][0], batches[6][0][0])  # batch g depends on g alone


def test_short_texts_shrink_the_layout_instead_of_failing():
    layout = StreamLayout.fit(10, batch=64, seq_len=128)
    assert (layout.batch, layout.seq_len, layout.steps) == (1, 9, 1)
    x, y = layout.batch_at(np.arange(10), 0)
    assert x.tolist() == [list(range(9))] and y.tolist() == [list(range(1, 10))]


def test_split_holds_out_the_tail_and_refuses_short_corpora():
    ids = np.arange(100, dtype=np.int32)
    train, val = split_ids(ids, 0.1, seq_len=16)
    assert np.array_equal(val, np.arange(90, 100)) and len(train) == 90
    with pytest.raises(TextgenError, match="too short.*--seq-len"):
        split_ids(ids, 0.1, seq_len=128)
