"""One run per `checkpoints/NAME` at a time: an OS file lock held for the life of a run.

Two runs of one name would interleave their saves (each deletes the other's temporaries,
both write one `resume/.resume-new`). The lock is `flock` on `NAME/.lock`, which holds the
owner's pid for the refusal message. The kernel drops the lock when its process ends,
however it ends, so a `kill -9` leaves no stale lock; the file itself stays (deleting it
would let a third run lock a fresh file while the second still holds the old one).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from textgen.config import TextgenError

LOCK_FILE = ".lock"


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold the lock on `folder` (created if needed) inside the `with`; refuse a folder in use."""
    try:
        import fcntl
    except ImportError:  # not POSIX: run unlocked
        yield
        return
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # folders this run creates
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise TextgenError(f"{folder}: cannot write there ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TextgenError(f"{folder} is in use by another run ({_owner(fd)}); wait for it to end "
                               f"or choose another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield
        except BaseException:
            _remove_if_unused(folder, made)
            raise
    finally:
        os.close(fd)  # releases the lock


def _remove_if_unused(folder: Path, made: list[Path]) -> None:
    """A run that failed before writing anything (bad corpus, bad option) leaves no folder behind:
    remove the lock file and the folders this run created, if nothing else is in them."""
    if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
        (folder / LOCK_FILE).unlink()
        for path in made:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: something else lives there
                break


def _owner(fd: int) -> str:
    """"pid N" of the lock's holder, as it wrote it."""
    pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
