"""Is a sample new? Whether it equals a training document, and the longest span it copies.

`CorpusIndex` reads the corpus once into two hash tables: one hash per document (or per
file, for a corpus read as text) and one per k-gram of characters (a k-gram never spans
two documents). Checking a sample then costs a few lookups per character, whatever the
corpus size: no scan of the corpus per sample. The copied span is the longest run of the
sample whose every k-gram occurs in the corpus (a run of r k-grams spans r + k - 1
characters); spans shorter than k are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.config import TokenizerConfig
from textgen.documents import read_documents
from textgen.text import read_chunks
from textgen.tokenizer import code_points

K = 8  # characters per k-gram: shorter spans are common words, not copies
_BASE = np.uint64(0x100000001B3)  # polynomial hash base (odd), arithmetic modulo 2**64
_BATCH_CHARS = 1 << 22  # documents hashed together, so millions of short ones cost few NumPy calls
_SEPARATOR = "\x00"  # joins a batch of documents; k-grams holding it are dropped


@dataclass(frozen=True)
class Novelty:
    """What `CorpusIndex.check` finds for one sample."""

    copy: bool  # equals a training document
    longest: int  # characters of the longest span also in the corpus (0: none of K or more)


class CorpusIndex:
    """Hashes of a corpus's documents and k-grams, for `check`."""

    def __init__(self, documents: Iterable[str], k: int = K):
        self.k = k
        self.documents: set[int] = set()
        found, batch, size = [], [], 0
        for text in documents:
            self.documents.add(hash(text))
            batch.append(text)
            size += len(text) + 1
            if size >= _BATCH_CHARS:
                found.append(self._batch_hashes(batch))
                batch, size = [], 0
        found.append(self._batch_hashes(batch))
        self.kgrams = np.unique(np.concatenate(found))  # sorted, for searchsorted

    @classmethod
    def of_files(cls, paths: list[Path], settings: TokenizerConfig, k: int = K) -> "CorpusIndex":
        """The index of corpus files read as the bundle was trained (`settings.docs`)."""
        return cls(_texts(paths, settings, k), k)

    def check(self, text: str) -> Novelty:
        """Whether `text` equals a document, and its longest span found in the corpus."""
        copy = hash(text) in self.documents
        hashes = kgram_hashes(text, self.k)  # (len(text) - k + 1,)
        where = np.minimum(np.searchsorted(self.kgrams, hashes), max(len(self.kgrams) - 1, 0))
        hits = self.kgrams[where] == hashes if len(self.kgrams) else np.zeros(len(hashes), bool)
        run = _longest_run(hits)
        return Novelty(copy, len(text) if copy else (run + self.k - 1 if run else 0))

    def _batch_hashes(self, texts: list[str]) -> np.ndarray:
        joined = _SEPARATOR.join(texts)
        hashes = kgram_hashes(joined, self.k)
        points = code_points(joined)
        seps = np.concatenate([[0], np.cumsum(points == 0)])  # (n + 1,) separators before each position
        clean = seps[self.k :] == seps[: len(hashes)]  # no separator inside the k-gram
        return hashes[clean]


def kgram_hashes(text: str, k: int) -> np.ndarray:
    """A hash of every k characters of `text` at each start: (max(0, len - k + 1),) uint64."""
    points = code_points(text).astype(np.uint64)
    n = len(points) - k + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    hashes = np.zeros(n, np.uint64)
    for j in range(k):  # k vector passes: h = h * base + c, wrapping modulo 2**64
        hashes = hashes * _BASE + points[j : j + n]
    return hashes


def _longest_run(hits: np.ndarray) -> int:
    """Length of the longest run of True in a bool array."""
    if not hits.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hits.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[0::2]).max())


def _texts(paths: list[Path], settings: TokenizerConfig, k: int) -> Iterator[str]:
    """Each document's text; a file read as text comes in chunks overlapping by k - 1 characters
    (its whole text is one document, hashed whole only when it fits one chunk)."""
    for path in paths:
        if settings.documents:
            yield from (d.text for d in read_documents(path, settings))
            continue
        tail = ""
        for chunk in read_chunks(path, settings.encoding):
            yield tail + chunk
            tail = (tail + chunk)[-(k - 1):]
