"""Interrupts: real training processes, signalled only after their first step."""

import json
import re
import signal

import pytest

from textgen.bundle import load_bundle
from tests.conftest import TINY, Child, make_text

TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tmp_path, sig, code):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    with Child("train", corpus, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "runs",
               "--max-steps", 100_000, *TINY_FLAGS) as child:
        child.wait_for_line("First step done")
        child.proc.send_signal(sig)
        returncode, _, err = child.finish()
    last = [line for line in re.split(r"[\r\n]", err) if line.strip()][-1]
    assert returncode == code, err[-2000:]
    name = signal.Signals(sig).name
    match = re.fullmatch(rf"textgen: stopped by {name} after step (\d+); bundle (\S+); "
                         rf"resume with: python train.py {corpus} --name c --resume .*", last)
    assert match, last
    bundle = load_bundle(match.group(2))  # the work is kept: validated after the last step
    assert bundle.state["step"] == int(match.group(1)) >= 1
    assert bundle.state["val_loss"] is not None


def test_a_signal_before_fit_stops_after_the_first_step(tmp_path, corpus_file):
    """In-process: SIGINT raised during set-up (before any step) still ends cleanly."""
    import os

    import textgen
    from textgen.callbacks import StopOnSignal
    from textgen.config import Interrupted

    original = StopOnSignal.__enter__

    def enter_then_signal(self):
        entered = original(self)
        os.kill(os.getpid(), signal.SIGINT)  # delivered to our handler, not as KeyboardInterrupt
        return entered

    StopOnSignal.__enter__ = enter_then_signal
    try:
        with pytest.raises(Interrupted, match="stopped by SIGINT after step 1;") as stop:
            textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                          max_steps=50, **TINY)
    finally:
        StopOnSignal.__enter__ = original
    assert stop.value.exit_code == 130
    state = json.loads((tmp_path / "ck" / "corpus" / "config.json").read_text())["state"]
    assert state["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
