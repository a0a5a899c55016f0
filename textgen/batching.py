"""Continuous batching: every generation under way advances by one token per model step.

One thread owns the model. Between two steps it lets waiting jobs join (their prime read,
their rows stacked onto the batch) and lets finished, abandoned or overdue ones leave
(their rows sliced out), so requests that arrive together share every step: one step over
8 rows costs far less than 8 steps of one. Each job keeps its own controls, stop rules and
random streams (`textgen.generate.Decoding`), so a seeded request gives the same text
alone or amid others.

A job's text goes to its `emit` callback from the scheduler thread, which must not block
(the server hands it to its event loop). States are opaque to this module: a list of
arrays with the batch on axis 0, whatever the model's cells keep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from textgen.controls import Controls
from textgen.generate import Decoding, TextGenerator
from textgen.tokenizer import is_panic

MAX_ROWS = 32  # samples stepped together; a step costs little more at 32 rows than at 1
QUEUE_PER_BATCH = 2  # default queue bound: this many batches' worth of waiting jobs


class QueueFull(Exception):
    """The scheduler's queue is at its bound (or it is shutting down): try again later."""


class RequestTimeout(Exception):
    """A job outlived its deadline, waiting or generating."""


@dataclass(eq=False)
class Job:
    """One generation: prime ids (time,), samples and controls, and where its text goes.

    `emit` receives, from the scheduler thread, a list of (sample index, text) pairs per
    step (the prime first), then None at the end, or the exception that ended the job.
    """

    ids: np.ndarray
    prime: str
    num_samples: int
    controls: Controls
    emit: Callable[[object], None]
    deadline: float = float("inf")  # time.monotonic() by which the job must be done
    cancelled: bool = field(default=False, init=False)  # set from any thread; seen before the next step

    def cancel(self) -> None:
        """Stop this job before the scheduler's next step (the client has gone)."""
        self.cancelled = True

    def overdue(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass(eq=False)
class _Slot:
    """An active job: its decoding and the logits (rows, vocab) its next tokens come from."""

    job: Job
    decoding: Decoding
    logits: np.ndarray

    @property
    def rows(self) -> int:
        return self.job.num_samples


class Scheduler:
    """Run jobs on one generator, batched step by step, in a thread of its own.

    Args:
        generator: the loaded model.
        max_rows: samples advanced per step at most; later jobs wait their turn.
        max_queue: jobs waiting at most; `submit` refuses more (QueueFull).
    """

    def __init__(self, generator: TextGenerator, max_rows: int = MAX_ROWS, max_queue: int | None = None):
        self.generator = generator
        self.max_rows = max_rows
        self.max_queue = QUEUE_PER_BATCH * max_rows if max_queue is None else max_queue
        self.steps = 0  # batched model steps taken
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._slots: list[_Slot] = []
        self._states: list[np.ndarray] = []  # each (rows of all slots, ...), slots in order
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="textgen-batch", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFull when `max_queue` jobs already wait."""
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy ({len(self._waiting)} requests waiting)")
            self._waiting.append(job)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """End every job (waiting or active) with QueueFull and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        # BLAS threads for the thread's life, paced by the batch (see textgen.blas).
        with self.generator.decode_threads() as self._threads:
            while (joining := self._next_jobs()) is not None:
                for job in joining:
                    self._join(job)
                if self._slots:
                    self._step()

    def _next_jobs(self) -> list[Job] | None:
        """Jobs that fit in the batch now (waiting while idle); None once closing."""
        with self._cond:
            while not (self._closing or self._waiting or self._slots):
                self._cond.wait()
            if self._closing:
                for job in [*self._waiting, *(slot.job for slot in self._slots)]:
                    job.emit(QueueFull("the server is shutting down"))
                self._waiting.clear()
                self._slots = []
                return None
            for job in [j for j in self._waiting if j.cancelled or j.overdue()]:
                self._waiting.remove(job)
                job.emit(None if job.cancelled else RequestTimeout("the request took too long"))
            rows = sum(slot.rows for slot in self._slots)
            joining = []
            while self._waiting and (rows == 0 or rows + self._waiting[0].num_samples <= self.max_rows):
                joining.append(self._waiting.popleft())
                rows += joining[-1].num_samples
            return joining

    def _join(self, job: Job) -> None:
        """Read a job's prime and stack its rows onto the batch."""
        try:
            decoding = Decoding(self.generator, job.ids, job.num_samples, job.controls)
            logits, states = self.generator.read_prime(job.ids, job.num_samples)  # (n, vocab)
        except BaseException as err:
            self._fail(job, err)
            return
        if job.prime:
            job.emit([(i, job.prime) for i in range(job.num_samples)])
        self._slots.append(_Slot(job, decoding, logits))
        self._states = [np.concatenate([a, b]) for a, b in zip(self._states, states)] if self._states else states

    def _step(self) -> None:
        """Every active job chooses its next tokens; those that ended leave; one model step."""
        tokens = [self._advance(slot) for slot in self._slots]  # (rows,) each, None: the job left
        if any(t is None for t in tokens):
            keep = np.concatenate([np.full(s.rows, t is not None) for s, t in zip(self._slots, tokens)])
            self._slots = [s for s, t in zip(self._slots, tokens) if t is not None]
            self._states = [state[keep] for state in self._states] if self._slots else []
        if not self._slots:
            return
        try:
            rows = np.concatenate([t for t in tokens if t is not None])
            self._threads.pace(len(rows))
            logits, self._states = self.generator.step(rows, self._states)  # (rows, vocab)
        except BaseException as err:  # a bug in the model step: every active job ends with it
            for slot in self._slots:
                self._fail(slot.job, err)
            self._slots, self._states = [], []
            return
        self.steps += 1
        start = 0
        for slot in self._slots:
            slot.logits = logits[start : start + slot.rows]
            start += slot.rows

    def _advance(self, slot: _Slot) -> np.ndarray | None:
        """A job's next tokens (rows,) and their text sent on; None when the job ends here."""
        job = slot.job
        if job.cancelled or job.overdue():
            job.emit(None if job.cancelled else RequestTimeout("the request took too long"))
            return None
        try:
            tokens = slot.decoding.choose(slot.logits)
            pieces = slot.decoding.pieces(tokens)
            finished = slot.decoding.finished
            if finished:
                pieces = [a + b for a, b in zip(pieces, slot.decoding.flush())]
        except BaseException as err:  # e.g. a tokenizer panic while decoding
            self._fail(job, err)
            return None
        pairs = [(i, piece) for i, piece in enumerate(pieces) if piece]
        if pairs:
            job.emit(pairs)
        if finished:
            job.emit(None)
            return None
        return tokens

    @staticmethod
    def _fail(job: Job, err: BaseException) -> None:
        """End a job with its error; only Exceptions and tokenizer panics are a job's to keep."""
        if not isinstance(err, Exception) and not is_panic(err):
            raise err
        job.emit(err)
