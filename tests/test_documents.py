"""Documents: each --docs mode's documents reach the token ids separated by [DOC]; bad rows refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY
from textgen.cli import main
from textgen.config import TextgenError, TokenizerConfig
from textgen.corpus_cache import token_ids
from textgen.data import split_documents
from textgen.tokenizer import DOC, decode, label_ids

DOCS = ["the cat sat", "a dog ran\nto it", "on the mat"]


def _documents(got) -> list[str]:
    """The texts between [DOC] ids of a token file, decoded."""
    tok = got.tokenizer
    doc_id = tok.token_to_id(DOC)
    ids = np.asarray(got.train)
    assert ids[0] == doc_id and ids[-1] == doc_id  # every document starts and ends at a [DOC]
    cuts = np.flatnonzero(ids == doc_id)
    return [decode(tok, ids[a + 1 : b].tolist()) for a, b in zip(cuts[:-1], cuts[1:])]


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("level", ["char", "word"])
def test_each_docs_mode_reaches_the_ids_as_documents_between_doc_tokens(tmp_path, level):
    lines = _write(tmp_path, "a.txt", "the cat sat\n\n  \non the mat\n")
    jsonl = _write(tmp_path, "a.jsonl", "".join(json.dumps({"t": d, "n": 1}) + "\n" for d in DOCS))
    rows = "".join('"' + d + '",x\n' for d in DOCS)
    table = _write(tmp_path, "a.csv", "t,other\n" + rows)
    for path, docs, want in ((lines, "lines", ["the cat sat", "on the mat"]), (jsonl, "jsonl:t", DOCS),
                             (table, "csv:t", DOCS)):
        got = token_ids([path], [], TokenizerConfig(level=level, docs=docs), root=tmp_path / "cache")
        assert _documents(got) == want
        assert got.characters == sum(map(len, want))


def test_the_docs_mode_keys_the_cache(tmp_path):
    path = _write(tmp_path, "a.txt", "the cat\nsat on\n")
    as_text = token_ids([path], [], TokenizerConfig(), root=tmp_path / "cache")
    as_lines = token_ids([path], [], TokenizerConfig(docs="lines"), root=tmp_path / "cache")
    assert as_text.folder != as_lines.folder
    doc = as_text.tokenizer.token_to_id(DOC)
    assert np.count_nonzero(np.asarray(as_text.train) == doc) == 0  # one file as text: no [DOC]
    assert np.count_nonzero(np.asarray(as_lines.train) == doc) == 3


def test_labels_become_tokens_read_before_each_document(tmp_path):
    path = _write(tmp_path, "a.jsonl", '{"t": "ab", "k": "x"}\n{"t": "cd", "k": "y"}\n{"t": "ba", "k": "x"}\n')
    got = token_ids([path], [], TokenizerConfig(docs="jsonl:t", label_field="k"), root=tmp_path / "cache")
    labels = label_ids(got.tokenizer)
    assert list(labels) == ["x", "y"]
    doc, ids = got.tokenizer.token_to_id(DOC), np.asarray(got.train)
    starts = np.flatnonzero(ids == doc)[:-1]
    assert ids[starts + 1].tolist() == [labels["x"], labels["y"], labels["x"]]


def test_validation_holds_out_whole_documents():
    doc = 1
    ids = np.array([doc, 5, 6, doc, 7, doc, 8, 9, 9, doc, 4, doc])  # four documents
    train, val = split_documents(ids, doc, 0.5, seq_len=2)
    assert train.tolist() == [doc, 5, 6, doc, 7, doc]
    assert val.tolist() == [doc, 8, 9, 9, doc, 4, doc]
    train, val = split_documents(ids, doc, 0.01, seq_len=2)  # at least one document
    assert val.tolist() == [doc, 4, doc]


BAD = [
    ("lines", "empty.txt", "\n\n  \n", "0 document(s)"),
    ("lines", "one.txt", "only one\n", "1 document(s)"),
    ("jsonl:t", "bad.jsonl", '{"t": "a"}\nnot json\n', "bad.jsonl:2: not a JSON line"),
    ("jsonl:t", "lacks.jsonl", '{"t": "a"}\n{"u": "b"}\n', "lacks.jsonl:2: no field 't'"),
    ("jsonl:t", "number.jsonl", '{"t": "a"}\n\n{"t": 5}\n', "number.jsonl:3: field 't' is not a string"),
    ("csv:t", "nocol.csv", "a,b\n1,2\n", "nocol.csv:1: no column 't'"),
]


@pytest.mark.parametrize("docs, name, text, message", BAD, ids=[b[1] for b in BAD])
def test_bad_documents_are_one_line_naming_file_and_line_and_nothing_is_written(tmp_path, capsys, docs, name,
                                                                                 text, message):
    path = _write(tmp_path, name, text)
    code = main(["train", str(path), "--docs", docs, "--checkpoint-dir", str(tmp_path / "ck"),
                 "--log-dir", str(tmp_path / "runs"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ck").exists() and not (tmp_path / "runs").exists()


def test_a_label_that_is_not_a_string_is_refused(tmp_path):
    path = _write(tmp_path, "a.jsonl", '{"t": "a", "k": "x"}\n{"t": "b", "k": 3}\n')
    with pytest.raises(TextgenError, match=r"a.jsonl:2: field 'k' is not a string"):
        token_ids([path], [], TokenizerConfig(docs="jsonl:t", label_field="k"), root=tmp_path / "cache")


def test_the_bundle_records_the_docs_mode(tmp_path):
    import textgen
    from textgen.bundle import bundle_info

    path = _write(tmp_path, "a.txt", "".join(f"line {i} of the cat\n" for i in range(40)))
    bundle = textgen.train(str(path), docs="lines", checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=2, **TINY)
    assert bundle_info(bundle)["config"]["tokenizer"]["docs"] == "lines"
