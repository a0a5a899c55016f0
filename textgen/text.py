"""Reading a text file strictly, in bounded chunks: the one place corpus text comes in.

Every file textgen reads as text (corpus files, --val-file, evaluated files, a prime file)
goes through `read_chunks`, so they all follow the same rules:

- the bytes are decoded with the given encoding (an incremental decoder: a character split
  across two chunks is joined, never refused);
- a leading byte order mark is dropped, and CRLF becomes LF (a CR ending one chunk waits for
  the next, in case its LF starts it); a lone CR is kept;
- an empty file, NUL bytes (binary data; except in UTF-16 and UTF-32, where they are
  normal) and invalid text are refused with one line naming the file and the byte offset.

Memory stays flat whatever the file size: one chunk of bytes and its text at a time.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from pathlib import Path

from textgen.config import TextgenError

BOM = "\ufeff"  # U+FEFF as the first character, in whatever encoding: dropped
CHUNK_BYTES = 1 << 20  # bytes read at a time unless the caller asks otherwise
# Encodings whose text is full of NUL bytes (every ASCII character has one): no binary check.
_WIDE_ENCODINGS = ("utf-16", "utf-32")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole text file as one string, read by the rules of `read_chunks`."""
    return "".join(read_chunks(path, encoding))


def read_chunks(path: Path, encoding: str = "utf-8", on_chunk: Callable[[bytes], None] | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The text of one file in chunks of about `chunk_bytes` bytes, checked strictly.

    Args:
        path: the file.
        encoding: how to decode it (any Python text codec).
        on_chunk: optional callable told each raw chunk of bytes once it has been
            decoded and checked (progress bars, hashing).
        chunk_bytes: bytes read at a time.

    Raises:
        TextgenError: unreadable or empty file, unknown encoding, a NUL byte or invalid
            text (with its byte offset).
    """
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise TextgenError(f"unknown encoding {encoding!r}") from None
    check_nul = not codecs.lookup(encoding).name.startswith(_WIDE_ENCODINGS)
    offset, held, first = 0, "", True
    try:
        file = open(path, "rb")
    except OSError as err:
        raise TextgenError(f"{path}: cannot read ({err.strerror or err})") from None
    with file:
        while True:
            data = _read(file, path, chunk_bytes)
            final = not data
            if final and offset == 0:
                raise TextgenError(f"{path}: file is empty")
            nul = data.find(b"\x00") if check_nul else -1
            if nul >= 0:
                raise TextgenError(f"{path}: not a text file (NUL byte at offset {offset + nul:,})")
            text = _decode(decoder, data, final, path, encoding, offset)
            if text and first:  # the first character, however few bytes came
                text, first = text.removeprefix(BOM), False
            text, held = held + text, ""
            if text.endswith("\r") and not final:
                text, held = text[:-1], "\r"  # maybe the first half of a CRLF
            offset += len(data)
            if on_chunk and data:
                on_chunk(data)
            if text:
                yield text.replace("\r\n", "\n") if "\r" in text else text
            if final:
                return


def _read(file, path: Path, size: int) -> bytes:
    try:
        return file.read(size)
    except OSError as err:
        raise TextgenError(f"{path}: cannot read ({err.strerror or err})") from None


def _decode(decoder, data: bytes, final: bool, path: Path, encoding: str, offset: int) -> str:
    """`data` decoded; invalid text is refused with the file's byte offset of the problem."""
    pending = len(decoder.getstate()[0])  # bytes of a character split across the last chunk
    try:
        return decoder.decode(data, final=final)
    except UnicodeDecodeError as err:
        at = offset - pending + err.start
        raise TextgenError(f"{path}: not valid {encoding} text (byte offset {at:,}); try --encoding") from None
