"""What a run writes for TensorBoard, read back with TensorBoard's own event reader."""

from pathlib import Path

import numpy as np

import textgen
from tests.conftest import TINY, make_text
from textgen.monitor import hparams, sample_prime


def read_events(folder: Path):
    """An EventAccumulator over one run folder, fully loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def tensor_values(acc, tag):
    import tensorflow as tf

    return [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_samples_at_three_temperatures_every_n_steps_and_no_histograms_when_off(tmp_path):
    corpus = tmp_path / "plays.txt"
    corpus.write_text("The first line.\n" + make_text(400), encoding="utf-8")  # > 20 steps per epoch
    textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                  max_steps=20, sample_every=10, histograms=False, **TINY)
    run = tmp_path / "runs" / "plays"
    samples = read_events(run / "samples")
    tags = sorted(samples.Tags()["tensors"])
    assert tags == ["temperature_0.5", "temperature_0.8", "temperature_1"]
    for tag in tags:
        steps_texts = tensor_values(samples, tag)
        assert [s for s, _ in steps_texts] == [10, 20]  # step 20 is also the end: written once
        text = steps_texts[-1][1].item().decode()
        assert text.startswith("```\nThe first line.") and text.endswith("```")
    assert not (run / "weights").exists()


def test_tiny_run_has_perplexity_hparams_and_weight_histograms(tiny_bundle):
    run = tiny_bundle.parent.parent / "runs" / tiny_bundle.name
    validation = read_events(run / "validation")
    losses = [float(v) for _, v in tensor_values(validation, "loss")]
    perplexities = [float(v) for _, v in tensor_values(validation, "perplexity")]
    bits = [float(v) for _, v in tensor_values(validation, "bits_per_char")]
    best = [float(v) for _, v in tensor_values(validation, "best_bits_per_char")]
    assert np.allclose(perplexities, np.exp(losses), rtol=1e-5)
    assert best == [min(bits[: i + 1]) for i in range(len(bits))]
    step = validation.Tensors("loss")[-1].step
    assert {"perplexity", "grad_norm"} <= set(read_events(run / "train").Tags()["tensors"])

    root = read_events(run)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(root.Tags()["tensors"])
    weights = read_events(run / "weights")
    tags = weights.Tags()["tensors"]
    assert {"embedding/embeddings", "lstm_0/lstm_cell/kernel", "logits/kernel"} <= set(tags)
    assert all(weights.Tensors(t)[-1].step == step for t in tags)  # the epoch's last step
    samples = read_events(run / "samples")
    assert len(samples.Tags()["tensors"]) == 3


def test_grad_norm_is_logged_when_reported_and_best_bits_survive_a_resume(tmp_path):
    """The custom train step will put grad_norm in the batch logs; the callback passes it on."""
    import keras

    from textgen.monitor import TensorBoardScalars

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)

    class ReportsGradNorm(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs["grad_norm"] = 0.25 * (batch + 1)  # as a custom train_step's logs would carry it

    # best_loss: a resumed run's best so far, which a worse validation must not replace.
    scalars = TensorBoardScalars(tmp_path, tokens_per_step=8, chars_per_token=1.0, every=2, best_loss=1e-3)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y + 1),
              callbacks=[ReportsGradNorm(), scalars])
    train = read_events(tmp_path / "train")
    assert [(s, float(v)) for s, v in tensor_values(train, "grad_norm")] == [(2, 0.5), (4, 1.0)]
    (_, best), = tensor_values(read_events(tmp_path / "validation"), "best_bits_per_char")
    assert np.isclose(float(best), 1e-3 / np.log(2))
    without = TensorBoardScalars(tmp_path / "plain", tokens_per_step=8, chars_per_token=1.0, every=2)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[without])
    assert "grad_norm" not in read_events(tmp_path / "plain" / "train").Tags()["tensors"]


def test_sample_prime_is_the_first_line_and_hparams_are_flat(tiny_generator):
    from textgen.tokenizer import encode

    ids = encode(tiny_generator.tokenizer, "The cat sat.\nA dog ran.\n")
    assert sample_prime(tiny_generator.tokenizer, ids) == "The cat sat."
    flat = hparams(tiny_generator.config)
    assert flat["units"] == 16 and flat["level"] == "char" and flat["corpus"] == "tiny.txt" and flat["cell"] == "lstm"
    assert flat["model_vocab_size"] == tiny_generator.config.model.vocab_size
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_a_corpus_file_name_that_is_not_utf8_trains_and_is_shown_with_a_replacement_character(tmp_path):
    import json
    import os

    corpus = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt"))  # Latin-1 bytes: a surrogate escape here
    corpus.write_text(make_text(), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs", max_steps=2, **TINY)
    assert bundle.name == "caf\ufffd"  # the default run name is text too: printing it cannot fail
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))["config"]
    assert [s["file"] for s in config["corpus"]["sources"]] == ["caf\ufffd.txt"]
    assert hparams(textgen.load(bundle).config)["corpus"] == "caf\ufffd.txt"


def test_progress_bar_total_is_where_max_minutes_runs_out(capsys):
    from tests.test_callbacks import one_minute_budget
    from textgen.monitor import ProgressBar

    budget, model, clock = one_minute_budget(val_batches=6)  # stops at step 23 (tests/test_callbacks.py)
    bar = ProgressBar(budget.expected_steps, tokens_per_step=8, initial=1)
    bar.set_model(model)
    bar.on_train_begin()
    assert bar.bar.total is None  # no step time measured yet: no total rather than 50 epochs
    totals = []
    while not model.stop_training:  # steps of 2 s, each callback called in training's order: bar, budget
        batch = int(model.optimizer.iterations.numpy())
        for callback in (bar, budget):
            callback.on_train_batch_begin(batch)
        clock.now += 2.0
        model.optimizer.iterations.assign(batch + 1)
        for callback in (bar, budget):
            callback.on_train_batch_end(batch, {"loss": 1.0})
        totals.append(bar.bar.total)
    # Step 2 is the first measured step time, so the bar knows its total from step 3 on.
    assert totals == [None] + [23] * 21 and bar.bar.n == 23
    assert "23/23" in str(bar.bar)
    bar.on_train_end()
