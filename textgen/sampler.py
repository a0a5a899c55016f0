"""Pure functions from a batch of logits to token ids.

Samplers see only logits (batch, vocab), never the model. Temperature is applied once,
in float32; every random draw comes from a per-sample generator seeded by (seed, i),
so sample i of a batch is the same text whatever the batch size.
"""

from __future__ import annotations

import numpy as np


def sample_streams(seed: int | None, num_samples: int) -> list[np.random.Generator]:
    """One independent random stream per sample: stream i is seeded by (seed, i)."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    return [np.random.default_rng([seed, i]) for i in range(num_samples)]


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Scale logits (batch, vocab) by 1/temperature in float32; temperature > 0."""
    if temperature <= 0:
        raise ValueError("temperature must be positive (use greedy() for 0)")
    return np.asarray(logits, dtype=np.float32) / np.float32(temperature)


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row: (batch, vocab) -> (batch,)."""
    return np.argmax(logits, axis=-1).astype(np.int32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (exact enough that rows sum to 1 for the draw)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def draw(logits: np.ndarray, streams: list[np.random.Generator]) -> np.ndarray:
    """Sample one token per row from softmax(logits), row i with streams[i]."""
    probs = softmax(logits)  # (batch, vocab)
    cdf = np.cumsum(probs, axis=-1)
    u = np.array([s.random() for s in streams])  # (batch,)
    ids = (cdf < u[:, None] * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(ids, logits.shape[-1] - 1).astype(np.int32)


def sample(logits: np.ndarray, streams: list[np.random.Generator], temperature: float = 1.0) -> np.ndarray:
    """Next token ids (batch,) from logits (batch, vocab): temperature 0 means greedy."""
    if np.float32(temperature) == 0:  # 0, or below float32's range (1e-300): greedy
        return greedy(logits)
    # Shift the largest logit to 0 first: softmax is unchanged, and a tiny temperature
    # then sends the others to -inf instead of overflowing the largest to +inf (NaN).
    logits = np.asarray(logits, np.float32)
    return draw(apply_temperature(logits - logits.max(axis=-1, keepdims=True), temperature), streams)
