"""Load a bundle and generate text: stateful, batched, streaming, with every decoding control.

The prime is consumed in one call over all its tokens; after that each new token costs
one step of every layer (each layer's (h, c) carried), never a re-run of the context.
Steps run in NumPy over the trained weights (see `textgen.stepper` for why), so there
is nothing to compile: the first token comes as fast as the thousandth.

A batch of N samples shares the prime: it is read once and its state copied N times;
one step then advances all N, and sample i draws from its own random stream (seed, i).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen import sampler
from textgen.checkpoint import Bundle, load_bundle
from textgen.config import GENERATE_LENGTH, TextgenError
from textgen.stepper import LSTMStepper
from textgen.tokenizer import SPECIAL_TOKENS, decode, encode, unknown_characters

PRIME_CHUNK = 1024  # tokens of the prime read per call


@dataclass(frozen=True)
class Controls:
    """Every decoding control; `check` turns bad values into one-line TextgenErrors."""

    length: int | None = GENERATE_LENGTH  # tokens to generate; None: until max_chars or a stop
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set reaching this probability
    repetition_penalty: float | None = None  # CTRL penalty on recently seen tokens
    penalty_window: int = sampler.DEFAULT_PENALTY_WINDOW  # how many recent tokens it looks at
    stop: tuple[str, ...] = ()  # a sample ends where one of these appears (not included)
    max_chars: int | None = None  # a sample ends after this many generated characters
    seed: int | None = None  # None: a fresh random seed

    def check(self) -> "Controls":
        _require(self.length is None or self.length >= 1, f"length must be at least 1, not {self.length}")
        _require(self.length is not None or self.max_chars is not None or self.stop,
                 "without a length, give max_chars or a stop string so generation ends")
        _require(math.isfinite(self.temperature) and self.temperature >= 0,
                 f"temperature must be 0 (greedy) or positive, not {self.temperature}")
        _require(self.top_k is None or self.top_k >= 1, f"top_k must be at least 1, not {self.top_k}")
        _require(self.top_p is None or 0 < self.top_p <= 1, f"top_p must be in (0, 1], not {self.top_p}")
        _require(self.repetition_penalty is None or self.repetition_penalty > 0,
                 f"repetition_penalty must be positive, not {self.repetition_penalty}")
        _require(self.penalty_window >= 1, f"penalty_window must be at least 1, not {self.penalty_window}")
        _require(self.max_chars is None or self.max_chars >= 1, f"max_chars must be at least 1, not {self.max_chars}")
        _require(all(isinstance(s, str) for s in self.stop), "stop strings must be strings")
        return self


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
        self._banned = banned_ids(self.tokenizer)
        self._stepper = LSTMStepper.from_model(self.model)  # a snapshot of the weights

    @classmethod
    def from_model(cls, model, tokenizer, config) -> "TextGenerator":
        """A generator over a live model (e.g. mid-training), sharing no state with it."""
        return cls(Bundle(Path("."), config, tokenizer, model))

    def refresh_weights(self) -> None:
        """Snapshot `model`'s weights again (a live model mid-training has moved on)."""
        self._stepper = LSTMStepper.from_model(self.model)

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial (h, c) of every layer for a batch: 2 * layers arrays of (batch, units)."""
        return self._stepper.zero_states(batch)

    def forward(self, ids: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run tokens (batch, time) from `states`: logits (batch, time, vocab) and new states."""
        return self._stepper.forward(np.asarray(ids, np.int32), states)

    def encode_prime(self, prime: str) -> np.ndarray:
        """Token ids of a prime text; unknown characters are an error at char level."""
        if self.config.tokenizer.level == "char":
            missing = unknown_characters(self.tokenizer, prime)
            if missing:
                shown = ", ".join(repr(ch) for ch in missing[:10])
                raise TextgenError(f"prime text has characters the model's vocabulary lacks: {shown}")
        return encode(self.tokenizer, prime)

    def stream(self, prime: str = "", length: int | None = GENERATE_LENGTH, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               repetition_penalty: float | None = None, stop=None, seed: int | None = None,
               max_chars: int | None = None, include_prime: bool = True) -> Iterator[str]:
        """Yield the prime (unless include_prime is False), then the text of each new token
        as it is produced. Arguments as in `generate`."""
        controls = _controls(length, temperature, top_k, top_p, repetition_penalty, stop, seed, max_chars)
        ids = self.encode_prime(prime)
        if prime and include_prime:
            yield prime
        for pieces in self.steps(ids, 1, controls):
            if pieces[0]:
                yield pieces[0]

    def generate(self, prime: str = "", length: int | None = GENERATE_LENGTH, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, stop=None, seed: int | None = None,
                 max_chars: int | None = None) -> str:
        """The prime followed by one generated continuation, as one string.

        Args:
            prime: text the model reads first and the output starts with.
            length: tokens to generate (None: until max_chars or a stop string).
            temperature: > 0 scales randomness (lower is safer); 0 always picks the most likely.
            top_k: sample only among the k most likely tokens.
            top_p: sample only among the most likely tokens whose probabilities reach top_p.
            repetition_penalty: > 1 discourages the tokens of the last 64 (CTRL's penalty).
            stop: a string or list of strings; the text ends where one first appears (excluded).
            seed: the same seed gives the same text; None draws a fresh one.
            max_chars: the continuation ends after this many characters.
        """
        return "".join(self.stream(prime, length, temperature, top_k, top_p, repetition_penalty,
                                   stop, seed, max_chars))

    def sample(self, prime: str = "", num_samples: int = 8, length: int | None = GENERATE_LENGTH,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               repetition_penalty: float | None = None, stop=None, seed: int | None = None,
               max_chars: int | None = None) -> list[str]:
        """`num_samples` independent continuations of one prime, generated as one batch.

        Sample i uses the random stream (seed, i): sample 0 equals `generate` with the same seed.
        Other arguments as in `generate`.
        """
        controls = _controls(length, temperature, top_k, top_p, repetition_penalty, stop, seed, max_chars)
        _require(num_samples >= 1, f"num_samples must be at least 1, not {num_samples}")
        parts = [[prime] for _ in range(num_samples)]  # joined once at the end: linear time
        for pieces in self.steps(self.encode_prime(prime), num_samples, controls):
            for part, piece in zip(parts, pieces):
                part.append(piece)
        return ["".join(part) for part in parts]

    def steps(self, ids: np.ndarray, num_samples: int, controls: Controls) -> Iterator[list[str]]:
        """Generate from prime token ids; yield, after each step, the new text of every sample.

        A finished sample (stop string, max_chars) yields '' from then on; the last yield
        carries any text held back while it could still have begun a stop string.
        """
        c = controls
        logits, states = self._read(ids if len(ids) else self._start_ids())  # (1, vocab)
        logits = np.repeat(logits, num_samples, axis=0)  # (n, vocab)
        states = [np.repeat(s, num_samples, axis=0) for s in states]  # (n, units) each
        streams = sampler.Streams(c.seed, num_samples)
        recent = _Recent(ids, num_samples, c.penalty_window) if c.repetition_penalty else None
        ends = [sampler.StopText(list(c.stop), c.max_chars) for _ in range(num_samples)]
        text = _PieceDecoder(self.tokenizer, num_samples)
        # BLAS stays single-threaded while this generation runs (see textgen.stepper).
        with self._stepper.single_threaded():
            step = 0
            while c.length is None or step < c.length:
                logits[:, self._banned] = -np.inf
                tokens = sampler.sample(logits, streams.uniform(), c.temperature, c.top_k, c.top_p,
                                        c.repetition_penalty, recent.ids if recent is not None else None)  # (n,)
                if recent is not None:
                    recent.add(tokens)
                yield [end.feed(piece) for end, piece in zip(ends, text.pieces(tokens))]
                step += 1
                if all(end.done for end in ends):
                    return
                logits, states = self._stepper.step(tokens, states)  # (n, vocab)
        yield [end.flush() for end in ends]

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
        return np.array([start_id(self.tokenizer)], np.int32)


class _Recent:
    """The last `window` token ids of every sample (ring buffer; -1 = empty), for the penalty."""

    def __init__(self, prime_ids: np.ndarray, num_samples: int, window: int):
        self.ids = np.full((num_samples, window), -1, np.int32)  # (n, window)
        tail = prime_ids[-window:]
        self.ids[:, : len(tail)] = tail
        self.pos = len(tail) % window

    def add(self, tokens: np.ndarray) -> None:
        self.ids[:, self.pos] = tokens
        self.pos = (self.pos + 1) % self.ids.shape[1]


class _PieceDecoder:
    """The text each new token adds, per sample, decoded so the pieces join into natural text.

    textgen's char and word tokenizers decode with `Fuse` (tokens joined with nothing in
    between, whitespace runs being tokens), so a token's text is a table lookup and joining
    the pieces equals decoding the whole sequence. Any other decoder (e.g. byte-level BPE,
    where one character can span tokens) is decoded incrementally: the new text is what
    decoding the sample's last tokens adds, held back while it ends in a partial character.
    """

    _WINDOW = 8  # tokens of left context re-decoded per step on the general path

    def __init__(self, tokenizer, num_samples: int):
        self.tokenizer = tokenizer
        spec = json.loads(tokenizer.to_str())
        if (spec.get("decoder") or {}).get("type") == "Fuse" and spec["model"]["type"] == "WordLevel":
            vocab = tokenizer.get_vocab()
            self.table = np.empty(len(vocab), object)
            for token, i in vocab.items():
                self.table[i] = token
        else:
            self.table = None
            self.ids = [[] for _ in range(num_samples)]
            self.done = [0] * num_samples  # how many of each sample's ids are fully decoded

    def pieces(self, tokens: np.ndarray) -> list[str]:
        """The text added by one new token per sample: tokens (n,) -> n strings."""
        if self.table is not None:
            return list(self.table[tokens])
        return [self._incremental(i, int(t)) for i, t in enumerate(tokens)]

    def _incremental(self, i: int, token: int) -> str:
        ids = self.ids[i]
        ids.append(token)
        start = max(0, self.done[i] - self._WINDOW)
        before = decode(self.tokenizer, ids[start : self.done[i]])
        after = decode(self.tokenizer, ids[start:])
        if after.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            return ""
        self.done[i] = len(ids)
        return after[len(before) :]


def banned_ids(tokenizer) -> list[int]:
    """Ids generation never emits: [UNK] and the [DOC] separator (bundles older than [DOC] lack it)."""
    return [i for i in map(tokenizer.token_to_id, SPECIAL_TOKENS) if i is not None]


def start_id(tokenizer) -> int:
    """Context for an empty prime: a newline, as if a new paragraph began."""
    newline = tokenizer.encode("\n").ids  # byte-level BPE spells it "Ċ"
    return int(newline[-1]) if newline else 0


def load(path: str | Path) -> TextGenerator:
    """Load a checkpoint bundle for generation: `textgen.load("checkpoints/x")`."""
    return TextGenerator(load_bundle(path))


def _controls(length, temperature, top_k, top_p, repetition_penalty, stop, seed, max_chars) -> Controls:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Controls(length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                    repetition_penalty=repetition_penalty, stop=stops, seed=seed,
                    max_chars=max_chars).check()


def _require(condition, message: str) -> None:
    if not condition:
        raise TextgenError(message)
