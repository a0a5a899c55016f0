"""What a training run shows: the terminal's progress and samples, and everything TensorBoard gets.

Terminal: ProgressBar (steps, loss, tokens/s) and SamplePrinter (each validation's numbers
and a sample). TensorBoard, all on the optimizer-step axis under LOG_DIR/NAME:
TensorBoardScalars (train/, validation/), TextSamples (samples/), HParams (the run
folder itself) and WeightHistograms (weights/); `tensorboard_callbacks` assembles them.
One LiveSampler (a generator over the plain model) feeds both the terminal's and
TensorBoard's samples.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf
from tqdm.auto import tqdm

from textgen.callbacks import iterations
from textgen.config import Config
from textgen.generate import TextGenerator
from textgen.tokenizer import DOC, decode

LN2 = math.log(2)
SAMPLE_TEMPERATURES = (0.5, 0.8, 1.0)  # TensorBoard's samples: safe, usual, raw
PRINTED_TEMPERATURE = 0.8  # the terminal's one sample
SAMPLE_LENGTH = 200  # tokens per sample: a few lines, enough to see form and spelling
PRIME_TOKENS = 64  # TensorBoard's prime is the corpus's first line, cut to at most this many tokens


class LiveSampler:
    """Text from the weights as they are at a step: one generator over the plain model,
    shared by the terminal's and TensorBoard's samples.

    `current_model()` copies the trainer's weights into the plain tokens -> logits model
    and returns it; the generator snapshots them again once per step it samples at.
    """

    def __init__(self, current_model: Callable[[], Any], tokenizer, config: Config):
        self.current_model = current_model
        self.generator = TextGenerator.from_model(current_model(), tokenizer, config)
        self.seed = config.train.seed
        self._step: int | None = None  # the step whose weights the generator holds

    def sample(self, step: int, temperature: float, prime: str = "") -> str:
        """SAMPLE_LENGTH tokens after `prime` from the weights at `step`, with the run's seed."""
        if step != self._step:
            self.current_model()
            self.generator.refresh_weights()
            self._step = step
        return self.generator.generate(prime, length=SAMPLE_LENGTH, temperature=temperature, seed=self.seed)


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
    """A tqdm bar over optimizer steps showing loss and tokens per second.

    Its total is asked of `total_steps` (Budget.expected_steps) at every step, so under
    --max-minutes the bar ends, and its ETA points, where the time budget runs out.
    """

    def __init__(self, total_steps: Callable[[], int | None], tokens_per_step: int, initial: int = 0):
        super().__init__()
        self.total_steps = total_steps
        self.initial = initial
        self.tokens_per_step = tokens_per_step
        self.losses = BatchLosses(window=20)
        self.bar = None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total_steps(), initial=self.initial, unit="step", dynamic_ncols=True,
                        desc="training")
        self._t0, self._steps = time.perf_counter(), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.losses.reset()

    def on_train_batch_end(self, batch, logs=None):
        self.losses.add(float(logs["loss"]))
        self._steps += 1
        rate = self._steps * self.tokens_per_step / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix_str(f"loss {self.losses.mean():.3f}  {rate:,.0f} tok/s", refresh=False)
        self.bar.total = self.total_steps()
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()

    def write(self, text: str) -> None:
        """Print a line above the bar without breaking it."""
        tqdm.write(text)


class SamplePrinter(keras.callbacks.Callback):
    """After each validation, print the epoch's numbers and a short sample.

    Args:
        report: prints a line (above the progress bar).
        sampler: the run's LiveSampler; the sample has no prime, at PRINTED_TEMPERATURE.
        bits_scale: factor from nats/token to bits/char.
    """

    def __init__(self, report: Callable[[str], None], sampler: LiveSampler, bits_scale: float):
        super().__init__()
        self.report = report
        self.sampler = sampler
        self.bits_scale = bits_scale

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_loss" not in logs:
            return
        val, step = float(logs["val_loss"]), iterations(self.model)
        self.report(f"epoch {epoch + 1}  step {step:,}  val loss {val:.4f} ({val * self.bits_scale:.3f} bits/char)")
        self.report("  " + self.sampler.sample(step, PRINTED_TEMPERATURE).replace("\n", "\n  "))


def tensorboard_callbacks(run_dir: Path, sampler: LiveSampler, config: Config, prime: str, *,
                          tokens_per_step: int, chars_per_token: float, best_loss: float = math.inf,
                          sample_every: int | None = None, histograms: bool = True) -> list:
    """Everything a run writes for TensorBoard: scalars, text samples, hparams and weight histograms.

    Args:
        best_loss: a resumed run's best validation loss so far (best_bits_per_char carries on).
        sample_every: also write text samples every N steps (they are always written at epoch ends).
        histograms: write weight histograms at epoch ends.
    """
    found = [TensorBoardScalars(run_dir, tokens_per_step, chars_per_token, best_loss=best_loss),
             TextSamples(run_dir, sampler, prime, every=sample_every),
             HParams(run_dir, hparams(config))]
    if histograms:
        found.append(WeightHistograms(run_dir, sampler.current_model))
    return found


def sample_prime(tokenizer, train_ids) -> str:
    """The corpus's first line (e.g. "First Citizen:"), so every sample starts alike; none for
    documents (they start with [DOC]: an empty prime starts a new document)."""
    if len(train_ids) and train_ids[0] == tokenizer.token_to_id(DOC):
        return ""
    head = decode(tokenizer, train_ids[:PRIME_TOKENS])
    return head.split("\n", 1)[0]


def hparams(config: Config) -> dict:
    """Flat hyperparameters for the HParams tab: every tokenizer, model and train field."""
    flat: dict = {"corpus": ",".join(s["file"] for s in config.corpus.get("sources", []))}
    for section in ("tokenizer", "model", "train"):
        flat.update(getattr(config, section).__dict__)
    flat["model_vocab_size"] = flat.pop("vocab_size")  # the model's, after the tokenizer's cap
    flat["vocab_cap"] = config.tokenizer.vocab_size
    return flat


def _learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


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
        step = iterations(self.model)
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
            self._write(self.val_writer, iterations(self.model), **scalars,
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
                tf.summary.scalar(name, value)


def _markdown_block(text: str) -> str:
    """Text as a fenced block: TensorBoard renders Markdown, which would eat line breaks."""
    fence = "~~~~" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


class TextSamples(keras.callbacks.Callback):
    """Generated text under LOG_DIR/samples, one Text-tab tag per temperature.

    Written after each validation (epoch end) and, with `every`, every N optimizer
    steps, so the Text tab shows the model learning. Every sample starts from `prime`
    (the corpus's first line) with the run's seed, one per temperature.
    """

    def __init__(self, log_dir: Path, sampler: LiveSampler, prime: str,
                 temperatures: tuple = SAMPLE_TEMPERATURES, every: int | None = None):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "samples"))
        self.sampler, self.prime = sampler, prime
        self.temperatures = tuple(temperatures)
        self.every = every
        self._last_step = -1

    def on_train_batch_end(self, batch, logs=None):
        if self.every and iterations(self.model) % self.every == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        self.writer.flush()

    def _write(self) -> None:
        step = iterations(self.model)
        if step == self._last_step:  # an epoch that ends on a multiple of `every`
            return
        self._last_step = step
        with self.writer.as_default(step=step):
            for temperature in self.temperatures:
                text = self.sampler.sample(step, temperature, self.prime)
                tf.summary.text(f"temperature_{temperature:g}", _markdown_block(text))
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
    (the trainer itself wraps them).
    """

    def __init__(self, log_dir: Path, current_model: Callable[[], keras.Model]):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "weights"))
        self.current_model = current_model

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=iterations(self.model)):
            for layer in self.current_model().layers:
                for weight in layer.weights:  # e.g. lstm_0/lstm_cell/kernel
                    tf.summary.histogram(weight.path, keras.ops.convert_to_numpy(weight))
        self.writer.flush()
