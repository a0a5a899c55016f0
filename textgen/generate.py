"""Load a bundle and generate text: stateful, batched, streaming, with every decoding control.

The prime is consumed in one call over all its tokens; after that each new token costs
one step of every layer (each layer's state carried), never a re-run of the context.
Steps run in NumPy over the trained weights (see `textgen.stepper` for why), so there
is nothing to compile: the first token comes as fast as the thousandth.

A batch of N samples shares the prime: it is read once and its state copied N times;
one step then advances all N, and sample i draws from its own random stream (seed, i).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen import sampler
from textgen.bundle import Bundle, load_bundle
from textgen.config import TextgenError, require
from textgen.controls import UNIQUE_ATTEMPTS, Controls, documented
from textgen.novelty import CorpusIndex, Novelty
from textgen.stepper import Stepper
from textgen.tokenizer import DOC, SPECIAL_TOKENS, decode, encode, label_ids, unknown_characters, word_edges

PRIME_CHUNK = 1024  # tokens of the prime read per call
SAMPLE_BATCH = 64  # samples stepped together by `samples`: one matrix product feeds them all


@dataclass(frozen=True)
class Sample:
    """One generated sample: its text, the random stream (seed, index) that made it and, when
    asked for, its novelty against the training corpus."""

    text: str
    seed: int
    index: int
    novelty: Novelty | None = None


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
        # A documents bundle writes one document: [DOC] ends it (see `end_id`).
        self.labels = label_ids(self.tokenizer)  # {label: token id}, sorted; {} for an unlabelled bundle
        self._end_id = end_id(self.tokenizer, self.config)
        self._banned = banned_ids(self.tokenizer, self.config)
        self._edges = word_edges(self.tokenizer)  # word level: never glue two words (None elsewhere)
        self._stepper = Stepper.from_model(self.model)  # a snapshot of the weights
        self._piece_table = _PieceDecoder.piece_table(self.tokenizer)  # once: it reads the whole vocabulary

    @classmethod
    def from_model(cls, model, tokenizer, config) -> "TextGenerator":
        """A generator over a live model (e.g. mid-training), sharing no state with it."""
        return cls(Bundle(Path("."), config, tokenizer, model))

    def refresh_weights(self) -> None:
        """Snapshot `model`'s weights again (a live model mid-training has moved on)."""
        self._stepper = Stepper.from_model(self.model)

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial state of every layer for a batch (LSTM: h, c; see textgen.cells), each (batch, units)."""
        return self._stepper.zero_states(batch)

    def forward(self, ids: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run tokens (batch, time) from `states`: logits (batch, time, vocab) and new states."""
        return self._stepper.forward(np.asarray(ids, np.int32), states)

    def encode_prime(self, prime: str, label: str | None = None) -> np.ndarray:
        """Token ids of a prime text; unknown characters are an error at char level.

        For a documents bundle the prime opens a new document: [DOC] (and the label's token)
        come first, so an empty prime starts a document as the training data did.
        """
        if self.config.tokenizer.level == "char":
            missing = unknown_characters(self.tokenizer, prime)
            if missing:
                shown = ", ".join(repr(ch) for ch in missing[:10])
                raise TextgenError(f"prime text has characters the model's vocabulary lacks: {shown}")
        ids = encode(self.tokenizer, prime)
        start = self._document_start(label)
        return np.concatenate([start, ids]).astype(np.int32) if len(start) else ids

    def _document_start(self, label: str | None) -> np.ndarray:
        """[DOC] and the label's token for a documents bundle ((0,) otherwise); the label is checked."""
        if label is not None and not self.labels:
            raise TextgenError("this bundle has no labels (train with --label-field or --label-column); "
                               "leave out --label")
        if label is not None and label not in self.labels:
            raise TextgenError(f"unknown label {label!r}; the labels are: {', '.join(map(repr, self.labels))}")
        if self._end_id is None:
            return np.zeros(0, np.int32)
        return np.array([self._end_id] + ([self.labels[label]] if label is not None else []), np.int32)

    @documented
    def stream(self, prime: str = "", *, include_prime: bool = True, **controls) -> Iterator[str]:
        """Yield the prime (unless include_prime is False), then the text of each new token
        as it is produced."""
        c = Controls.of(**controls)
        ids = self.encode_prime(prime, c.label)
        if prime and include_prime:
            yield prime
        for pieces in self.steps(ids, 1, c):
            if pieces[0]:
                yield pieces[0]

    @documented
    def generate(self, prime: str = "", **controls) -> str:
        """The prime followed by one generated continuation, as one string.

        `prime` is the text the model reads first and the output starts with; the
        decoding controls are keywords (all checked, unknown names refused), e.g.
        `generate(prime="ROMEO:", length=200, temperature=0.8, seed=1)`.
        """
        return "".join(self.stream(prime, **controls))

    @documented
    def sample(self, prime: str = "", num_samples: int = 8, *, unique: bool = False, **controls) -> list[str]:
        """`num_samples` independent continuations of one prime, generated in batches.

        Sample i uses the random stream (seed, i): sample 0 equals `generate` with the same seed.
        With `unique`, repeats are dropped until `num_samples` distinct samples are found, or
        UNIQUE_ATTEMPTS * num_samples were made (then fewer are returned).
        """
        return [s.text for s in self.samples(prime, num_samples, unique=unique, **controls)]

    def samples(self, prime: str = "", num_samples: int = 8, *, unique: bool = False,
                novelty: CorpusIndex | str | Path | list | None = None, **controls) -> Iterator[Sample]:
        """Like `sample`, one `Sample` (text, seed, index) at a time, SAMPLE_BATCH stepped together.

        A run without a seed draws one, so every sample it yields can be made again. `novelty`
        (the training corpus: file(s), a folder, or a `CorpusIndex` of them) checks each sample
        against it: `Sample.novelty` says whether it is a training document and the longest span
        it copies.
        """
        index = self.corpus_index(novelty) if novelty is not None else None
        c = Controls.of(**controls)
        require(num_samples >= 1, f"num_samples must be at least 1, not {num_samples}")
        c = dataclasses.replace(c, seed=c.seed if c.seed is not None else sampler.fresh_seed())
        ids = self.encode_prime(prime, c.label)
        limit = UNIQUE_ATTEMPTS * num_samples if unique else num_samples
        seen: set[str] = set()
        first = found = 0
        while first < limit and found < num_samples:
            batch = min(SAMPLE_BATCH, limit - first)
            parts = [[prime] for _ in range(batch)]  # joined once at the end: linear time
            for pieces in self.steps(ids, batch, c, first):
                for part, piece in zip(parts, pieces):
                    part.append(piece)
            for i, part in enumerate(parts):
                text = "".join(part)
                if found == num_samples or (unique and text in seen):
                    continue
                seen.add(text)
                found += 1
                yield Sample(text, c.seed, first + i, index.check(text) if index is not None else None)
            first += batch

    def corpus_index(self, corpus: CorpusIndex | str | Path | list) -> CorpusIndex:
        """The novelty index of the training corpus (files read as this bundle was trained)."""
        from textgen.data import resolve_paths

        if isinstance(corpus, CorpusIndex):
            return corpus
        items = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(c) for c in corpus]
        return CorpusIndex.of_files(resolve_paths(items), self.config.tokenizer)

    def steps(self, ids: np.ndarray, num_samples: int, controls: Controls, first: int = 0) -> Iterator[list[str]]:
        """Generate from prime token ids; yield, after each step, the new text of every sample.

        A finished sample (stop string, max_chars, its document's end) yields '' from then on; the last yield
        carries any text held back while it could still have begun a stop string. Sample i
        draws from the random stream (seed, first + i).
        """
        run = Decoding(self, ids, num_samples, controls, first)
        logits, states = self.read_prime(ids, num_samples)  # (n, vocab)
        # BLAS threads for this generation's steps (see textgen.blas).
        with self.decode_threads() as threads:
            while True:
                tokens = run.choose(logits)  # (n,)
                yield run.pieces(tokens)
                if run.finished:
                    break
                threads.pace(len(tokens))
                logits, states = self.step(tokens, states)  # (n, vocab)
        yield run.flush()

    def read_prime(self, ids: np.ndarray, num_samples: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Read prime ids (time,) once: logits (n, vocab) and states for n samples of it."""
        logits, states = self._read(ids if len(ids) else self._start_ids())  # (1, vocab)
        return np.repeat(logits, num_samples, axis=0), [np.repeat(s, num_samples, axis=0) for s in states]

    def decode_threads(self):
        """Context manager to hold around a loop of `step`s; call its `pace(batch)` before each."""
        return self._stepper.decode_threads()

    def step(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per row: tokens (batch,) -> logits (batch, vocab) and the new states.

        States are opaque arrays with the batch on axis 0, so the rows of several
        generations can be stacked into one step and sliced apart (see textgen.batching).
        """
        return self._stepper.step(tokens, states)

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
        """Context for an empty prime: (1,) the start token (`start_id`)."""
        return np.array([start_id(self.tokenizer, self.config)], np.int32)


class Decoding:
    """One generation's choices between model steps: for the n samples of one prime, the
    banned tokens, its controls, each sample's random stream (seed, i), the repetition
    window, the stop rules and the text of each new token.

    The model steps are the caller's, so generations with different controls can share
    one batched step (textgen.batching), each choosing from its own rows of logits.
    """

    def __init__(self, generator: TextGenerator, ids: np.ndarray, num_samples: int, controls: Controls,
                 first: int = 0):
        c = self.controls = controls
        self.banned = generator._banned
        self.edges = generator._edges  # word level: never glue two words
        self.end_id = generator._end_id  # a documents bundle: [DOC] ends a sample
        context = ids if len(ids) else generator._start_ids()
        self.previous = np.repeat(context[-1:], num_samples)  # (n,) each sample's last token
        self.streams = sampler.Streams(c.seed, num_samples, first=first)
        self.recent = _Recent(ids, num_samples, sampler.DEFAULT_PENALTY_WINDOW) if c.repetition_penalty else None
        self.ends = [sampler.StopText(list(c.stop), c.max_chars) for _ in range(num_samples)]
        self.text = _PieceDecoder(generator.tokenizer, num_samples, generator._piece_table)
        self.count = 0  # tokens chosen so far, per sample

    def choose(self, logits: np.ndarray) -> np.ndarray:
        """The next token of every sample from its logits (n, vocab), which it overwrites: (n,)."""
        c = self.controls
        logits[:, self.banned] = -np.inf
        if self.edges is not None:
            logits = sampler.forbid_glue(logits, self.previous, *self.edges)
        tokens = sampler.sample(logits, self.streams.uniform(), c.temperature, c.top_k, c.top_p,
                                c.repetition_penalty, self.recent.ids if self.recent is not None else None)
        self.previous = tokens
        if self.recent is not None:
            self.recent.add(tokens)
        self.count += 1
        return tokens

    def pieces(self, tokens: np.ndarray) -> list[str]:
        """The text each sample shows after its new token ('' once it has ended; [DOC] ends it)."""
        pieces = self.text.pieces(tokens)
        return [end.end() if token == self.end_id else end.feed(piece)
                for end, piece, token in zip(self.ends, pieces, tokens)]

    @property
    def finished(self) -> bool:
        """No sample needs another token: the length is reached, or every sample has stopped."""
        length = self.controls.length
        return (length is not None and self.count >= length) or all(end.done for end in self.ends)

    def flush(self) -> list[str]:
        """The text still held back per sample (it could have begun a stop string), at the end."""
        return [end.flush() for end in self.ends]


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

    def __init__(self, tokenizer, num_samples: int, table: np.ndarray | None):
        self.tokenizer = tokenizer
        self.table = table  # from `piece_table`, built once per tokenizer
        if table is None:
            self.ids = [[] for _ in range(num_samples)]
            self.done = [0] * num_samples  # how many of each sample's ids are fully decoded

    @staticmethod
    def piece_table(tokenizer) -> np.ndarray | None:
        """Each token's text by id where pieces are table lookups (a Fuse-decoded WordLevel
        tokenizer); None where they are decoded incrementally."""
        spec = json.loads(tokenizer.to_str())
        if (spec.get("decoder") or {}).get("type") != "Fuse" or spec["model"]["type"] != "WordLevel":
            return None
        vocab = tokenizer.get_vocab()
        table = np.empty(len(vocab), object)
        for token, i in vocab.items():
            table[i] = token
        return table

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


def end_id(tokenizer, config) -> int | None:
    """The id that ends a sample: [DOC] for a documents bundle, else None (samples end by length)."""
    return tokenizer.token_to_id(DOC) if config.tokenizer.documents else None


def banned_ids(tokenizer, config) -> list[int]:
    """Ids generation never emits: [UNK], the [DOC] separator (bundles older than [DOC] lack it;
    a documents bundle emits it to end a sample) and every label token."""
    end = end_id(tokenizer, config)
    specials = [i for i in map(tokenizer.token_to_id, SPECIAL_TOKENS) if i is not None and i != end]
    return specials + list(label_ids(tokenizer).values())


def start_id(tokenizer, config) -> int:
    """Context for an empty prime: [DOC] for a documents bundle (a new document begins), else a
    newline, as if a new paragraph began."""
    end = end_id(tokenizer, config)
    if end is not None:
        return end
    newline = tokenizer.encode("\n").ids  # byte-level BPE spells it "Ċ"
    return int(newline[-1]) if newline else 0


def load(path: str | Path) -> TextGenerator:
    """Load a checkpoint bundle for generation: `textgen.load("checkpoints/x")`."""
    return TextGenerator(load_bundle(path))

