import json
import math
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
    # step 40's rate was set at its start, 39 of 40 steps in: near the default end, 0
    cosine = 0.5 * (1 + math.cos(math.pi * 39 / 40))
    assert train["learning_rate"][-1][1] == pytest.approx(4e-3 * cosine, rel=1e-5)
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


class CrashAtStart(__import__("keras").callbacks.Callback):
    """Fails before the first step, as a run that dies before its first resume save."""

    def on_train_begin(self, logs=None):
        raise RuntimeError("crashed before the first save")


def test_overwrite_removes_the_old_runs_resume_state_and_logs_up_front(tmp_path, corpus_file):
    from textgen.bundle import BundleError

    options = dict(checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs", max_steps=2, **TINY)
    textgen.train(str(corpus_file), **options)
    old_logs = list((tmp_path / "runs" / "corpus").rglob("events.*"))
    assert old_logs and (tmp_path / "ck" / "corpus" / "resume").is_dir()
    with pytest.raises(RuntimeError, match="crashed"):
        textgen.train(str(corpus_file), overwrite=True, callbacks=[CrashAtStart()], **options)
    assert not any(log.exists() for log in old_logs)
    with pytest.raises(BundleError, match="no resume state"):  # never the old run's
        textgen.train(str(corpus_file), resume=True, **options)


def test_stopping_mid_epoch_still_validates_and_saves(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(400), encoding="utf-8")  # an epoch is longer than 3 steps
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=3, **TINY)
    state = json.loads((bundle / "config.json").read_text())["state"]
    assert state["step"] == 3 and state["val_loss"] is not None


class StopAt(__import__("keras").callbacks.Callback):
    """Stops training after a given optimizer step, as an interrupt does."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            self.model.stop_training = True


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(tmp_path):
    import numpy as np

    from textgen.resume import load_resume_state

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(300), encoding="utf-8")
    # dropout_min_epochs 0: dropout on, though 24 steps are half an epoch
    options = {**TINY, "dropout": 0.1, "dropout_min_epochs": 0.0, "max_steps": 24, "checkpoint_dir": tmp_path / "ck",
               "log_dir": tmp_path / "runs"}
    textgen.train(str(corpus), name="whole", **options)
    textgen.train(str(corpus), name="split", callbacks=[StopAt(11)], **options)
    assert load_resume_state(tmp_path / "ck" / "split").progress["step"] == 11
    textgen.train(str(corpus), name="split", resume=True, **options)
    whole = load_resume_state(tmp_path / "ck" / "whole")
    split = load_resume_state(tmp_path / "ck" / "split")
    assert split.progress["step"] == whole.progress["step"] == 24
    for key in whole.arrays:
        np.testing.assert_allclose(split.arrays[key], whole.arrays[key], rtol=1e-5, atol=1e-6, err_msg=key)
    steps = [s for s, _ in read_scalars(tmp_path / "runs" / "split" / "train")["loss"]]
    assert steps == sorted(set(steps)) == [10, 20]  # the curve continues, no restart, no duplicates


def test_a_run_too_short_to_overfit_trains_without_dropout_and_its_resumption_too(tmp_path, capsys):
    from textgen.resume import load_resume_state

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(300), encoding="utf-8")  # ~48 steps an epoch
    options = {**TINY, "dropout": 0.1, "checkpoint_dir": tmp_path / "ck", "log_dir": tmp_path / "runs"}
    textgen.train(str(corpus), name="short", max_steps=8, **options)
    assert "Dropout off: this run is expected to end after 0.2 epochs" in capsys.readouterr().out
    assert load_resume_state(tmp_path / "ck" / "short").progress["dropout_level"] == 0.0
    textgen.train(str(corpus), name="short", max_steps=300, resume=True, callbacks=[StopAt(10)], **options)
    assert load_resume_state(tmp_path / "ck" / "short").progress["dropout_level"] == 0.0  # 6 epochs now: kept off
    textgen.train(str(corpus), name="long", max_steps=300, callbacks=[StopAt(2)], **options)
    assert load_resume_state(tmp_path / "ck" / "long").progress["dropout_level"] == 1.0


def test_resume_refuses_a_different_corpus_or_settings(tiny_bundle):
    root = tiny_bundle.parent.parent
    other = root / "other.txt"
    other.write_text(make_text(150), encoding="utf-8")
    kwargs = dict(name="tiny", checkpoint_dir=root / "checkpoints", log_dir=root / "runs", resume=True)
    with pytest.raises(TextgenError, match="corpus differs"):
        textgen.train(str(other), **kwargs)
    with pytest.raises(TextgenError, match="--units 99 differs"):
        textgen.train(str(root / "tiny.txt"), units=99, **kwargs)


def test_nan_loss_stops_with_a_clear_message_and_keeps_no_broken_bundle(tmp_path, capsys):
    from textgen.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    code = main(["train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"), "--log-dir",
                 str(tmp_path / "runs"), "--max-steps", "30", "--learning-rate", "3e38", *flags])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "the loss became nan" in err and "--learning-rate" in err, err
    assert not (tmp_path / "ck" / "c" / "config.json").exists()  # NaN weights are never a bundle


def test_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, corpus_file):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TextgenError, match="cannot write there"):
        textgen.train(str(corpus_file), checkpoint_dir=blocker / "ck", log_dir=tmp_path / "runs", **TINY)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", "nul\0byte"])
def test_run_names_that_are_not_plain_folder_names_are_refused(tmp_path, corpus_file, name):
    with pytest.raises(TextgenError, match="invalid run name"):
        textgen.train(str(corpus_file), name=name, checkpoint_dir=tmp_path / "ck", **TINY)


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(tmp_path, corpus_file):
    with pytest.raises(TextgenError, match="GiB of memory"):
        textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                      **{**TINY, "units": 65_536, "layers": 16})


def test_a_short_time_budget_trains_past_the_first_step_and_ends_in_time(tmp_path):
    import time

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(300), encoding="utf-8")
    start = time.perf_counter()
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_minutes=0.3, **TINY)
    assert time.perf_counter() - start < 0.3 * 60 + 8  # data, model build and bundle save on top
    state = json.loads((bundle / "config.json").read_text())["state"]
    assert state["step"] > 20  # the first step's tracing time is not taken as the step time


def test_mixed_precision_trains_and_saves_float32_weights_that_generate(tmp_path, corpus_file):
    # bfloat16 on this CPU: allowed, but slower than float32 on most CPUs (README says so)
    import keras

    bundle = textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=10, mixed_precision=True, **TINY)
    state = json.loads((bundle / "config.json").read_text())["state"]
    assert state["val_loss"] < 3.5  # finite and sane: log(vocabulary) is about 3.3
    import h5py

    dtypes = set()
    with h5py.File(bundle / "model.weights.h5") as f:
        f.visititems(lambda name, item: dtypes.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {"float32"}
    model = textgen.load(bundle)
    assert model.generate(prime="The ", length=10, seed=0).startswith("The ")
    assert keras.config.dtype_policy().name == "float32"  # set per layer: nothing leaks into later runs


def test_resume_refuses_a_different_number_of_replicas(tiny_bundle, tmp_path):
    import shutil

    root = tiny_bundle.parent.parent
    shutil.copytree(tiny_bundle, tmp_path / "ck" / "tiny")
    state_file = tmp_path / "ck" / "tiny" / "resume" / "state.json"
    document = json.loads(state_file.read_text())
    document["state"]["replicas"] = 2  # as a run on two GPUs would have saved it
    state_file.write_text(json.dumps(document))
    with pytest.raises(TextgenError, match="trained on 2 replicas and must resume on as many, not 1"):
        textgen.train(str(root / "tiny.txt"), name="tiny", checkpoint_dir=tmp_path / "ck",
                      log_dir=tmp_path / "runs", resume=True, max_steps=50)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_each_cell_trains_saves_loads_and_resumes_exactly(tmp_path, cell):
    import numpy as np

    from textgen.resume import load_resume_state
    from textgen.evaluate import evaluate_texts

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(300), encoding="utf-8")
    options = {**TINY, "cell": cell, "dropout": 0.1, "max_steps": 8, "checkpoint_dir": tmp_path / "ck",
               "log_dir": tmp_path / "runs"}
    bundle = textgen.train(str(corpus), name="whole", **options)
    textgen.train(str(corpus), name="split", callbacks=[StopAt(4)], **options)
    textgen.train(str(corpus), name="split", resume=True, **options)
    whole, split = (load_resume_state(tmp_path / "ck" / n) for n in ("whole", "split"))
    for key in whole.arrays:
        np.testing.assert_allclose(split.arrays[key], whole.arrays[key], rtol=1e-5, atol=1e-6, err_msg=key)
    generator = textgen.load(bundle)
    assert generator.config.model.cell == cell and f"{cell}_1" in {layer.name for layer in generator.model.layers}
    assert len(generator.generate("The cat", length=20, seed=1)) > len("The cat")
    assert evaluate_texts(generator, [make_text(5)]).bits_per_char > 0


def test_resume_with_a_different_cell_is_one_line_and_exit_2(tiny_bundle, capsys):
    from textgen.cli import main

    root = tiny_bundle.parent.parent
    code = main(["train", str(root / "tiny.txt"), "--name", "tiny", "--checkpoint-dir", str(root / "checkpoints"),
                 "--log-dir", str(root / "runs"), "--resume", "--cell", "gru"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--cell gru differs from the run's lstm" in err[0], err


def test_a_second_run_of_the_same_name_is_refused_while_the_first_holds_the_lock(tmp_path, corpus_file):
    import os

    from textgen.run_lock import run_lock

    options = dict(checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs", max_steps=2, **TINY)
    with run_lock(tmp_path / "ck" / "corpus"):
        with pytest.raises(TextgenError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            textgen.train(str(corpus_file), **options)
    assert not (tmp_path / "ck" / "corpus" / "resume").exists()  # refused before it wrote anything
    assert (textgen.train(str(corpus_file), **options) / "config.json").is_file()  # released on exit


@pytest.mark.slow
def test_a_running_process_holds_its_run_and_kill_9_leaves_no_stale_lock(tmp_path, corpus_file):
    import os
    import signal

    from tests.conftest import TINY_FLAGS, Child

    options = dict(checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs", max_steps=2, **TINY)
    with Child("train", corpus_file, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "runs",
               "--max-steps", 10**6, *TINY_FLAGS) as child:
        child.wait_for_line("First step done")
        with pytest.raises(TextgenError, match=f"in use by another run \\(pid {child.proc.pid}\\)"):
            textgen.train(str(corpus_file), overwrite=True, **options)
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
    assert (textgen.train(str(corpus_file), overwrite=True, **options) / "config.json").is_file()


class InterruptAt(__import__("keras").callbacks.Callback):
    """Sends this process SIGINT after a given step, as Ctrl-C does."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        import os
        import signal

        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_the_printed_resume_command_resumes_with_the_runs_data_settings(tmp_path, monkeypatch, capsys):
    import shlex

    from textgen.cli import main
    from textgen.config import Interrupted
    from textgen.resume import load_resume_state

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.md").write_text(make_text(150), encoding="utf-8")
    (folder / "b.md").write_text(make_text(90), encoding="utf-8")
    (folder / "skip.txt").write_text("not read: the run's --glob is *.md\n", encoding="utf-8")
    val = tmp_path / "val.txt"
    val.write_text(make_text(30), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted) as stopped:
        textgen.train(str(folder), glob="*.md", val_file=str(val), max_steps=6, checkpoint_every=1,
                      callbacks=[InterruptAt(2)], **TINY)
    command = shlex.split(str(stopped.value).split("resume with: ")[1])
    assert command[:2] == ["python", "train.py"] and "--val-file" in command and "--glob" in command
    assert main(["train", *command[2:], "--val-file", str(folder / "a.md")]) == 2
    assert "--val-file" in capsys.readouterr().err.splitlines()[-1]  # one line: refused
    assert main(["train", *command[2:]]) == 0  # the command as printed
    bundle = tmp_path / "checkpoints" / "texts"
    assert load_resume_state(bundle).progress["step"] == 6
    assert json.loads((bundle / "config.json").read_text())["config"]["corpus"]["val_file"] == str(val)
