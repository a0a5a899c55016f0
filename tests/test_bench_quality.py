"""bench/quality.py: the corpus split, its input errors, and both anchors on tiny budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import SHARED_CORPORA, bench_module, make_text


@pytest.fixture(scope="module")
def quality():
    return bench_module("quality")


def _ids(text: str) -> tuple[np.ndarray, int]:
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    return np.array([vocab[ch] for ch in text], dtype=np.int32), len(vocab)


def test_split_is_nanogpts_on_tiny_shakespeare(quality, tmp_path):
    corpus = SHARED_CORPORA / "tinyshakespeare.txt"
    if not corpus.is_file():
        pytest.skip("no shared tiny-shakespeare copy on this machine")
    train, val, split = quality.split_corpus(corpus, tmp_path)
    assert (split["train_chars"], split["val_chars"]) == (1_003_854, 111_540)
    assert train.read_text(encoding="utf-8") + val.read_text(encoding="utf-8") == corpus.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["--minutes", "five"], "--minutes takes numbers"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--minutes", "0"], "--minutes needs positive budgets"),
    (["--systems", "textgen,gpt"], "--systems: unknown ['gpt']"),
    (["--corpus", "/no/such/corpus.txt", "--systems", "keras-classic"], "cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(quality, capsys, argv, message):
    assert quality.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_table_lists_every_run_and_marks_failures(quality):
    table = quality.format_table([
        {"system": "pytorch", "minutes": 5, "val_nats_per_char": 1.4521, "updates": 1645, "tokens_per_s": 11230.4},
        {"system": "textgen", "minutes": 5, "error": "train.py exited 2"},
    ])
    assert "1.4521" in table and "1,645" in table and "11,230" in table
    assert "failed: train.py exited 2" in table


@pytest.mark.slow
def test_keras_classic_anchor_scores_every_position_after_its_window(quality):
    ids, vocab = _ids(make_text(120))
    row = quality.train_keras_classic(ids[:-300], ids[-300:], vocab, seconds=1.0, seed=0, threads=None)
    assert row["updates"] >= 1 and row["tokens_per_s"] > 0
    assert "(260 predictions)" in row["scored"]  # 300 positions less the first 40
    assert 0 < row["val_nats_per_char"] < 2 * math.log(vocab)


@pytest.mark.slow
def test_pytorch_anchor_trains_for_its_budget_and_streams_validation(quality):
    pytest.importorskip("torch")
    ids, vocab = _ids(make_text(200))
    row = quality.train_pytorch(ids[:-300], ids[-300:], vocab, seconds=1.0, seed=0, threads=1)
    assert row["updates"] >= 1 and row["tokens_per_s"] > 0
    assert "(299 predictions)" in row["scored"]
    assert 0 < row["val_nats_per_char"] < 2 * math.log(vocab)
