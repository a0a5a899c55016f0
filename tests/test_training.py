import json
from pathlib import Path

import pytest

import textgen
from textgen.config import TextgenError
from tests.conftest import TINY, make_text


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard event folder, read with TensorBoard's own reader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    return out


def test_loss_falls_on_a_repetitive_text(tmp_path, capsys):
    corpus = tmp_path / "rep.txt"
    corpus.write_text(make_text(300), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=150, **{**TINY, "units": 32, "learning_rate": 1e-2})
    scalars = read_scalars(tmp_path / "runs" / "rep" / "train")
    losses = [v for _, v in scalars["loss"]]
    assert losses[-1] < 0.7 * losses[0]
    state = json.loads((bundle / "config.json").read_text())["state"]
    assert state["val_loss"] < 2.5  # far below log(vocab) ~ 3 for an untrained model


def test_tensorboard_has_the_named_scalars_on_the_step_axis(tiny_bundle):
    runs = tiny_bundle.parent.parent / "runs" / tiny_bundle.name
    train = read_scalars(runs / "train")
    assert {"loss", "bits_per_char", "learning_rate", "tokens_per_second"} <= set(train)
    assert [s for s, _ in train["loss"]] == [10, 20, 30, 40]
    validation = read_scalars(runs / "validation")
    assert {"loss", "bits_per_char"} <= set(validation)
    assert all(step <= 40 for step, _ in validation["loss"])


def test_existing_run_name_is_refused_unless_overwrite(tiny_bundle):
    root = tiny_bundle.parent.parent
    corpus = root / "tiny.txt"
    kwargs = dict(checkpoint_dir=root / "checkpoints", log_dir=root / "runs2", max_steps=2, **TINY)
    with pytest.raises(TextgenError, match="already exists"):
        textgen.train(str(corpus), **kwargs)
    again = textgen.train(str(corpus), name="other", **kwargs)
    assert again.name == "other" and (again / "config.json").is_file()


def test_stopping_mid_epoch_still_validates_and_saves(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(400), encoding="utf-8")  # an epoch is longer than 3 steps
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=3, **TINY)
    state = json.loads((bundle / "config.json").read_text())["state"]
    assert state["step"] == 3 and state["val_loss"] is not None
