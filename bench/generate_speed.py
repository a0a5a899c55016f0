"""How fast does textgen generate, against the usual ways of sampling from an LSTM?

Trains nothing: builds a 2x256 char model with random weights (or loads --bundle) and
measures, in one run and on the same weights:

  (a)  naive: the whole 100-token window re-fed through the model for every new token;
  (a') the TensorFlow text-generation tutorial's way: a one-step tf.function carrying
       the LSTM states, called from Python once per token (batch 1 and batch 32);
  (b)  textgen, one sample;   (c) textgen, a batch of 32;
  first-token latency: a fresh process loads the bundle, then times its first
       `stream()` call up to the first generated token (warm-up included);
  and where a step of (b) goes: the LSTM step's matrix products alone, the whole step,
  the sampling.

Each rate is the best of --repeats timed runs (the machine may be shared; the best run
is the least disturbed). Run by hand:

    python bench/generate_speed.py              # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

WINDOW = 100


def build_bundle(folder: Path) -> Path:
    """A 2x256 char model with random weights over a 65-character vocabulary, saved as a bundle."""
    import keras

    from textgen.bundle import save_bundle
    from textgen.config import Config, ModelConfig, TokenizerConfig
    from textgen.model import build_model
    from textgen.tokenizer import build_tokenizer

    tokenizer = build_tokenizer([string.ascii_letters + string.digits + " \n."], "char")  # 65 + [UNK]
    config = Config(tokenizer=TokenizerConfig(level="char"),
                    model=ModelConfig(vocab_size=tokenizer.get_vocab_size(), layers=2, units=256)).validate()
    keras.utils.set_random_seed(0)
    return save_bundle(folder / "bench", build_model(config.model), tokenizer, config, {})


def best_rates(runs: dict[str, tuple], repeats: int) -> dict[str, tuple[float, float]]:
    """(tokens per wall second, tokens per CPU second) of each run's fastest call.

    Rounds interleave the runs, so a busy moment on a shared machine hits every method
    alike. CPU seconds (all of the process's threads) are reported too: on a machine
    shared with other jobs they move far less than wall time does.
    """
    wall = {name: float("inf") for name in runs}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, (run, _tokens) in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return {name: (runs[name][1] / wall[name], runs[name][1] / cpu[name]) for name in runs}


def naive(generator, tokens: int):
    """(a) Re-feed the last WINDOW tokens through the training model for every new token."""
    import tensorflow as tf

    model = generator.model

    @tf.function(input_signature=[tf.TensorSpec([1, WINDOW], tf.int32)])
    def next_token(window):
        logits = model(window, training=False)[:, -1, :]  # (1, vocab)
        return tf.random.categorical(logits, 1, dtype=tf.int32)[:, 0]

    def run():
        window = tf.zeros([1, WINDOW], tf.int32)
        for _ in range(tokens):
            token = next_token(window)
            window = tf.concat([window[:, 1:], token[:, None]], axis=1)

    run()  # trace once
    return run


def tutorial_one_step(generator, tokens: int, batch: int):
    """(a') The TF tutorial's OneStep: a tf.function over the stateful model, one call per token."""
    import tensorflow as tf

    from textgen.model import build_stateful_model, copy_weights

    cfg = generator.config.model
    stateful = build_stateful_model(cfg)
    copy_weights(generator.model, stateful)
    spec = [tf.TensorSpec([batch, 1], tf.int32)] + [tf.TensorSpec([batch, cfg.units], tf.float32)] * (2 * cfg.layers)

    @tf.function(input_signature=spec)
    def one_step(ids, *states):
        logits, *states = stateful([ids, *states], training=False)
        next_ids = tf.random.categorical(logits[:, -1, :], 1, dtype=tf.int32)  # (batch, 1)
        return next_ids, states

    def run():
        ids = tf.zeros([batch, 1], tf.int32)
        states = [tf.zeros([batch, cfg.units])] * (2 * cfg.layers)
        for _ in range(tokens):
            ids, states = one_step(ids, *states)

    run()  # trace once
    return run


def first_token_latency(bundle: Path) -> tuple[float, float]:
    """Load time and first-token time, measured in a fresh process (nothing warm)."""
    code = (
        "import time, textgen\n"
        f"t0 = time.perf_counter(); g = textgen.load({str(bundle)!r}); t1 = time.perf_counter()\n"
        "next(g.stream(prime='', length=10, seed=0)); t2 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    load, first = map(float, out.stdout.split()[-2:])
    return load, first


def step_breakdown(generator, repeats: int = 2000) -> dict[str, float]:
    """Microseconds per batch-1 step: matrix products alone, the whole LSTM step, the sampling."""
    from textgen import sampler

    st = generator._stepper
    states = st.zero_states(1)
    limit = st.decode_threads()
    limit.__enter__()  # as inside generation (batch 1: single-threaded)
    token = np.zeros(1, np.int32)
    h = states[0]

    def matmuls():  # the step's arithmetic without the gates: h @ R0, x @ K1, h @ R1, h @ dense
        return h @ st.recurrent[0], h @ st.kernels[1], h @ st.recurrent[1], h @ st.dense_kernel

    logits, _ = st.step(token, states)
    streams = sampler.Streams(0, 1)
    timings = {}
    for name, fn in [("matmuls", matmuls), ("lstm_step", lambda: st.step(token, states)),
                     ("sampling", lambda: sampler.sample(logits, streams.uniform(), 1.0))]:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats // 5):
                fn()
            best = min(best, (time.perf_counter() - start) / (repeats // 5))
        timings[name] = best * 1e6
    limit.__exit__(None, None, None)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="measure this bundle instead of a random 2x256 char model")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default: %(default)s)")
    args = parser.parse_args()

    import textgen

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else build_bundle(Path(tmp))
        load_s, first_s = first_token_latency(bundle)
        generator = textgen.load(bundle)
        n, r = args.tokens, args.repeats
        rates = best_rates({
            "(a)  naive 100-token window, batch 1": (naive(generator, 20), 20),
            "(a') TF tutorial one-step, batch 1": (tutorial_one_step(generator, n, 1), n),
            "(a') TF tutorial one-step, batch 32": (tutorial_one_step(generator, n // 4, 32), 32 * (n // 4)),
            "(b)  textgen, 1 sample": (lambda: generator.generate(length=n, seed=0), n),
            "(c)  textgen, batch of 32": (lambda: generator.sample(num_samples=32, length=n // 4, seed=0),
                                          32 * (n // 4)),
        }, args.repeats)
        steps = step_breakdown(generator)
    from machine import describe, machine_record  # bench/machine.py (bench/ is this script's folder)

    print(describe(machine_record()))
    print(f"model: {generator.config.model.layers}x{generator.config.model.units} LSTM, "
          f"vocabulary {generator.config.model.vocab_size}; {os.cpu_count()} CPUs; "
          f"best of {r} interleaved runs")
    print(f"{'':40s} {'tokens/s':>10s} {'tokens/CPU-s':>13s}")
    for name, (wall, cpu) in rates.items():
        print(f"{name:40s} {wall:10,.0f} {cpu:13,.0f}")
    for ours, theirs, label, target in [("(b)  textgen, 1 sample", "(a') TF tutorial one-step, batch 1",
                                         "(b) / (a') batch 1: ", 4),
                                        ("(c)  textgen, batch of 32", "(a') TF tutorial one-step, batch 32",
                                         "(c) / (a') batch 32:", 3)]:
        wall, cpu = (rates[ours][i] / rates[theirs][i] for i in (0, 1))
        print(f"{label}  {wall:5.1f}x wall, {cpu:5.1f}x CPU   (target >= {target}x)")
    print(f"first token: {first_s * 1000:.0f} ms after the first stream() call (target < 1000 ms); "
          f"loading the bundle took {load_s * 1000:.0f} ms")
    print("batch-1 step, microseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()))


if __name__ == "__main__":
    main()
