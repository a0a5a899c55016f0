"""The model card: README.md written with every bundle, never needed to load it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import textgen
from tests.conftest import TINY
from textgen import atomic, card


def test_bundle_has_a_card_saying_what_it_is_how_it_was_trained_and_how_to_load_it(tiny_bundle):
    text = (tiny_bundle / card.CARD_FILE).read_text(encoding="utf-8")
    document = json.loads((tiny_bundle / "config.json").read_text())
    config, state = document["config"], document["state"]
    source = config["corpus"]["sources"][0]
    assert "| model | LSTM cell, 2 layers x 16 units, embedding 8, " in text
    assert f"| tokens | char level, vocabulary {config['model']['vocab_size']} |" in text
    assert f"| {source['file']} | {source['bytes']:,} | `{source['sha256']}` |" in text
    assert f"| training | step {state['step']} (epoch {state['epoch']}), " in text
    assert "bits per character" in text
    assert f"textgen.train('{tiny_bundle.parent.parent / 'tiny.txt'}', batch_size=8, " in text
    assert "max_steps=40" in text and "resumed" not in text
    assert f"textgen generate {tiny_bundle} " in text and f"textgen.load('{tiny_bundle}')" in text
    assert card.CARD_FILE not in document["files"]  # config.json does not vouch for it


@pytest.mark.parametrize("change", ["missing", "edited"])
def test_a_missing_or_edited_card_loads_fine(tiny_bundle, tmp_path, change):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    if change == "missing":
        (bundle / card.CARD_FILE).unlink()
    else:
        (bundle / card.CARD_FILE).write_text("my own notes\n")
    assert textgen.load(bundle).generate("The", length=5, seed=1).startswith("The")


def test_card_write_is_atomic(tiny_bundle, tmp_path, monkeypatch):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    before = (bundle / card.CARD_FILE).read_text()

    def full_disk(tmp, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "commit", full_disk)
    with pytest.raises(OSError):
        card.write_card(bundle, ["textgen.train('x')"], 1.0)
    assert (bundle / card.CARD_FILE).read_text() == before
    assert not [f for f in bundle.iterdir() if f.name.startswith(".tmp-")]


def test_resumed_run_card_keeps_the_first_call_and_adds_the_resume(corpus_file, tmp_path):
    options = dict(checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "r", **TINY)
    textgen.train(str(corpus_file), max_steps=3, **options)
    bundle = textgen.train(str(corpus_file), max_steps=6, resume=True, **options)
    text = (bundle / card.CARD_FILE).read_text()
    first, resumed = text.split("then resumed with:")
    assert "max_steps=3" in first and "resume=True" not in first
    assert "max_steps=6" in resumed and "resume=True" in resumed


def test_durations_read_naturally():
    assert [card._duration(s) for s in (7.4, 125, 7260)] == ["7 s", "2 min 5 s", "2 h 1 min"]


def test_train_call_shows_the_corpus_and_only_options_that_differ_from_their_defaults():
    options = {"units": 32, "checkpoint_dir": "checkpoints", "level": "char", "lowercase": True,
               "log_dir": Path("my runs")}
    assert card.train_call(["a.txt", Path("b.txt")], options) == (
        "textgen.train(['a.txt', 'b.txt'], log_dir='my runs', lowercase=True, units=32)")
    assert card.train_call([Path("a.txt")], {}) == "textgen.train('a.txt')"  # as train.py a.txt calls it
