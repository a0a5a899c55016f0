"""Corpus arguments -> files; token ids -> `tf.data` pipelines of (input, target) sequences.

(Reading the files' text is textgen.text; turning it into token ids, textgen.corpus_cache.)

Every position is predicted (sequence to sequence): a window of seq_len + 1 ids
becomes input ids[:-1] and target ids[1:].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.config import TextgenError


def sources_digest(sources: list[dict]) -> str:
    """One digest of every file's name and sha256, in reading order."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(f"{source['file']}\0{source['sha256']}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def resolve_paths(items: list[str], glob: str = "*.txt") -> list[Path]:
    """Corpus arguments -> files: a file, a folder, or a known corpus name.

    A folder contributes its files matching `glob` in sorted order ("**/*.txt" walks it
    recursively). An existing path always wins over a corpus name.
    """
    from textgen import corpora

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.glob(glob) if p.is_file())
            if not found:
                raise TextgenError(f"{item}: directory has no files matching {glob!r}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif item in corpora.registry():
            paths.append(corpora.fetch(item))
        else:
            raise TextgenError(f"{item}: no such file, directory or known corpus")
    return paths


def split_ids(ids: np.ndarray, val_fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `val_fraction` of the ids; check both parts are long enough."""
    n_val = max(2, int(len(ids) * val_fraction))
    train, val = ids[:-n_val], ids[-n_val:]
    check_length(train, seq_len, "training part of the corpus")
    return train, val


def check_length(ids: np.ndarray, seq_len: int, what: str) -> None:
    """Refuse a token sequence too short for one training window."""
    if len(ids) < seq_len + 1:
        raise TextgenError(
            f"{what} is too short: {len(ids):,} tokens, need at least {seq_len + 1:,} "
            f"(--seq-len {seq_len} plus one); use a longer text or a smaller --seq-len"
        )


@dataclass(frozen=True)
class StreamLayout:
    """How a token sequence is cut into B contiguous streams read seq_len tokens at a time.

    Stream b is ids[b * stream_len : (b + 1) * stream_len + 1]; batch t holds tokens
    [t * seq_len, (t + 1) * seq_len] of every stream, so batch t + 1 continues batch t.
    """

    batch: int
    seq_len: int
    stream_len: int
    steps: int  # batches per pass

    @classmethod
    def fit(cls, n_ids: int, batch: int, seq_len: int) -> "StreamLayout":
        """The layout for n_ids tokens, shrinking batch (then seq_len) to fit short texts."""
        seq_len = max(1, min(seq_len, n_ids - 1))
        batch = max(1, min(batch, (n_ids - 1) // seq_len))
        stream_len = (n_ids - 1) // batch
        return cls(batch, seq_len, stream_len, stream_len // seq_len)

    def batch_at(self, ids: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of batch `step`, each (batch, seq_len); reads only those tokens."""
        starts = np.arange(self.batch, dtype=np.int64) * self.stream_len + step * self.seq_len
        rows = ids[starts[:, None] + np.arange(self.seq_len + 1)]  # (batch, seq_len + 1)
        rows = rows.astype(np.int32)
        return rows[:, :-1], rows[:, 1:]


def make_stream_dataset(ids: np.ndarray, layout: StreamLayout, *, first_step: int = 0,
                        repeat: bool = True):
    """`tf.data` of ((inputs, reset), targets) batches in stream order, prefetched.

    Batch g of the run is batch g mod steps of the layout, whatever process reads it,
    so a resumed run (first_step=g) sees exactly the data an uninterrupted one would.
    `reset` (batch,) is True where the streams start over, telling the model to zero its
    state; it has a row per stream so a strategy splitting the batch across replicas
    hands each replica its own rows of it.
    Batches are gathered from `ids` (an array or a memmap) one at a time, so memory
    does not grow with the corpus.
    """
    import tensorflow as tf

    shape = (layout.batch, layout.seq_len)

    def gather(step):
        return layout.batch_at(ids, int(step) % layout.steps)

    def load(step):
        x, y = tf.numpy_function(gather, [step], [tf.int32, tf.int32], stateful=False)
        reset = tf.fill([layout.batch], tf.equal(step % layout.steps, 0))  # (batch,)
        return (tf.ensure_shape(x, shape), reset), tf.ensure_shape(y, shape)

    last = np.iinfo(np.int64).max if repeat else layout.steps
    ds = tf.data.Dataset.range(first_step, last)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
