"""How many BLAS threads NumPy decoding uses: one, or every free core for big batches.

A decode step is a few small matrix products (batch x units by units x 4*units). Measured on
a 2-core EPYC (OpenBLAS, units 256), a second BLAS thread made a batch-32 product 1.7x
faster on an idle machine, made batches of 16 and less 2-6x slower, and made any batch
10-30x slower when another process kept a core busy (OpenBLAS's workers spin while they
wait for a core). So a decode loop starts single-threaded and, every `RECHECK_SECONDS`, looks
at how much CPU *other* processes used since the last look (the machine's busy time from
/proc/stat minus this process's own): a batch of at least `PARALLEL_MIN_BATCH` gets the cores
nobody else is using. Looks are process-wide, so a loop that starts soon after another (a
server's requests, `sample` called in a loop) looks at its first step, over the time since the
last look; otherwise its first look comes `FIRST_LOOK_SECONDS` in. Where /proc/stat is missing
(not Linux), decoding stays single-threaded, as it always was.
"""

from __future__ import annotations

import functools
import os
import time

from threadpoolctl import ThreadpoolController

PARALLEL_MIN_BATCH = 32  # smaller batches were slower with a second thread
RECHECK_SECONDS = 0.5  # how often a decode loop looks at the machine's load
# The first look comes sooner: 32 samples of 200 characters take ~0.25 s in all. 50 ms is
# five of /proc/stat's 10 ms ticks per core, enough to tell an idle core from a busy one.
FIRST_LOOK_SECONDS = 0.05
# A look older than this says little about now, so a loop starting later measures afresh. Before
# looks were shared, each 32-sample call of ~85 ms ran its first 50 ms on one thread: 36,000
# against 44,000 tok/s with two threads from the first step (2x256, AVX-512 EPYC, 2026-12-08).
STALE_SECONDS = 2.0
_THREADPOOLS = ThreadpoolController()


def single_threaded():
    """Context manager: BLAS at one thread (for whole-sequence work such as reading a prime)."""
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(batch: int, others_busy: float | None, cores: int) -> int:
    """BLAS threads for a decode step: every core others leave free (rounded), if the batch is big.

    `others_busy`: cores' worth of CPU that other processes used lately; None if unknown.
    """
    if batch < PARALLEL_MIN_BATCH or others_busy is None:
        return 1
    return max(1, min(cores, int(cores - others_busy + 0.5)))


def is_stale(age: float | None) -> bool:
    """Whether a look of this age (None: none yet) is too old to continue from."""
    return age is None or age > STALE_SECONDS


def first_look_delay(age: float | None) -> float:
    """Seconds from a loop's start to its first look, given the age of the last look (None: none yet)."""
    if is_stale(age):
        return FIRST_LOOK_SECONDS  # measure afresh from the loop's start
    return max(0.0, FIRST_LOOK_SECONDS - age)


def machine_busy_seconds(stat_text: str, ticks_per_second: float) -> float:
    """CPU-seconds every core spent busy since boot, from /proc/stat's text (its `cpu` line)."""
    fields = [int(v) for v in stat_text.split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is already counted in user and nice
    return (sum(fields) - guest - idle) / ticks_per_second


class OthersLoad:
    """Cores' worth of CPU used by other processes between two calls of `since_last`."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                machine = machine_busy_seconds(f.read(), os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            return None
        own = os.times()
        return time.monotonic(), machine, own.user + own.system

    def age(self) -> float | None:
        """Seconds since the last reading; None if there is none (no /proc/stat)."""
        return None if self._last is None else time.monotonic() - self._last[0]

    def restart(self) -> None:
        """Start a new interval now."""
        self._last = self._read()

    def since_last(self) -> float | None:
        """Others' CPU use (in cores) since the last call or construction; None if unknown."""
        now = self._read()
        if now is None or self._last is None or now[0] <= self._last[0]:
            return None
        (t0, machine0, own0), self._last = self._last, now
        return max(0.0, ((now[1] - machine0) - (now[2] - own0)) / (now[0] - t0))


class DecodeThreads:
    """Context manager around a decode loop: BLAS single-threaded, widened by `pace` when it pays.

    Call `pace(batch)` before each step; it looks at the machine when `first_look_delay`
    says, then at most every RECHECK_SECONDS. On exit, BLAS gets back the thread count it
    had before. `threads` is the current count, `looks` how many looks this loop took.
    """

    def __init__(self):
        self.threads = 1
        self.looks = 0
        self._cores = usable_cores()

    def __enter__(self) -> "DecodeThreads":
        self._limiter = _THREADPOOLS.limit(limits=1, user_api="blas")
        self._load, age = None, None
        if self._cores > 1:
            self._load = _shared_load()
            age = self._load.age()
            if is_stale(age):
                self._load.restart()
        self._next_look = time.monotonic() + first_look_delay(age)
        return self

    def pace(self, batch: int) -> None:
        """Set BLAS's threads for a step of `batch` rows (a cheap no-op between looks)."""
        if self._load is None or time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + RECHECK_SECONDS
        self.looks += 1
        wanted = choose_threads(batch, self._load.since_last(), self._cores)
        if wanted != self.threads:
            _THREADPOOLS.limit(limits=wanted, user_api="blas")  # undone by __exit__
            self.threads = wanted

    def __exit__(self, *exc) -> None:
        self._limiter.restore_original_limits()


@functools.cache
def _shared_load() -> OthersLoad:
    """The process's one OthersLoad: every decode loop's looks continue the same intervals."""
    return OthersLoad()
