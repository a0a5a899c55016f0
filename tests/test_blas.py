"""BLAS threads for decoding: one, or the cores other processes leave free for big batches."""

import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from textgen import blas
from textgen.blas import PARALLEL_MIN_BATCH, DecodeThreads, OthersLoad, choose_threads, machine_busy_seconds


@pytest.mark.parametrize("batch,others,cores,want", [
    (PARALLEL_MIN_BATCH - 1, 0.0, 2, 1),  # small batches: a second thread was slower
    (PARALLEL_MIN_BATCH, 0.0, 2, 2),  # idle machine: every core
    (PARALLEL_MIN_BATCH, 0.49, 2, 2),
    (PARALLEL_MIN_BATCH, 0.51, 2, 1),  # another process wants a core: stay single
    (PARALLEL_MIN_BATCH, 1.8, 2, 1),
    (PARALLEL_MIN_BATCH, 2.0, 16, 14),  # the free cores of a big machine
    (PARALLEL_MIN_BATCH, None, 2, 1),  # load unknown (no /proc/stat): as before
    (512, 0.0, 1, 1),
])
def test_threads_are_the_free_cores_for_big_batches_only(batch, others, cores, want):
    assert choose_threads(batch, others, cores) == want


def test_busy_seconds_count_all_but_idle_iowait_and_guest():
    # user nice system idle iowait irq softirq steal guest guest_nice (ticks)
    text = "cpu  100 20 30 1000 50 5 5 10 40 4\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert machine_busy_seconds(text, 100) == pytest.approx((100 + 20 + 30 + 5 + 5 + 10) / 100)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_others_load_sees_a_process_that_burns_a_core():
    load = OthersLoad()
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(1.0)
        seen = load.since_last()
    finally:
        burner.wait()
    assert seen is not None and seen >= 0.5


def blas_threads() -> int:
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


def test_decode_threads_start_single_and_give_back_the_old_limit(monkeypatch):
    monkeypatch.setattr(blas, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(blas, "FIRST_LOOK_SECONDS", 0.0)
    with threadpool_limits(limits=3, user_api="blas"):  # 3: more than pace ever gives here
        with DecodeThreads() as threads:
            assert blas_threads() == 1 and threads.threads == 1
            for _ in range(3):
                threads.pace(1)  # a batch of one never widens
                np.ones((4, 4)) @ np.ones((4, 4))
            assert blas_threads() == 1
            threads.pace(PARALLEL_MIN_BATCH)
            assert blas_threads() == threads.threads <= blas.usable_cores()
        assert blas_threads() == 3


@pytest.mark.parametrize("age,want", [
    (None, blas.FIRST_LOOK_SECONDS),  # no look yet: measure from the loop's start
    (0.0, blas.FIRST_LOOK_SECONDS),  # a look just now: wait for a measurable interval
    (blas.FIRST_LOOK_SECONDS / 2, blas.FIRST_LOOK_SECONDS / 2),
    (1.0, 0.0),  # a recent look: look at once, over the time since it
    (blas.STALE_SECONDS + 0.1, blas.FIRST_LOOK_SECONDS),  # too old to say anything about now
])
def test_first_look_waits_only_for_a_measurable_recent_interval(age, want):
    assert blas.first_look_delay(age) == pytest.approx(want)


@pytest.mark.skipif(blas.usable_cores() < 2 or not sys.platform.startswith("linux"),
                    reason="looks need two cores and /proc/stat")
def test_a_loop_soon_after_another_looks_at_its_first_step():
    with DecodeThreads() as first:
        time.sleep(blas.FIRST_LOOK_SECONDS * 1.5)
        first.pace(PARALLEL_MIN_BATCH)
        assert first.looks == 1
    time.sleep(blas.FIRST_LOOK_SECONDS * 1.5)
    with DecodeThreads() as second:
        second.pace(PARALLEL_MIN_BATCH)  # no wait: the last look is old enough to measure from
        assert second.looks == 1
