"""`textgen generate --output FILE`: samples written one per line, all or nothing.

A .txt file holds one sample per line, so a sample containing a newline is refused (a
.jsonl file holds any text: one JSON object per sample with its text, seed and index,
and its novelty when checked). The file is written under a temporary name and renamed
into place once whole: a refused or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from textgen.atomic import commit, temporary_name, unlink
from textgen.config import TextgenError

KINDS = (".txt", ".jsonl")


def check_output(path: Path) -> None:
    """Refuse an output file of another kind, or in a folder that does not exist, before generating."""
    if path.suffix not in KINDS:
        raise TextgenError(f"{path}: --output must end in .txt (one sample per line) or .jsonl")
    if not path.parent.is_dir():
        raise TextgenError(f"{path.parent}: no such folder")


def write_samples(path: Path, rows: Iterable[dict]) -> int:
    """Write rows ({"text", "seed", "index", ...}) to `path`; return how many were written."""
    tmp, count = temporary_name(path), 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(_line(path, row) + "\n")
                count += 1
        commit(tmp, path)
    except OSError as err:
        raise TextgenError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        unlink(tmp)
    return count


def _line(path: Path, row: dict) -> str:
    if path.suffix == ".jsonl":
        return json.dumps(row, ensure_ascii=False)
    if "\n" in row["text"] or "\r" in row["text"]:
        raise TextgenError(f"sample {row['index']} contains a newline, which a .txt file cannot hold "
                           f"one per line; write to {path.with_suffix('.jsonl').name} instead")
    return row["text"]
