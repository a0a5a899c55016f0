"""The control callbacks: Budget, CosineSchedule, BestBundle and ResumeCheckpoint driven directly,
and StopOnSignal in real training processes, signalled only after their first step."""

import json
import re
import signal

import pytest

from textgen.bundle import load_bundle
from tests.conftest import TINY, TINY_FLAGS, Child, make_text



@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tmp_path, sig, code):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    with Child("train", corpus, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "runs",
               "--max-steps", 100_000, *TINY_FLAGS) as child:
        child.wait_for_line("First step done")
        child.proc.send_signal(sig)
        returncode, _, err = child.finish()
    last = [line for line in re.split(r"[\r\n]", err) if line.strip()][-1]
    assert returncode == code, err[-2000:]
    name = signal.Signals(sig).name
    match = re.fullmatch(rf"textgen: stopped by {name} after step (\d+); bundle (\S+); "
                         rf"resume with: python train.py {corpus} --name c --resume .*", last)
    assert match, last
    bundle = load_bundle(match.group(2))  # the work is kept: validated after the last step
    assert bundle.state["step"] == int(match.group(1)) >= 1
    assert bundle.state["val_loss"] is not None


def test_a_signal_before_fit_stops_after_the_first_step(tmp_path, corpus_file):
    """In-process: SIGINT raised during set-up (before any step) still ends cleanly."""
    import os

    import textgen
    from textgen.callbacks import StopOnSignal
    from textgen.config import Interrupted

    original = StopOnSignal.__enter__

    def enter_then_signal(self):
        entered = original(self)
        os.kill(os.getpid(), signal.SIGINT)  # delivered to our handler, not as KeyboardInterrupt
        return entered

    StopOnSignal.__enter__ = enter_then_signal
    try:
        with pytest.raises(Interrupted, match="stopped by SIGINT after step 1;") as stop:
            textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                          max_steps=50, **TINY)
    finally:
        StopOnSignal.__enter__ = original
    assert stop.value.exit_code == 130
    state = json.loads((tmp_path / "ck" / "corpus" / "config.json").read_text())["state"]
    assert state["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


# The control callbacks driven directly: a tiny real Keras model, its optimizer's step
# set by hand, the hooks called with the logs Keras would pass, a fake clock for time.

def tiny_model(learning_rate: float = 0.01):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def at_step(model, step: int) -> None:
    model.optimizer.iterations.assign(step)


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def take_step(callback, model, clock: FakeClock, seconds: float, loss: float = 1.0) -> None:
    """One optimizer step of `seconds`, as model.fit reports it to a callback."""
    batch = int(model.optimizer.iterations.numpy())
    callback.on_train_batch_begin(batch)
    clock.now += seconds
    at_step(model, batch + 1)
    callback.on_train_batch_end(batch, {"loss": loss})


def steps_until_stop(budget, model, clock: FakeClock, seconds: float, limit: int = 1000) -> int:
    """Take steps of `seconds` until the budget stops training; the step it stopped at."""
    for _ in range(limit):
        take_step(budget, model, clock, seconds)
        if model.stop_training:
            return int(model.optimizer.iterations.numpy())
    raise AssertionError("the budget never stopped training")


def test_budget_stops_at_max_steps_exactly_and_measures_progress_in_steps():
    from textgen.callbacks import Budget

    model, clock = tiny_model(), FakeClock()
    budget = Budget(max_steps=5, max_minutes=None, planned_steps=100, val_batches=1, clock=clock)
    budget.set_model(model)
    take_step(budget, model, clock, 1.0)
    take_step(budget, model, clock, 1.0)
    assert budget.progress() == 2 / 5  # against --max-steps, not the planned epochs
    assert steps_until_stop(budget, model, clock, 1.0) == 5
    assert budget.reason == "reached --max-steps 5" and budget.progress() == 1.0
    without_limits = Budget(max_steps=None, max_minutes=None, planned_steps=100, val_batches=1, clock=clock)
    without_limits.set_model(model)
    assert without_limits.progress() == 5 / 100


def one_minute_budget(val_batches: int):
    """A --max-minutes 1 Budget on a tiny model with a fake clock, after a first step of 10 s."""
    from textgen.callbacks import Budget

    model, clock = tiny_model(), FakeClock()
    budget = Budget(max_steps=None, max_minutes=1, planned_steps=10_000, val_batches=val_batches, clock=clock)
    budget.set_model(model)
    take_step(budget, model, clock, 10.0)
    return budget, model, clock


def test_budget_stops_when_a_step_and_the_estimated_validation_would_overrun_max_minutes():
    # The first step (tracing) takes 10 s and is not a step time; later steps take 2 s; the
    # validation estimate is 6 batches x 2 s / 3 (forward only) = 4 s. Step k ends at
    # 10 + 2(k - 1) s and training stops once elapsed + 2 + 4 >= 60: at step 23, 54 s in.
    budget, model, clock = one_minute_budget(val_batches=6)
    assert steps_until_stop(budget, model, clock, 2.0) == 23
    assert budget.elapsed == 54.0 and budget.reason == "reached --max-minutes 1"
    assert budget.progress() == 54 / 60


def test_budget_expects_the_step_where_max_minutes_runs_out():
    # As above: step k >= 2 ends at 10 + 2(k - 1) s and training stops at step 23; the
    # expectation is there from the first measured step time on, and stays as time passes.
    budget, model, clock = one_minute_budget(val_batches=6)
    assert budget.expected_steps() is None  # the first step (tracing) is no step time
    expected = []
    while not model.stop_training:
        take_step(budget, model, clock, 2.0)
        expected.append(budget.expected_steps())
    assert expected == [23] * 22 and int(model.optimizer.iterations.numpy()) == 23


def test_budget_expects_max_steps_or_the_planned_steps_without_a_time_budget():
    from textgen.callbacks import Budget

    assert Budget(max_steps=5, max_minutes=None, planned_steps=100, val_batches=1).expected_steps() == 5
    assert Budget(max_steps=500, max_minutes=None, planned_steps=100, val_batches=1).expected_steps() == 100
    assert Budget(max_steps=None, max_minutes=None, planned_steps=100, val_batches=1).expected_steps() == 100


def test_budget_expected_steps_count_validations_at_their_pace_and_max_steps():
    from textgen.callbacks import Budget

    budget, model, clock = one_minute_budget(val_batches=3)
    take_step(budget, model, clock, 2.0)
    # Validation estimated at 3 x 2 s / 3 = 2 s: step k ends at 10 + 2(k - 1) s, stops once that + 2 + 2 >= 60.
    assert budget.expected_steps() == 24
    budget.on_test_begin()
    clock.now += 10.0
    budget.on_test_end()
    take_step(budget, model, clock, 2.0)
    # The pace counts the validation as one that recurs: 2 steps in 24 - 10 s, 7 s a step;
    # 60 - 24 - 10 (the final validation) leaves 26 s, room for 3 more steps and a validation.
    assert budget.expected_steps() == 6
    capped = Budget(max_steps=7, max_minutes=1, planned_steps=10_000, val_batches=3, clock=clock)
    capped.set_model(model)
    take_step(capped, model, clock, 2.0)
    take_step(capped, model, clock, 2.0)
    assert capped.expected_steps() == 7


def test_budget_counts_a_measured_validation_in_its_time():
    budget, model, clock = one_minute_budget(val_batches=3)
    take_step(budget, model, clock, 2.0)
    budget.on_test_begin()
    clock.now += 10.0  # a 10-second validation
    budget.on_test_end()
    budget.on_epoch_end(0, {"val_loss": 1.0})
    # Step k >= 3 ends at 24 + 2(k - 3) s; it stops once elapsed + 2 + 10 >= 60: step 15, 48 s in.
    assert steps_until_stop(budget, model, clock, 2.0) == 15
    assert budget.elapsed == 48.0 and budget.validation_seconds == 10.0


def test_cosine_schedule_falls_from_base_to_its_final_fraction_over_the_budget():
    import keras
    import pytest

    from textgen.callbacks import Budget, CosineSchedule

    model = tiny_model()
    budget = Budget(max_steps=10, max_minutes=None, planned_steps=10, val_batches=1)
    schedule = CosineSchedule(budget, base=0.01, final=0.1)
    budget.set_model(model)
    schedule.set_model(model)
    rates = []
    for step in (0, 5, 10):  # progress 0, 0.5, 1
        at_step(model, step)
        schedule.on_train_batch_begin(step)
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    assert rates == pytest.approx([0.01, 0.01 * (0.1 + 0.9 * 0.5), 0.001], rel=1e-6)


def test_best_bundle_saves_only_on_improvement_and_stops_after_patience_misses(tmp_path):
    from textgen.callbacks import BestBundle

    model = tiny_model()
    at_step(model, 7)
    saved = []

    def save(state):
        saved.append(state)
        return tmp_path / f"bundle{len(saved)}"

    best = BestBundle(save, patience=2)
    best.set_model(model)
    for epoch, logs in enumerate([{"val_loss": 2.0},            # better than nothing: saved
                                  {"val_loss": 2.5},            # a miss
                                  {"val_loss": 1.5},            # better: saved, misses reset
                                  {"val_loss": float("nan")},   # neither better nor a miss
                                  {"loss": 1.0},                # no validation this epoch
                                  {"val_loss": 1.5}]):          # equal is a miss
        best.on_epoch_end(epoch, logs)
    assert not model.stop_training and best.wait == 1
    best.on_epoch_end(6, {"val_loss": 1.6})  # the second miss in a row
    assert model.stop_training and best.stopped_early
    assert saved == [{"epoch": 1, "step": 7, "best_val_loss": 2.0, "wait": 0, "val_loss": 2.0},
                     {"epoch": 3, "step": 7, "best_val_loss": 1.5, "wait": 0, "val_loss": 1.5}]
    assert best.saved_path == tmp_path / "bundle2"
    assert best.progress() == {"epoch": 7, "step": 7, "best_val_loss": 1.5, "wait": 2}
    best.on_train_end({"loss": 1.0})  # a validation ran: the end saves nothing more
    assert len(saved) == 2


def test_best_bundle_keeps_the_work_when_no_validation_ran_and_carries_resumed_counters():
    from textgen.callbacks import BestBundle

    model = tiny_model()
    saved = []
    best = BestBundle(saved.append, patience=3)
    best.set_model(model)
    best.on_train_end({"loss": float("nan")})  # NaN weights are never a bundle
    assert saved == []
    best.on_train_end({"loss": 1.0})
    assert saved == [{"epoch": 0, "step": 0, "best_val_loss": None, "wait": 0, "val_loss": None}]

    resumed = BestBundle(saved.append, patience=3, best=1.0, wait=2, epoch=4)
    resumed.set_model(model)
    resumed.on_epoch_end(4, {"val_loss": 1.2})  # the third miss counting the saved two
    assert model.stop_training and resumed.progress()["epoch"] == 5 and len(saved) == 1


def test_resume_checkpoint_saves_every_n_steps_and_at_train_end():
    from textgen.callbacks import ResumeCheckpoint

    model, clock = tiny_model(), FakeClock()
    saves = []
    writer = ResumeCheckpoint(lambda: saves.append(int(model.optimizer.iterations.numpy())), every_steps=3)
    writer.set_model(model)
    for _ in range(7):
        take_step(writer, model, clock, 1.0)
    assert saves == [3, 6]
    writer.on_train_end()
    assert saves == [3, 6, 7]


def test_resume_checkpoint_by_time_and_never_after_a_non_finite_loss():
    from textgen.callbacks import ResumeCheckpoint

    model, clock = tiny_model(), FakeClock()
    saves = []
    writer = ResumeCheckpoint(lambda: saves.append(int(model.optimizer.iterations.numpy())), every_steps=None,
                              every_seconds=300, clock=clock)
    writer.set_model(model)
    for _ in range(7):
        take_step(writer, model, clock, 100.0)
    assert saves == [3, 6]  # 300 s after the start, then 300 s after the last save
    take_step(writer, model, clock, 100.0, loss=float("nan"))
    take_step(writer, model, clock, 100.0, loss=float("nan"))  # due, but the state is broken
    writer.on_train_end()
    assert saves == [3, 6]


def dropout_levels(layers) -> list[float]:
    return [float(layer.level.numpy()) for layer in layers]


@pytest.mark.parametrize("steps_per_epoch, min_epochs, level", [(30, 5, 0.0), (10, 5, 1.0), (30, 0, 1.0)])
def test_short_run_dropout_turns_dropout_off_in_a_step_budget_of_fewer_epochs(steps_per_epoch, min_epochs, level):
    from textgen.callbacks import Budget, ShortRunDropout
    from textgen.model import LeveledDropout

    model, layers, said = tiny_model(), [LeveledDropout(0.25), LeveledDropout(0.25)], []
    budget = Budget(max_steps=100, max_minutes=None, planned_steps=1000, val_batches=1)
    dropout = ShortRunDropout(budget, layers, steps_per_epoch, min_epochs, report=said.append)
    for callback in (budget, dropout):
        callback.set_model(model)
    dropout.on_train_begin()
    dropout.on_train_batch_begin(0)  # 100 steps are 3.3 or 10 epochs: known before the first step
    assert dropout.level == level and dropout_levels(layers) == [level] * 2
    assert len(said) == (level == 0)


def test_short_run_dropout_decides_a_time_budget_once_its_pace_is_measured():
    from textgen.callbacks import Budget, ShortRunDropout
    from textgen.model import LeveledDropout

    model, clock, layers, said = tiny_model(), FakeClock(), [LeveledDropout(0.25)], []
    budget = Budget(max_steps=None, max_minutes=1, planned_steps=10**6, val_batches=1, clock=clock)
    dropout = ShortRunDropout(budget, layers, steps_per_epoch=100, min_epochs=5, report=said.append)
    for callback in (budget, dropout):
        callback.set_model(model)
    dropout.on_train_begin()
    for _ in range(ShortRunDropout.DECIDE_AFTER + 1):  # timed steps come after the first; 0.1 s each: ~6 epochs
        dropout.on_train_batch_begin(0)
        assert dropout.level is None and dropout_levels(layers) == [0.0]  # off until decided
        take_step(budget, model, clock, 0.1)
    dropout.on_train_batch_begin(0)
    assert dropout.level == 1.0 and dropout_levels(layers) == [1.0] and not said
    resumed = ShortRunDropout(budget, layers, steps_per_epoch=100, min_epochs=5, decided=0.0)
    resumed.set_model(model)
    resumed.on_train_begin()
    resumed.on_train_batch_begin(0)
    assert resumed.level == 0.0 and dropout_levels(layers) == [0.0]  # a resumed run keeps its choice
