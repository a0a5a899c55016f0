"""Load a bundle and generate text with state carried from step to step.

The prime is consumed in one call over all its tokens; after that each new token costs
one step of the stateful model (every layer's (h, c) carried), never a re-run of the
whole context.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from textgen import sampler
from textgen.checkpoint import Bundle, load_bundle
from textgen.config import TextgenError
from textgen.model import build_stateful_model, copy_weights
from textgen.tokenizer import UNK, decode, encode, unknown_characters

PRIME_CHUNK = 1024  # tokens of the prime read per call


class TextGenerator:
    """A trained model ready to generate: `textgen.load(path)` returns one.

    Attributes:
        model: the Keras training model (tokens -> logits).
        tokenizer: the `tokenizers.Tokenizer` it was trained with.
        config: the run's `Config`.
        state: training state saved with the bundle (epoch, step, val_loss, ...).
    """

    def __init__(self, bundle: Bundle):
        self.path = bundle.path
        self.model = bundle.model
        self.tokenizer = bundle.tokenizer
        self.config = bundle.config
        self.state = bundle.state
        self._unk_id = self.tokenizer.token_to_id(UNK)
        self._stateful = build_stateful_model(self.config.model)
        copy_weights(self.model, self._stateful)
        self._forward = _compile_forward(self._stateful, self.config.model.layers, self.config.model.units)

    @classmethod
    def from_model(cls, model, tokenizer, config) -> "TextGenerator":
        """A generator over a live model (e.g. mid-training), sharing no state with it."""
        return cls(Bundle(Path("."), config, tokenizer, model))

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial (h, c) of every layer for a batch: 2 * layers arrays of (batch, units)."""
        units = self.config.model.units
        return [np.zeros((batch, units), np.float32) for _ in range(2 * self.config.model.layers)]

    def forward(self, ids: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run tokens (batch, time) from `states`: logits (batch, time, vocab) and new states."""
        out = self._forward(np.asarray(ids, np.int32), *states)
        return out[0].numpy(), [s.numpy() for s in out[1:]]

    def encode_prime(self, prime: str) -> np.ndarray:
        """Token ids of a prime text; unknown characters are an error at char level."""
        if self.config.tokenizer.level == "char":
            missing = unknown_characters(self.tokenizer, prime)
            if missing:
                shown = ", ".join(repr(ch) for ch in missing[:10])
                raise TextgenError(f"prime text has characters the model's vocabulary lacks: {shown}")
        return encode(self.tokenizer, prime)

    def stream(self, prime: str = "", length: int = 200, temperature: float = 1.0,
               seed: int | None = None) -> Iterator[str]:
        """Yield the prime, then each generated token's text as it is produced."""
        _check_controls(length, temperature)
        ids = self.encode_prime(prime)
        if len(ids) == 0:
            ids = self._start_ids()
        else:
            yield prime
        streams = sampler.sample_streams(seed, 1)
        next_logits, states = self._read(ids)  # (1, vocab)
        for _ in range(length):
            next_logits[:, self._unk_id] = -np.inf  # never invent [UNK]
            token = sampler.sample(next_logits, streams, temperature)  # (1,)
            yield decode(self.tokenizer, token)
            logits, states = self.forward(token[:, None], states)  # (1, 1, vocab)
            next_logits = logits[:, -1, :]

    def generate(self, prime: str = "", length: int = 200, temperature: float = 1.0,
                 seed: int | None = None) -> str:
        """The prime followed by `length` generated tokens, as one string.

        Args:
            prime: text the model reads first and the output starts with.
            length: number of tokens to generate.
            temperature: > 0 scales randomness (lower is safer); 0 always picks the most likely.
            seed: the same seed gives the same text; None draws a fresh one.
        """
        return "".join(self.stream(prime, length, temperature, seed))

    def _read(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ids (time,) in chunks carrying state: last logits (1, vocab) and the states.

        Chunking bounds memory for a prime of any length ((1, time, vocab) logits of a
        100,000-token prime would be gigabytes at word level) and gives the same result.
        """
        states = self.zero_states(1)
        for start in range(0, len(ids), PRIME_CHUNK):
            logits, states = self.forward(ids[None, start : start + PRIME_CHUNK], states)  # (1, chunk, vocab)
        return logits[:, -1, :], states

    def _start_ids(self) -> np.ndarray:
        """Context for an empty prime: a newline, as if a new paragraph began."""
        newline = self.tokenizer.token_to_id("\n")
        return np.array([newline if newline is not None else 1], np.int32)


def load(path: str | Path) -> TextGenerator:
    """Load a checkpoint bundle for generation: `textgen.load("checkpoints/x")`."""
    return TextGenerator(load_bundle(path))


def _check_controls(length: int, temperature: float) -> None:
    if length < 1:
        raise TextgenError(f"length must be at least 1, not {length}")
    if temperature < 0:
        raise TextgenError(f"temperature must be 0 (greedy) or positive, not {temperature}")


def _compile_forward(stateful_model, layers: int, units: int):
    """One compiled graph call per forward: tokens of any length, fixed state shapes."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, None], tf.int32)]
    signature += [tf.TensorSpec([None, units], tf.float32)] * (2 * layers)

    @tf.function(input_signature=signature)
    def forward(tokens, *states):
        return stateful_model([tokens, *states], training=False)

    return forward
