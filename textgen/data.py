"""Corpus files -> text -> token ids -> `tf.data` pipelines of (input, target) sequences.

Every position is predicted (sequence to sequence): a window of seq_len + 1 ids
becomes input ids[:-1] and target ids[1:].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.config import TextgenError

BOM = "\ufeff"


@dataclass(frozen=True)
class Corpus:
    """The text of one or more files, and where it came from."""

    text: str
    sources: list[dict]  # [{"file": name, "bytes": n, "sha256": hex}] in reading order

    @property
    def name(self) -> str:
        """A default run name: the first file's stem."""
        return Path(self.sources[0]["file"]).stem


def resolve_paths(items: list[str]) -> list[Path]:
    """Corpus arguments -> files: a file, a folder of .txt files, or a known corpus name.

    An existing path always wins over a corpus name.
    """
    from textgen import corpora

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.txt") if p.is_file())
            if not found:
                raise TextgenError(f"{item}: directory has no .txt files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif item in corpora.registry():
            paths.append(corpora.fetch(item))
        else:
            raise TextgenError(f"{item}: no such file, directory or known corpus")
    return paths


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read one text file strictly: refuse binary data, drop a BOM, turn CRLF into LF."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TextgenError(f"{path}: cannot read ({err.strerror})") from None
    if not data:
        raise TextgenError(f"{path}: file is empty")
    nul = data.find(b"\x00")
    if nul >= 0 and not encoding.lower().replace("-", "").startswith("utf16"):
        raise TextgenError(f"{path}: not a text file (NUL byte at offset {nul:,})")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise TextgenError(
            f"{path}: not valid {encoding} text (byte offset {err.start:,}); try --encoding"
        ) from None
    except LookupError:
        raise TextgenError(f"unknown encoding {encoding!r}") from None
    return text.removeprefix(BOM).replace("\r\n", "\n")


def load_corpus(items: list[str], encoding: str = "utf-8") -> Corpus:
    """Read every file named by `items` (sorted within folders) into one text."""
    parts, sources = [], []
    for path in resolve_paths(items):
        text = read_text(path, encoding)
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")  # files never run into each other mid-line
        parts.append(text)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sources.append({"file": path.name, "bytes": path.stat().st_size, "sha256": digest})
    return Corpus("".join(parts), sources)


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


def windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of seq_len + 1 ids, shape (n_windows, seq_len + 1).

    Consecutive windows share one id, so every id is a target exactly once.
    """
    n = (len(ids) - 1) // seq_len
    view = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)  # (len - seq_len, seq_len + 1)
    return np.ascontiguousarray(view[: n * seq_len : seq_len])


def make_dataset(ids: np.ndarray, seq_len: int, batch_size: int, *, shuffle: bool, seed: int = 0):
    """A batched, prefetched `tf.data.Dataset` of (input, target), each (batch, seq_len)."""
    import tensorflow as tf

    seq_len = min(seq_len, len(ids) - 1)  # a short validation text is one shorter window
    rows = windows(ids, seq_len)  # (n_windows, seq_len + 1)
    ds = tf.data.Dataset.from_tensor_slices(rows)
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=len(rows) >= batch_size)  # fixed shapes: one trace
    ds = ds.map(lambda w: (w[:, :-1], w[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
