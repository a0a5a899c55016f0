"""Score a text under a trained model: bits per character and perplexity per token.

The text is streamed through the stateful model in chunks, carrying every layer's
state (textgen.cells) from one chunk to the next, so every token is predicted from all
the text before it, as in generation. Files are read block by block, so memory stays
flat whatever their size. Bits per character divide the total bits by the characters
predicted in the original text, so char- and word-level models compare on one scale.
Word level charges one [UNK] token for a whole unknown word, which flatters bits/char:
the score also gives the share of the predicted characters that fell inside [UNK] tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from textgen.config import TextgenError, TokenizerConfig
from textgen.documents import read_documents
from textgen.generate import TextGenerator
from textgen.text import read_chunks
from textgen.tokenizer import DOC, UNK, encode, token_lengths, token_pieces

CHUNK_TOKENS = 1024  # tokens per forward call
READ_BYTES = 1 << 20  # bytes read from a file at a time


@dataclass(frozen=True)
class Score:
    """The result of evaluating one or more texts."""

    bits_per_char: float
    perplexity: float  # per token: exp(mean nats per predicted token)
    characters: int  # characters predicted (all but the first token's)
    tokens: int  # tokens predicted (all but the first)
    nats: float  # total negative log-likelihood in nats
    unk_char_share: float = 0.0  # share of the characters that lie inside [UNK] tokens

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_texts(generator: TextGenerator, texts: list[str], progress=None) -> Score:
    """Score several texts (each from a fresh state) as one.

    Args:
        generator: a loaded model.
        texts: the texts to score; each needs at least two tokens.
        progress: optional callable(n_tokens) told how many tokens each chunk scored.
    """
    return _score([[text] for text in texts], generator, progress)


def evaluate_files(generator: TextGenerator, paths: list[Path], progress=None) -> Score:
    """Score text files (each from a fresh state) as one, reading them block by block.

    Args:
        generator: a loaded model.
        paths: the files; each needs at least two tokens.
        progress: optional callable(n_bytes) told how many bytes of file each block was.
    """
    settings = generator.config.tokenizer
    documents = (read_pieces(p, settings.encoding, settings.level, progress) for p in paths)
    return _score(documents, generator, None)


def evaluate_documents(generator: TextGenerator, paths: list[Path], docs: str, progress=None) -> Score:
    """Score files of documents (`docs`: lines, jsonl:FIELD, csv:COLUMN) the way a documents
    bundle was trained: [DOC] d1 [DOC] d2 ... [DOC], each file from a fresh state.

    Every token is predicted, the [DOC] ending each document included (the model's cost of
    ending it), and the characters are the documents' own. Labels are not read: documents
    are scored without their label token.

    Args:
        progress: optional callable(n_bytes) told how many bytes of file each block was.
    """
    settings = replace(generator.config.tokenizer, docs=docs, label_field=None, label_column=None)
    settings.validate()
    doc_id = generator.tokenizer.token_to_id(DOC)
    if doc_id is None:  # bundles made before [DOC] existed
        raise TextgenError("this bundle's vocabulary has no [DOC] token: it cannot score documents")
    return _score((_document_pieces(p, settings, doc_id, progress) for p in paths), generator, None)


def _document_pieces(path: Path, settings: TokenizerConfig, doc_id: int, progress) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(text, ids after it) pieces of one documents file: a [DOC], then each document and its [DOC]."""
    yield "", (doc_id,)
    on_chunk = (lambda data: progress(len(data))) if progress else None
    for document in read_documents(path, settings, on_chunk):
        *pieces, last = ["", *token_pieces([document.text], settings.level)]  # "" if the text is empty
        yield from ((piece, ()) for piece in pieces)
        yield last, (doc_id,)


def evaluate_document(generator: TextGenerator, pieces: Iterable[str]) -> Score:
    """Score one text given as consecutive pieces, state carried across them (as a file is read)."""
    return _score([pieces], generator, None)


def _score(documents: Iterable[Iterable[str | tuple[str, tuple[int, ...]]]], generator: TextGenerator,
           progress) -> Score:
    """Totals over documents of pieces: texts, or (text, ids that follow it and span no characters)."""
    nats, tokens, chars, unk_chars = 0.0, 0, 0, 0
    for pieces in documents:
        scorer = _Scorer(generator, progress)
        for piece in pieces:
            scorer.feed(*((piece, ()) if isinstance(piece, str) else piece))
        if scorer.tokens < 1:
            raise TextgenError("text to evaluate is too short (needs at least two tokens)")
        nats, tokens, chars = nats + scorer.nats, tokens + scorer.tokens, chars + scorer.chars
        unk_chars += scorer.unk_chars
    return Score(bits_per_char(nats, chars), math.exp(nats / tokens), chars, tokens, nats,
                 unk_chars / max(chars, 1))


def bits_per_char(nats: float, chars: int) -> float:
    """Total nats over the characters predicted, in bits: the one definition of bits/char."""
    return nats / max(chars, 1) / math.log(2)


def token_nats(generator: TextGenerator, x: np.ndarray, y: np.ndarray,
               states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Nats of each target: x, y (rows, time) -> nats (rows, time) float64, and the new states."""
    logits, states = generator.forward(x, states)  # (rows, time, vocab)
    picked = np.take_along_axis(_log_softmax(logits), y[..., None].astype(np.intp), axis=-1)[..., 0]
    return -picked, states


class _Scorer:
    """Running totals over one document fed piece by piece, state carried throughout."""

    def __init__(self, generator: TextGenerator, progress: Callable[[int], None] | None):
        self.generator, self.progress = generator, progress
        self.states = generator.zero_states(1)
        self.last_id: int | None = None  # the previous piece's last token predicts this piece's first
        self.nats, self.tokens, self.chars = 0.0, 0, 0
        self.unk_chars = 0  # predicted characters inside [UNK] tokens
        self.unk_id = generator.tokenizer.token_to_id(UNK)

    def feed(self, text: str, then: tuple[int, ...] = ()) -> None:
        """Predict the tokens of `text`, then the ids `then` (they span no characters: [DOC])."""
        ids = encode(self.generator.tokenizer, text)
        unknown = ids == self.unk_id  # (n_tokens,)
        if unknown.any():  # rare: the spans are only asked for then
            unknown[0] &= self.last_id is not None  # the first token is never predicted
            self.unk_chars += int(token_lengths(self.generator.tokenizer, text)[unknown].sum())
        if len(ids):
            first = _first_token_chars(self.generator, text) if self.last_id is None else 0
            self.chars += len(text) - first
        ids = np.concatenate([[] if self.last_id is None else [self.last_id], ids, then]).astype(np.int32)
        if len(ids) == 0:
            return
        for start in range(0, len(ids) - 1, CHUNK_TOKENS):
            x = ids[start : start + CHUNK_TOKENS]  # (time,)
            y = ids[start + 1 : start + 1 + CHUNK_TOKENS][: len(x)]
            x = x[: len(y)]
            nats, self.states = token_nats(self.generator, x[None, :], y[None, :], self.states)  # (1, time)
            self.nats += float(nats.sum())
            self.tokens += len(y)
            if self.progress:
                self.progress(len(y))
        self.last_id = int(ids[-1])


def read_pieces(path: Path, encoding: str = "utf-8", level: str = "char", progress=None) -> Iterator[str]:
    """A text file as pieces no token spans, read READ_BYTES at a time (textgen.text's rules).

    `progress(n_bytes)` is told the size of each block read.
    """
    on_chunk = (lambda data: progress(len(data))) if progress else None
    return token_pieces(read_chunks(path, encoding, on_chunk, READ_BYTES), level)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _first_token_chars(generator: TextGenerator, text: str) -> int:
    """How many characters the first token spans (it is never predicted)."""
    if generator.config.tokenizer.level == "char":
        return 1
    return generator.tokenizer.encode(text[:1000]).offsets[0][1]
