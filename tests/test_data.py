from pathlib import Path

import numpy as np
import pytest

from textgen.config import TextgenError
from textgen.data import StreamLayout, make_stream_dataset, resolve_paths, split_ids
from textgen.text import read_text


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(TextgenError, match="no such file"):
        resolve_paths([str(tmp_path / "missing.txt")])


def test_folder_is_read_in_sorted_order_and_needs_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored")
    assert resolve_paths([str(tmp_path)]) == [tmp_path / "a.txt", tmp_path / "b.txt"]
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
    [path] = resolve_paths(["pydoc"])
    text = read_text(path)
    assert len(text) > 100_000 and "assert" in text
    assert path == tmp_path / "corpora" / "pydoc_topics.txt"


def test_shakespeare_is_fetched_through_the_mirror_with_checksum(shakespeare_mirror, tmp_path):
    [path] = resolve_paths(["shakespeare"])
    text = read_text(path)
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:")
    assert path == tmp_path / "cache" / "corpora" / "tinyshakespeare.txt"  # cached for next time


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
