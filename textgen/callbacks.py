"""Keras callbacks that control a textgen run: when it stops, its learning rate, what it saves.

Budget (a time or step budget), CosineSchedule (the learning rate over that budget),
ShortRunDropout (no dropout in a run too short to overfit),
BestBundle (keep the best model by validation loss, early stopping), ResumeCheckpoint
(the resume state every N steps and at the end) and StopOnSignal (Ctrl-C or SIGTERM
stop cleanly). What a run shows (progress bar, samples, TensorBoard) is textgen.monitor.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import keras

from textgen.config import TextgenError


def iterations(model) -> int:
    """Optimizer steps taken so far: the one step axis for every curve and budget."""
    return int(model.optimizer.iterations.numpy())


class Budget(keras.callbacks.Callback):
    """Track progress through the run's budget; stop at `max_steps` or `max_minutes`.

    The clock starts at the first step and includes validation: training stops early
    enough that the final validation fits the budget. The step time is measured from
    the second step on (the first one includes graph tracing), and the validation
    time is the last measured pass (estimated from the step time before the first).
    Without either limit, progress is measured against `planned_steps`.

    Args:
        agree: for multi-worker training, a function returning the mean over workers of a
            small float vector (textgen.distribute.worker_mean). Every worker then sees the
            same clock (so the same learning rate) and stops at the same step, also when
            only one of them was interrupted: one leaving alone would leave the others
            waiting forever in the next step's all-reduce.
        clock: seconds from an arbitrary start (tests pass a fake one).
    """

    def __init__(self, max_steps: int | None, max_minutes: float | None, planned_steps: int,
                 val_batches: int, agree: Callable[[list[float]], list[float]] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.clock = clock
        self.max_steps = max_steps
        self.seconds = None if max_minutes is None else max_minutes * 60
        self.planned_steps = planned_steps
        self.val_batches = val_batches
        self.agree = agree
        self.start: float | None = None  # the first step's start (a resumed run's clock starts again)
        self.elapsed = 0.0  # seconds since `start` at the last step's end (the workers' mean)
        self.steps_done = 0  # steps after the first, in this process
        self.step_seconds = 0.0  # their total time, validation excluded
        self.validation_seconds: float | None = None
        self.step_time: float | None = None  # the workers' mean step time, once measured
        self.validation_time: float | None = None  # the workers' mean validation time, once measured
        self.measured_at = 0  # the optimizer step `elapsed` and the times above were taken at
        self.first_elapsed = 0.0  # `elapsed` at the first step's end (tracing), where the pace starts
        self.reason = ""

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: the larger of steps and time."""
        step = iterations(self.model)
        fractions = [step / (self.max_steps or self.planned_steps)]
        if self.seconds is not None:
            fractions.append(self.elapsed / self.seconds)
        return min(1.0, max(fractions))

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = self.clock()
        if self.start is None:
            self.start = self._batch_start

    def on_test_begin(self, logs=None):
        self._test_start = self.clock()

    def on_test_end(self, logs=None):
        self.validation_seconds = self.clock() - self._test_start

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if self._batch_start > self.start:  # not the first step
            self.steps_done += 1
            self.step_seconds += now - self._batch_start
        step = self.step_seconds / self.steps_done if self.steps_done else None
        self.elapsed, self.step_time, self.validation_time, stopping = self._agreed(
            now - self.start, step, self.validation_seconds, self.model.stop_training)
        self.measured_at = iterations(self.model)
        if not self.steps_done:
            self.first_elapsed = self.elapsed
        if self.max_steps is not None and self.measured_at >= self.max_steps:
            self._stop(f"reached --max-steps {self.max_steps:,}")
        elif self.seconds is not None and self._out_of_time():
            self._stop(f"reached --max-minutes {self.seconds / 60:g}")
        elif stopping and not self.model.stop_training:
            self._stop("another worker stopped")

    def on_epoch_end(self, epoch, logs=None):
        *_, stopping = self._agreed(self.elapsed, None, None, self.model.stop_training)
        if stopping and not self.model.stop_training:  # e.g. a signal during validation
            self._stop("another worker stopped")

    def _agreed(self, elapsed: float, step: float | None, validation: float | None, stopping: bool) -> tuple:
        """The workers' mean elapsed time, step time and validation time, and whether any stops."""
        if self.agree is None:
            return elapsed, step, validation, stopping
        # -1 stands for "not measured yet"; every worker measures its first step at the same step.
        mean = self.agree([elapsed, -1.0 if step is None else step,
                           -1.0 if validation is None else validation, float(stopping)])
        return (float(mean[0]), None if mean[1] < 0 else float(mean[1]),
                None if mean[2] < 0 else float(mean[2]), bool(mean[3] > 0))

    def expected_steps(self) -> int | None:
        """The step training should end at (the progress bar's total): --max-steps or the
        planned epochs, or sooner where --max-minutes runs out at the pace so far; None
        while a time budget has no step time measured yet.

        The pace is wall time per step since the first, so the validations and saves that
        recur every epoch count too; the final validation is kept out of the time left.
        """
        cap = min(self.planned_steps, self.max_steps or self.planned_steps)
        if self.seconds is None:
            return cap
        if self.step_time is None:
            return None
        pace = max((self.elapsed - self.first_elapsed) / self.steps_done, 1e-9)
        # As _out_of_time: another step runs only while it and the final validation fit.
        room = self.seconds - self._final_validation() - self.elapsed
        return min(cap, self.measured_at + max(0, math.ceil(room / pace) - 1))

    def _out_of_time(self) -> bool:
        """Whether one more step and a final validation would overrun the budget."""
        if self.step_time is None:
            return self.elapsed >= self.seconds
        return self.elapsed + self.step_time + self._final_validation() >= self.seconds

    def _final_validation(self) -> float:
        """The last validation's time, or before one ran an estimate from the step time."""
        if self.validation_time is None:
            return self.val_batches * self.step_time / 3  # forward only: ~1/3 of a step
        return self.validation_time

    def _stop(self, reason: str) -> None:
        self.reason = reason
        self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Learning rate: cosine decay from `base` to `base * final` over the budget.

    Follows `budget.progress()`, so a --max-minutes run decays over its minutes and
    a --max-steps run over its steps: the end of any budget is spent at a low rate.
    """

    def __init__(self, budget: Budget, base: float, final: float):
        super().__init__()
        self.budget, self.base, self.final = budget, base, final

    def on_train_batch_begin(self, batch, logs=None):
        cosine = 0.5 * (1 + math.cos(math.pi * self.budget.progress()))
        self.model.optimizer.learning_rate = self.base * (self.final + (1 - self.final) * cosine)


class ShortRunDropout(keras.callbacks.Callback):
    """Train without dropout when the run is expected to end before `min_epochs` epochs.

    Why: dropout fights overfitting, which takes repeated passes over the corpus; before them
    it only slows learning. With bench/quality.py on tiny-shakespeare (2 x 256, a two-core AVX2
    CPU), 5-minute runs of ~5.3 epochs ended 0.015 nats/char lower without dropout than with
    0.25 (mean of 3 seeds, paired), and a run of 11 epochs (a 500 KB corpus) 0.025 higher; on
    that smaller corpus the two cross at about 5 epochs (later on more text, so the default is
    6). Dropout switched on mid-run did worse than either, so the choice is made
    once, from the budget's expected end: at the start for step and epoch budgets, after
    DECIDE_AFTER timed steps for --max-minutes (without dropout until then). A resumed run
    keeps its choice (`decided`).
    """

    DECIDE_AFTER = 20  # steps: the step time of the first few is still settling

    def __init__(self, budget: Budget, layers: list, steps_per_epoch: int, min_epochs: float,
                 decided: float | None = None, report: Callable[[str], None] = print):
        super().__init__()
        self.budget, self.layers, self.steps_per_epoch = budget, layers, steps_per_epoch
        self.min_epochs, self.report = min_epochs, report
        self.level = 1.0 if min_epochs == 0 else decided  # the dropout level; None until decided

    def on_train_begin(self, logs=None):
        self._set(0.0 if self.level is None else self.level)

    def on_train_batch_begin(self, batch, logs=None):
        if self.level is not None or (self.budget.seconds is not None and self.budget.steps_done < self.DECIDE_AFTER):
            return
        expected = self.budget.expected_steps()
        if expected is None:
            return
        epochs = expected / self.steps_per_epoch
        self.level = 1.0 if epochs >= self.min_epochs else 0.0
        self._set(self.level)
        if self.layers and not self.level:
            self.report(f"Dropout off: this run is expected to end after {epochs:.1f} epochs, "
                        f"fewer than --dropout-min-epochs {self.min_epochs:g}")

    def _set(self, level: float) -> None:
        for layer in self.layers:
            layer.set_level(level)


class BestBundle(keras.callbacks.Callback):
    """Keep the bundle the best model by validation loss; stop after `patience` misses.

    `save(state)` writes the bundle; it is called when validation loss improves, and
    at the end of training if no validation ever ran (so no work is lost). Early
    stopping lives here rather than in keras.callbacks.EarlyStopping because that one
    resets its counters in on_train_begin, so a resumed run would forget them.
    """

    def __init__(self, save: Callable[[dict], Path], patience: int, best: float = math.inf,
                 wait: int = 0, epoch: int = 0):
        super().__init__()
        self.save = save
        self.patience = patience
        self.best, self.wait, self.epoch = best, wait, epoch
        self.saved_path: Path | None = None
        self.stopped_early = False

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = epoch + 1
        val_loss = float((logs or {}).get("val_loss", math.nan))
        if val_loss < self.best:  # NaN never compares smaller
            self.best, self.wait = val_loss, 0
            self.saved_path = self.save(self._state(val_loss))
        elif not math.isnan(val_loss):
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_early = True
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        no_validation_yet = math.isinf(self.best)
        if no_validation_yet and not math.isnan(float((logs or {}).get("loss", 0.0))):
            self.saved_path = self.save(self._state(None))

    def progress(self) -> dict:
        """The counters a resumed run needs to carry on."""
        return {"epoch": self.epoch, "step": iterations(self.model),
                "best_val_loss": None if math.isinf(self.best) else self.best, "wait": self.wait}

    def _state(self, val_loss: float | None) -> dict:
        return {**self.progress(), "val_loss": val_loss}


class ResumeCheckpoint(keras.callbacks.Callback):
    """Write the resume state every `every_steps` steps (or `every_seconds`) and at the end.

    Nothing is written once the loss is not finite: the last good state stays. A save that
    fails (TextgenError: rolled back, the previous state kept) is reported and training goes
    on; the next one retries. `clock` gives seconds from an arbitrary start (tests pass a fake one).
    """

    def __init__(self, save: Callable[[], Path], every_steps: int | None, every_seconds: float = 300,
                 clock: Callable[[], float] = time.perf_counter, report: Callable[[str], None] = print):
        super().__init__()
        self.save, self.clock, self.report = save, clock, report
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.last = clock()
        self.finite = True

    def on_train_batch_end(self, batch, logs=None):
        self.finite = math.isfinite(float((logs or {}).get("loss", 0.0)))
        if self.every_steps:
            due = iterations(self.model) % self.every_steps == 0
        else:
            due = self.clock() - self.last >= self.every_seconds
        if due and self.finite:
            self._save()
            self.last = self.clock()

    def on_train_end(self, logs=None):
        if self.finite:
            self._save()

    def _save(self) -> None:
        try:
            self.save()
        except TextgenError as err:
            self.report(f"Resume state not saved at step {iterations(self.model):,}: {err}")


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) or SIGTERM: finish the current step, then stop training cleanly.

    Used as a context manager around `model.fit` (so the handlers are restored even when
    fit raises, and a signal during the first step's compilation is caught too) and as
    a callback (to stop at the next step boundary). Keras then runs its validation and
    the callbacks' on_train_end, so BestBundle keeps the best model, or the current one
    if no validation ran. A second signal gives up at once (KeyboardInterrupt).

    Hand-written because Keras has no signal handling of its own: Python's default
    raises KeyboardInterrupt wherever the main thread happens to be, mid-step or mid-save.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, report: Callable[[str], None] = print):
        super().__init__()
        self.report = report
        self.signum: int | None = None  # the signal that stopped training, if any
        self.step: int | None = None  # the optimizer step it stopped after
        self._previous: dict[int, object] = {}
        self._announced = False

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + (self.signum or 0)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: the user insists
            raise KeyboardInterrupt
        # Only noted here: training stops at the next step boundary, where the callbacks
        # after this one (Budget's agreement between workers) still see it in time.
        self.signum = signum

    def on_train_batch_end(self, batch, logs=None):
        if not self._announced:  # also the "ready" line that tests wait for before signalling
            self._announced = True
            self.report("First step done; Ctrl-C stops after the current step and keeps the work.")
        self._stop_if_signalled()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_if_signalled()  # a signal during validation stops at the epoch boundary

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped training before it would have ended on its own."""
        return self.step is not None

    def _stop_if_signalled(self) -> None:
        if self.signum is not None and self.step is None:
            self.model.stop_training = True
            self.step = iterations(self.model)
