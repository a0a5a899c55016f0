"""What a training run shows in TensorBoard beyond the scalars: samples, hparams, weights.

`monitoring_callbacks` assembles the callbacks of textgen.callbacks that need the
tokenizer and the generator, so training.fit adds them with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textgen import callbacks as cb
from textgen.config import Config
from textgen.generate import TextGenerator
from textgen.tokenizer import decode

SAMPLE_TEMPERATURES = (0.5, 0.8, 1.0)
SAMPLE_LENGTH = 200  # tokens per sample: a few lines, enough to see form and spelling
PRIME_TOKENS = 64  # the prime is the corpus's first line, cut to at most this many tokens


def monitoring_callbacks(current_model: Callable[[], Any], tokenizer, config: Config, train_ids,
                         run_dir: Path, *, sample_every: int | None = None, histograms: bool = True) -> list:
    """TextSamples, HParams and (unless turned off) WeightHistograms for one run.

    `current_model()` returns the plain tokens -> logits model holding the weights as
    they are now (training.fit copies them out of its carried-state trainer).
    """
    prime = sample_prime(tokenizer, train_ids)
    generator = TextGenerator.from_model(current_model(), tokenizer, config)  # built and traced once

    def sample(temperatures) -> list[str]:
        current_model()  # copies the trainer's weights into the model the generator reads
        generator.refresh_weights()
        seed = config.train.seed
        return [generator.generate(prime, length=SAMPLE_LENGTH, temperature=t, seed=seed) for t in temperatures]

    found = [cb.TextSamples(run_dir, sample, SAMPLE_TEMPERATURES, every=sample_every),
             cb.HParams(run_dir, hparams(config))]
    if histograms:
        found.append(cb.WeightHistograms(run_dir, current_model))
    return found


def sample_prime(tokenizer, train_ids) -> str:
    """The corpus's first line (e.g. "First Citizen:"), so every sample starts alike."""
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
