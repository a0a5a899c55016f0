"""A corpus file as documents (`--docs lines`, `jsonl:FIELD`, `csv:COLUMN`), read strictly.

Each document's text (and label, with --label-field/--label-column) comes with the
file and line it starts on, so a bad row is refused with one line naming both. Files
are read through `textgen.text.read_chunks` (the one reader), line by line, so memory
stays flat whatever the file size. Joining documents with [DOC] is the token cache's job.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textgen.config import TextgenError, TokenizerConfig
from textgen.text import read_chunks


@dataclass(frozen=True)
class Document:
    """One document: its text, its label (None unless labelled) and where it starts."""

    text: str
    label: str | None
    path: Path
    line: int


def read_documents(path: Path, settings: TokenizerConfig, on_chunk=None) -> Iterator[Document]:
    """The documents of one file under `settings.docs` (not "text"), in file order.

    Raises:
        TextgenError: a row that is not JSON, lacks the field or column, or holds a
            non-string text or label; one line naming the file and line.
    """
    kind, _, name = settings.docs.partition(":")
    lines = read_lines(path, settings.encoding, on_chunk)
    if kind == "lines":
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield Document(line.rstrip("\n"), None, path, number)
    elif kind == "jsonl":
        yield from _jsonl(lines, path, name, settings.label_key)
    else:
        yield from _csv(lines, path, name, settings.label_key)


def read_lines(path: Path, encoding: str, on_chunk=None) -> Iterator[str]:
    """The lines of a text file, each with its "\\n" (the last one may lack it)."""
    held = ""
    for chunk in read_chunks(path, encoding, on_chunk):
        lines = (held + chunk).split("\n")
        held = lines.pop()
        yield from (line + "\n" for line in lines)
    if held:
        yield held


def _jsonl(lines: Iterator[str], path: Path, field: str, label_field: str | None) -> Iterator[Document]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise TextgenError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(row, dict):
            raise TextgenError(f"{path}:{number}: not a JSON object")
        yield _document(row, field, label_field, path, number, "field")


def _csv(lines: Iterator[str], path: Path, column: str, label_column: str | None) -> Iterator[Document]:
    reader = csv.DictReader(lines)
    try:
        header = reader.fieldnames or []
        for name in (column, label_column):
            if name is not None and name not in header:
                raise TextgenError(f"{path}:1: no column {name!r} (the columns are {', '.join(header)})")
        start = reader.line_num + 1
        for row in reader:
            yield _document(row, column, label_column, path, start, "column")
            start = reader.line_num + 1
    except csv.Error as err:
        raise TextgenError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None


def _document(row: dict, field: str, label_field: str | None, path: Path, number: int, what: str) -> Document:
    """A row's document; its text and label must be strings (a short CSV row's are None)."""
    values = []
    for name in (field, label_field):
        if name is None:
            values.append(None)
            continue
        if name not in row:
            raise TextgenError(f"{path}:{number}: no {what} {name!r}")
        if not isinstance(row[name], str):
            raise TextgenError(f"{path}:{number}: {what} {name!r} is not a string")
        values.append(row[name])
    return Document(values[0], values[1], path, number)
