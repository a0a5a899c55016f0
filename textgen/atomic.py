"""Crash-safe file primitives for bundles and resume states, and fault injection to test them.

A file is written under a temporary name (`temporary_name`), fsynced, then renamed over
its final name and the folder fsynced (`commit`): a reader sees the old file or the
new one, never a torn one, even after a power cut.

Fault injection for tests (kill -9 and full-disk at a chosen moment of a save):
TEXTGEN_CRASH_AT=POINT[:N] ends the process with os._exit at the N-th time (default
1st) a save reaches POINT; TEXTGEN_FAIL_AT=POINT[:N] raises ENOSPC there instead.
The POINTs are the `fault_point` calls of textgen.bundle and textgen.resume.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

TEMPORARY = ".tmp-"  # prefix of files being written; a save that died leaves them behind
_CRASH_EXIT = 137  # what a kill -9 looks like to a shell


def temporary_name(final: Path) -> Path:
    """Where `final` is written before `commit` renames it (the suffix kept: Keras needs it)."""
    return final.with_name(f"{TEMPORARY}{os.getpid()}.{final.name}")


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to a temporary file, fsync it and rename it over `path`."""
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file, fsync it and rename it over `path`."""
    tmp = temporary_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        commit(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def fsync(file: Path) -> None:
    """Flush a written file's data to the disk."""
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def commit(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it into place, fsync the folder."""
    fsync(tmp)
    os.replace(tmp, final)
    folder = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or copy it (and fsync) where links are not supported."""
    try:
        os.link(source, target)
    except OSError:  # FAT, some network file systems: no hard links
        shutil.copyfile(source, target)
        fsync(target)


def unlink(file: Path) -> None:
    """Remove a file if it is there, ignoring failures: loading goes by the hashes in
    config.json (or state.json), so a file left over is harmless."""
    try:
        file.unlink()
    except OSError:
        pass


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of saves that died (kill -9) are garbage: one writer per folder."""
    for stale in folder.glob(TEMPORARY + "*"):
        unlink(stale)


def fault_point(point: str) -> None:
    """Crash (TEXTGEN_CRASH_AT) or fail with ENOSPC (TEXTGEN_FAIL_AT) here, for tests.

    The value is POINT or POINT:N: the N-th time this point is reached while the
    variable holds that value. Hand-written because no library injects faults between
    two renames of our own.
    """
    for variable in ("TEXTGEN_CRASH_AT", "TEXTGEN_FAIL_AT"):
        value = os.environ.get(variable, "")
        wanted, _, nth = value.partition(":")
        if wanted != point:
            continue
        _hits[(variable, value)] = _hits.get((variable, value), 0) + 1
        if _hits[(variable, value)] == int(nth or 1):
            if variable == "TEXTGEN_CRASH_AT":
                os._exit(_CRASH_EXIT)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_hits: dict[tuple[str, str], int] = {}
