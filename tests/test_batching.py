"""The batching scheduler: requests share model steps, each keeps its own controls and text."""

import threading

import pytest

from textgen.batching import Job, QueueFull, RequestTimeout, Scheduler
from textgen.controls import Controls


class Collected:
    """A job's emitted pieces per sample, and how it ended."""

    def __init__(self, num_samples):
        self.parts = [[] for _ in range(num_samples)]
        self.end = None
        self.done = threading.Event()
        self.started = threading.Event()  # the prime came back: the job is in the batch

    def emit(self, item):
        self.started.set()
        if isinstance(item, list):
            for i, piece in item:
                self.parts[i].append(piece)
        else:
            self.end = item
            self.done.set()

    @property
    def texts(self):
        return ["".join(p) for p in self.parts]


def submit(scheduler, generator, prime, num_samples=1, deadline=float("inf"), **controls):
    out = Collected(num_samples)
    out.job = Job(generator.encode_prime(prime), prime, num_samples, Controls.of(**controls), out.emit, deadline)
    scheduler.submit(out.job)
    return out


@pytest.fixture
def counted_steps(tiny_generator, monkeypatch):
    """Count the model steps taken (the real stepper does the work)."""
    calls = []
    step = tiny_generator.step

    def counting(tokens, states):
        calls.append(len(tokens))
        return step(tokens, states)

    monkeypatch.setattr(tiny_generator, "step", counting)
    return calls


def test_eight_requests_share_decode_steps_and_each_gets_its_own_text(tiny_generator, counted_steps):
    scheduler = Scheduler(tiny_generator)
    requests = [("The", dict(seed=i, temperature=0.5 + i / 10, top_k=i or None)) for i in range(8)]
    try:
        outs = [submit(scheduler, tiny_generator, prime, length=20, **c) for prime, c in requests]
        assert all(out.done.wait(60) for out in outs)
    finally:
        scheduler.close()
    assert len(counted_steps) <= 20 + len(requests)  # taking turns would be 8 * 19 steps
    assert max(counted_steps) > 1  # rows of several requests in one step
    for out, (prime, c) in zip(outs, requests):
        assert out.end is None and out.texts == [tiny_generator.generate(prime, length=20, **c)]


def test_requests_join_and_leave_between_steps(tiny_generator, counted_steps):
    scheduler = Scheduler(tiny_generator, max_rows=4)
    try:
        long = submit(scheduler, tiny_generator, "A", 2, length=60, seed=1)
        short = [submit(scheduler, tiny_generator, "The cat", 1, length=n, seed=n) for n in (3, 9, 27)]
        assert all(out.done.wait(60) for out in [long, *short])
    finally:
        scheduler.close()
    steps = list(counted_steps)  # before the library calls below add theirs
    assert max(steps) <= 4 and len(steps) < 59 + 2 + 8 + 26  # never past max_rows; shared
    assert long.texts == tiny_generator.sample("A", num_samples=2, length=60, seed=1)
    assert [out.texts[0] for out in short] == [tiny_generator.generate("The cat", length=n, seed=n)
                                              for n in (3, 9, 27)]


def test_a_full_queue_refuses_and_an_overdue_or_cancelled_job_ends(tiny_generator):
    scheduler = Scheduler(tiny_generator, max_rows=1, max_queue=1)
    try:
        busy = submit(scheduler, tiny_generator, "The", length=2000)  # takes the one row
        assert busy.started.wait(30)
        waiting = submit(scheduler, tiny_generator, "The", length=5, deadline=0)  # overdue at once
        with pytest.raises(QueueFull):
            for _ in range(3):  # the queue holds one; the waiting job may already be gone
                submit(scheduler, tiny_generator, "The", length=5)
        assert waiting.done.wait(30) and isinstance(waiting.end, RequestTimeout)
        busy.job.cancel()
        assert busy.done.wait(30) and busy.end is None and len(busy.texts[0]) < 2000
    finally:
        scheduler.close()
