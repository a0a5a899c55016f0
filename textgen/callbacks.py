"""Keras callbacks that make `model.fit` a textgen run.

Each does one job: progress bar, TensorBoard scalars, text samples, hyperparameters
and weight histograms, stopping on a time or step budget, keeping the best bundle,
printing a sample after each validation, stopping cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Callable

import keras
from tqdm.auto import tqdm

LN2 = math.log(2)


def _iterations(model) -> int:
    """Optimizer steps taken so far: the one step axis for every curve and budget."""
    return int(model.optimizer.iterations.numpy())


def _learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class BatchLosses:
    """Recover each batch's own loss from Keras' running mean over the epoch.

    Keras reports `loss` at batch end as the mean of the epoch so far; the batch's own
    loss is n*m_n - (n-1)*m_{n-1}. Windowed means of those make honest curves.
    """

    def __init__(self, window: int):
        self.window = deque(maxlen=window)
        self._n, self._total = 0, 0.0

    def reset(self) -> None:
        self._n, self._total = 0, 0.0

    def add(self, running_mean: float) -> None:
        self._n += 1
        total = running_mean * self._n
        self.window.append(total - self._total)
        self._total = total

    def mean(self) -> float:
        return sum(self.window) / max(len(self.window), 1)


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar over optimizer steps showing loss and tokens per second."""

    def __init__(self, total_steps: int | None, tokens_per_step: int, initial: int = 0):
        super().__init__()
        self.total_steps = total_steps
        self.initial = initial
        self.tokens_per_step = tokens_per_step
        self.losses = BatchLosses(window=20)
        self.bar = None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total_steps, initial=self.initial, unit="step", dynamic_ncols=True,
                        desc="training")
        self._t0, self._steps = time.perf_counter(), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.losses.reset()

    def on_train_batch_end(self, batch, logs=None):
        self.losses.add(float(logs["loss"]))
        self._steps += 1
        rate = self._steps * self.tokens_per_step / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix_str(f"loss {self.losses.mean():.3f}  {rate:,.0f} tok/s", refresh=False)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()

    def write(self, text: str) -> None:
        """Print a line above the bar without breaking it."""
        tqdm.write(text)


class TensorBoardScalars(keras.callbacks.Callback):
    """Scalars under LOG_DIR/train and LOG_DIR/validation, on the optimizer-step axis.

    Train: loss (nats/token), bits_per_char, perplexity (per token), learning_rate,
    tokens_per_second, and grad_norm when the train step reports it in its logs, every
    `every` steps. Validation: loss, bits_per_char, perplexity and best_bits_per_char
    (the HParams tab's metric) after each validation. Written
    with tf.summary (rather than keras.callbacks.TensorBoard, whose axis is epochs or
    per-epoch batches) so resumed runs continue the same curves.
    """

    def __init__(self, log_dir: Path, tokens_per_step: int, chars_per_token: float, every: int = 10,
                 best_loss: float = math.inf):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.train_writer = tf.summary.create_file_writer(str(Path(log_dir) / "train"))
        self.val_writer = tf.summary.create_file_writer(str(Path(log_dir) / "validation"))
        self.tokens_per_step = tokens_per_step
        self.bits_scale = 1.0 / (LN2 * chars_per_token)  # nats/token -> bits/char
        self.every = every
        self.losses = BatchLosses(window=every)
        self.best_bits = best_loss * self.bits_scale  # a resumed run carries its best on

    def on_epoch_begin(self, epoch, logs=None):
        self.losses.reset()
        self._t0, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.losses.add(float(logs["loss"]))
        self._steps += 1
        step = _iterations(self.model)
        if step % self.every:
            return
        rate = self._steps * self.tokens_per_step / max(time.perf_counter() - self._t0, 1e-9)
        loss = self.losses.mean()
        extra = {"grad_norm": float(logs["grad_norm"])} if "grad_norm" in logs else {}
        self._write(self.train_writer, step, **self._losses(loss),
                    learning_rate=_learning_rate(self.model), tokens_per_second=rate, **extra)

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            scalars = self._losses(float(logs["val_loss"]))
            self.best_bits = min(self.best_bits, scalars["bits_per_char"])
            self._write(self.val_writer, _iterations(self.model), **scalars,
                        best_bits_per_char=self.best_bits)

    def _losses(self, loss: float) -> dict[str, float]:
        """One loss in nats/token as the three scales people read."""
        return {"loss": loss, "bits_per_char": loss * self.bits_scale,
                "perplexity": math.exp(loss) if loss < 88.0 else loss * math.inf}  # float32 ends at e^88.7

    def on_train_end(self, logs=None):
        self.train_writer.flush()
        self.val_writer.flush()

    def _write(self, writer, step: int, **scalars: float) -> None:
        with writer.as_default(step=step):
            for name, value in scalars.items():
                self.tf.summary.scalar(name, value)


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
    """

    def __init__(self, max_steps: int | None, max_minutes: float | None, planned_steps: int,
                 val_batches: int, agree: Callable[[list[float]], list[float]] | None = None):
        super().__init__()
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
        self.reason = ""

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: the larger of steps and time."""
        step = _iterations(self.model)
        fractions = [step / (self.max_steps or self.planned_steps)]
        if self.seconds is not None:
            fractions.append(self.elapsed / self.seconds)
        return min(1.0, max(fractions))

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()
        if self.start is None:
            self.start = self._batch_start

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds = time.perf_counter() - self._test_start

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._batch_start > self.start:  # not the first step
            self.steps_done += 1
            self.step_seconds += now - self._batch_start
        step = self.step_seconds / self.steps_done if self.steps_done else None
        self.elapsed, step, validation, stopping = self._agreed(
            now - self.start, step, self.validation_seconds, self.model.stop_training)
        if self.max_steps is not None and _iterations(self.model) >= self.max_steps:
            self._stop(f"reached --max-steps {self.max_steps:,}")
        elif self.seconds is not None and self._out_of_time(step, validation):
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

    def _out_of_time(self, step: float | None, validation: float | None) -> bool:
        """Whether one more step and a final validation would overrun the budget."""
        if step is None:
            return self.elapsed >= self.seconds
        if validation is None:
            validation = self.val_batches * step / 3  # forward only: ~1/3 of a step
        return self.elapsed + step + validation >= self.seconds

    def _stop(self, reason: str) -> None:
        self.reason = reason
        self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Learning rate: cosine decay from `base` to `base * final` over the budget.

    Follows `budget.progress()`, so a --max-minutes run decays over its minutes and
    a --max-steps run over its steps: the end of any budget is spent at a low rate.
    """

    def __init__(self, budget: Budget, base: float, final: float = 0.1):
        super().__init__()
        self.budget, self.base, self.final = budget, base, final

    def on_train_batch_begin(self, batch, logs=None):
        cosine = 0.5 * (1 + math.cos(math.pi * self.budget.progress()))
        self.model.optimizer.learning_rate = self.base * (self.final + (1 - self.final) * cosine)


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
        return {"epoch": self.epoch, "step": _iterations(self.model),
                "best_val_loss": None if math.isinf(self.best) else self.best, "wait": self.wait}

    def _state(self, val_loss: float | None) -> dict:
        return {**self.progress(), "val_loss": val_loss}


class ResumeCheckpoint(keras.callbacks.Callback):
    """Write the resume state every `every_steps` steps (or `every_seconds`) and at the end.

    Nothing is written once the loss is not finite: the last good state stays.
    """

    def __init__(self, save: Callable[[], Path], every_steps: int | None, every_seconds: float = 300):
        super().__init__()
        self.save = save
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.last = time.perf_counter()
        self.finite = True

    def on_train_batch_end(self, batch, logs=None):
        self.finite = math.isfinite(float((logs or {}).get("loss", 0.0)))
        if self.every_steps:
            due = _iterations(self.model) % self.every_steps == 0
        else:
            due = time.perf_counter() - self.last >= self.every_seconds
        if due and self.finite:
            self.save()
            self.last = time.perf_counter()

    def on_train_end(self, logs=None):
        if self.finite:
            self.save()


class SamplePrinter(keras.callbacks.Callback):
    """After each validation, print the epoch's numbers and a short sample.

    Args:
        report: prints a line (above the progress bar).
        make_sample: callable() -> str generating from the current weights.
        bits_scale: factor from nats/token to bits/char.
    """

    def __init__(self, report: Callable[[str], None], make_sample: Callable[[], str], bits_scale: float):
        super().__init__()
        self.report = report
        self.make_sample = make_sample
        self.bits_scale = bits_scale

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_loss" not in logs:
            return
        val = float(logs["val_loss"])
        self.report(
            f"epoch {epoch + 1}  step {_iterations(self.model):,}  "
            f"val loss {val:.4f} ({val * self.bits_scale:.3f} bits/char)"
        )
        self.report("  " + self.make_sample().replace("\n", "\n  "))


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
        import signal

        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopOnSignal":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

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
            self.step = _iterations(self.model)


def _markdown_block(text: str) -> str:
    """Text as a fenced block: TensorBoard renders Markdown, which would eat line breaks."""
    fence = "~~~~" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


class TextSamples(keras.callbacks.Callback):
    """Generated text under LOG_DIR/samples, one Text-tab tag per temperature.

    Written after each validation (epoch end) and, with `every`, every N optimizer
    steps, so the Text tab shows the model learning. `sample(temperatures)` returns one
    string per temperature, all from the same prime and seed.
    """

    def __init__(self, log_dir: Path, sample: Callable[[tuple], list[str]],
                 temperatures: tuple = (0.5, 0.8, 1.0), every: int | None = None):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "samples"))
        self.sample = sample
        self.temperatures = tuple(temperatures)
        self.every = every
        self._last_step = -1

    def on_train_batch_end(self, batch, logs=None):
        if self.every and _iterations(self.model) % self.every == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        self.writer.flush()

    def _write(self) -> None:
        step = _iterations(self.model)
        if step == self._last_step:  # an epoch that ends on a multiple of `every`
            return
        self._last_step = step
        texts = self.sample(self.temperatures)
        with self.writer.as_default(step=step):
            for temperature, text in zip(self.temperatures, texts):
                self.tf.summary.text(f"temperature_{temperature:g}", _markdown_block(text))
        self.writer.flush()  # samples are rare and worth seeing at once


class HParams(keras.callbacks.Callback):
    """The run's hyperparameters for TensorBoard's HParams tab, written at train begin.

    The tab pairs them with the validation scalars named in METRICS, which
    TensorBoardScalars writes under LOG_DIR/validation. Every run declares the same
    experiment (names and metrics) so any run's declaration describes them all.
    """

    METRICS = (("best_bits_per_char", "validation"), ("bits_per_char", "validation"),
               ("loss", "validation"), ("loss", "train"))

    def __init__(self, log_dir: Path, hparams: dict):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.names = sorted(hparams)  # declared even when unset (None), so every run declares the same
        self.hparams = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        metrics = [hp.Metric(tag, group=group, display_name=f"{group}/{tag}") for tag, group in self.METRICS]
        writer = tf.summary.create_file_writer(str(self.log_dir))
        with writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(name) for name in self.names], metrics=metrics)
            hp.hparams(self.hparams, trial_id=self.log_dir.name)
        writer.close()


class WeightHistograms(keras.callbacks.Callback):
    """A histogram of every weight tensor per layer under LOG_DIR/weights at epoch ends.

    `current_model()` returns a model with named layers holding the current weights
    (the trainer itself may wrap them).
    """

    def __init__(self, log_dir: Path, current_model: Callable[[], keras.Model]):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "weights"))
        self.current_model = current_model

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=_iterations(self.model)):
            for layer in self.current_model().layers:
                for weight in layer.weights:  # e.g. lstm_0/lstm_cell/kernel
                    self.tf.summary.histogram(weight.path, keras.ops.convert_to_numpy(weight))
        self.writer.flush()
