"""Pure functions from a batch of logits to token ids, and the text-side stop rules.

Samplers see only logits (batch, vocab), never the model. Each control is one small
function over a logits batch; `sample` composes them in the usual order:
repetition penalty, temperature, top-k, top-p, then one draw per row.

Randomness: sample i of a batch draws from its own stream seeded by (seed, i), one
uniform number per step whatever the controls, so sample i is the same text whatever
the batch size (up to the last bits of batched matrix products).
"""

from __future__ import annotations

import numpy as np

DEFAULT_PENALTY_WINDOW = 64  # tokens of recent context the repetition penalty looks at
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Streams:
    """Independent uniform streams, one per sample: stream i is seeded by (seed, i).

    Numbers are drawn in blocks (one NumPy call per block, not per step); a Generator
    gives the same sequence either way, so blocking changes no result.
    """

    def __init__(self, seed: int | None, num_samples: int, block: int = 256):
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        self.seed = seed
        self._rngs = [np.random.default_rng([seed, i]) for i in range(num_samples)]
        self._block = block
        self._buffer = np.empty((num_samples, 0))
        self._pos = 0

    def uniform(self) -> np.ndarray:
        """The next uniform number in [0, 1) of every stream: (num_samples,) float64."""
        if self._pos == self._buffer.shape[1]:
            self._buffer = np.stack([r.random(self._block) for r in self._rngs]) if self._rngs else self._buffer
            self._pos = 0
        u = self._buffer[:, self._pos]
        self._pos += 1
        return u


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Scale logits (batch, vocab) by 1/temperature in float32; temperature > 0.

    A temperature beyond float32's range is taken as float32's largest number, so -inf
    (filtered-out) logits stay -inf instead of becoming -inf/inf = NaN.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive (use greedy() for 0)")
    return np.asarray(logits, dtype=np.float32) / np.float32(min(temperature, _FLOAT32_MAX))


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row: (batch, vocab) -> (batch,)."""
    return np.argmax(logits, axis=-1).astype(np.int32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (exact enough that rows sum to 1 for the draw)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def repetition_penalty(logits: np.ndarray, recent: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty: logits of tokens in `recent` are divided by `penalty` if positive,
    multiplied if negative (so a penalty > 1 always makes them less likely).

    Args:
        logits: (batch, vocab).
        recent: (batch, window) token ids seen lately; negative ids are padding.
        penalty: 1 changes nothing.
    """
    out = np.array(logits, dtype=np.float32)
    rows, cols = np.nonzero(recent >= 0)
    seen = np.zeros(out.shape, bool)
    seen[rows, recent[rows, cols]] = True  # each token counts once, however often it appeared
    out[seen] = np.where(out[seen] > 0, out[seen] / penalty, out[seen] * penalty)
    return out


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest logits (ties at the k-th value are kept); the rest -> -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth = -np.partition(-logits, k - 1, axis=-1)[:, k - 1 : k]  # (batch, 1) the k-th largest
    return np.where(logits >= kth, logits, -np.inf).astype(np.float32)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability
    reaches p (the most likely token is always kept); the rest -> -inf. p = 1 keeps all."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")  # (batch, vocab) most likely first
    probs = np.take_along_axis(softmax(logits), order, axis=-1)
    before = np.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above each
    drop_sorted = before >= p
    drop = np.zeros(logits.shape, bool)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits).astype(np.float32)


def forbid_glue(logits: np.ndarray, previous: np.ndarray, ends_word: np.ndarray,
                starts_word: np.ndarray) -> np.ndarray:
    """Refuse a token starting with a word character right after one ending with one.

    Word level: such a pair writes two words as one ("the" + "cat" -> "thecat"); the
    tokenizer never makes one from text (see `tokenizer.word_edges`). A row where the rule
    would leave no token at all is left as it was.

    Args:
        logits: (batch, vocab).
        previous: (batch,) each row's previous token id.
        ends_word, starts_word: (vocab,) bool, which tokens end / start with a word character.
    """
    logits = np.asarray(logits, np.float32)
    refused = ends_word[previous][:, None] & starts_word[None, :]  # (batch, vocab)
    out = np.where(refused, -np.inf, logits).astype(np.float32)
    left = (out > -np.inf).any(axis=-1, keepdims=True)  # (batch, 1)
    return np.where(left, out, logits)


def draw(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample one token per row from softmax(logits) by inverting its CDF at u (batch,)."""
    cdf = np.cumsum(softmax(logits), axis=-1)  # (batch, vocab)
    # The first token whose cdf exceeds u: `<=` so that tokens of probability 0 (filtered
    # out, cdf unchanged) are never picked, even at u = 0.
    ids = (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(ids, logits.shape[-1] - 1).astype(np.int32)


def sample(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, penalty: float | None = None,
           recent: np.ndarray | None = None) -> np.ndarray:
    """Next token ids (batch,) from logits (batch, vocab) with every control applied.

    Order: repetition penalty (over `recent`), temperature (0 = greedy), top-k (0 or None =
    off), top-p, draw with the uniforms u (batch,). Filtering after temperature matters for
    top-p only.
    """
    if penalty is not None and penalty != 1.0 and recent is not None:
        logits = repetition_penalty(logits, recent, penalty)
    if np.float32(temperature) == 0:  # 0, or below float32's range (1e-300): greedy
        return greedy(logits)
    # Shift the largest logit to 0 first: softmax is unchanged, and a tiny temperature
    # then sends the others to -inf instead of overflowing the largest to +inf (NaN).
    logits = np.asarray(logits, np.float32)
    logits = apply_temperature(logits - logits.max(axis=-1, keepdims=True), temperature)
    if top_k:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return draw(logits, u)


class StopText:
    """Where a sample's text must end, given stop strings and a character cap.

    Text is fed piece by piece; `feed` returns the part that is safe to show now. Text
    that might be the start of a stop string is held back until it is not, so a stop
    string never reaches the output, even across pieces.
    """

    def __init__(self, stops: list[str] | None = None, max_chars: int | None = None):
        self.stops = [s for s in (stops or []) if s]
        self.max_chars = max_chars
        self.text = ""  # everything generated so far (after the prime)
        self.shown = 0  # characters of self.text already returned
        self.done = False

    def feed(self, piece: str) -> str:
        """Add a generated piece; return the text that can be shown now ('' if none)."""
        if self.done:
            return ""
        if not self.stops and self.max_chars is None:
            return piece  # nothing to watch for: skip the bookkeeping
        self.text += piece
        end = self._stop_at()
        if end is not None:
            self.done = True
            return self._show(end)
        return self._show(len(self.text) - self._held_back())

    def flush(self) -> str:
        """The held-back text, once generation ends without a stop."""
        return "" if self.done else self._show(len(self.text))

    def _stop_at(self) -> int | None:
        """Where the text must end: the first stop string's start, or the character cap."""
        longest = max((len(s) for s in self.stops), default=0)
        window = max(0, self.shown - longest)  # a stop wholly inside shown text was found before
        hits = [i for i in (self.text.find(s, window) for s in self.stops) if i >= 0]
        if self.max_chars is not None and len(self.text) >= self.max_chars:
            hits.append(self.max_chars)
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _show(self, end: int) -> str:
        end = max(end, self.shown)
        out, self.shown = self.text[self.shown : end], end
        return out
