"""Score a text under a trained model: bits per character and perplexity per token.

The text is streamed through the stateful model in chunks, carrying (h, c) from one
chunk to the next, so every token is predicted from all the text before it, as in
generation. Bits per character divide the total bits by the characters predicted in
the original text, so char- and word-level models compare on one scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from textgen.config import TextgenError
from textgen.generate import TextGenerator
from textgen.tokenizer import encode

CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class Score:
    """The result of evaluating one or more texts."""

    bits_per_char: float
    perplexity: float  # per token: exp(mean nats per predicted token)
    characters: int  # characters predicted (all but the first token's)
    tokens: int  # tokens predicted (all but the first)
    nats: float  # total negative log-likelihood in nats

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_texts(generator: TextGenerator, texts: list[str], progress=None) -> Score:
    """Score several texts (each from a fresh state) as one.

    Args:
        generator: a loaded model.
        texts: the texts to score; each needs at least two tokens.
        progress: optional callable(n_tokens) told how many tokens each chunk scored.
    """
    nats, tokens, chars = 0.0, 0, 0
    for text in texts:
        ids = encode(generator.tokenizer, text)
        if len(ids) < 2:
            raise TextgenError("text to evaluate is too short (needs at least two tokens)")
        nats += _stream_nats(generator, ids, progress)
        tokens += len(ids) - 1
        chars += len(text) - _first_token_chars(generator, text)
    mean = nats / tokens
    return Score(nats / max(chars, 1) / math.log(2), math.exp(mean), chars, tokens, nats)


def _stream_nats(generator: TextGenerator, ids: np.ndarray, progress) -> float:
    """Total negative log-likelihood of ids[1:] given everything before, in nats."""
    states = generator.zero_states(1)
    total = 0.0
    for start in range(0, len(ids) - 1, CHUNK_TOKENS):
        x = ids[start : start + CHUNK_TOKENS]  # (time,)
        y = ids[start + 1 : start + 1 + CHUNK_TOKENS][: len(x)]
        x = x[: len(y)]
        logits, states = generator.forward(x[None, :], states)  # (1, time, vocab)
        total -= _log_softmax(logits[0])[np.arange(len(y)), y].sum()
        if progress:
            progress(len(y))
    return float(total)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _first_token_chars(generator: TextGenerator, text: str) -> int:
    """How many characters the first token spans (it is never predicted)."""
    if generator.config.tokenizer.level == "char":
        return 1
    return generator.tokenizer.encode(text[:1000]).offsets[0][1]
