#!/usr/bin/env python
"""Quality per CPU-minute: validation nats/char of textgen's defaults and two anchors.

    python bench/quality.py                          # budgets 1 3 5 10 15 minutes, all systems
    python bench/quality.py --minutes 5 --systems textgen,pytorch --textgen-args "--units 512 --layers 1"

On tiny-shakespeare with nanoGPT's split (first 90 %: 1,003,854 characters train, last
111,540 validation) every system trains for the same wall budget, one after another (never
concurrently, so none shares the cores), each in a fresh process:

- textgen: a real `python train.py train.txt --val-file val.txt --max-minutes M` run, its
  bundle scored with `textgen evaluate BUNDLE val.txt --json` (the whole validation text
  streamed with carried state). Extra train flags come from --textgen-args.
- keras-classic: the classic Keras example's recipe, re-implemented here: 40-character
  window -> the next character, one-hot input, LSTM(128), Dense softmax, RMSprop 0.01,
  batch 128, windows every 3 characters, constant rate; scored on every validation position
  from the 40 characters before it (all it can see).
- pytorch: the hand-tuned PyTorch script, re-implemented here: embedding 64, 1x512
  nn.LSTM, batch 32 x 64 over 32 contiguous streams with the state carried (and detached)
  across batches, Adam 4e-3 with a cosine to 0.1x over the wall budget, clip 1.0, no
  dropout; scored on the whole validation text streamed with carried state (batch 1).

Each budget is its own run (the schedules span the budget). The table is printed and
written to bench/results/quality-<timestamp>.json (rewritten after every run, so an
interrupted benchmark keeps what it measured) with the machine (bench/machine.py: CPU model
and flags, cores, load, library versions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by path (tests)
from machine import load_average, machine_record  # noqa: E402  (bench/machine.py)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
RESULTS = REPO / "bench" / "results"
SYSTEMS = ("textgen", "keras-classic", "pytorch")
TRAIN_FRACTION = 0.9  # nanoGPT's split: int(0.9 * n) -> 1,003,854 / 111,540 on tiny-shakespeare
LN2 = math.log(2)

# The anchors' fixed recipes (see the module docstring).
CLASSIC = dict(window=40, step=3, units=128, learning_rate=0.01, batch=128)
TORCH = dict(embedding=64, units=512, batch=32, seq_len=64, learning_rate=4e-3, final=0.1, clip=1.0)
EVAL_CHUNK = 1024  # tokens per forward call when streaming validation text with carried state


class BenchError(Exception):
    """Bad input: printed as one line, exit 2."""


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden `_anchor` command, one anchor in this process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_anchor"]:
        return _anchor_main(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # reading event files may import TensorFlow
    try:
        args = _parse(argv)
        return run_benchmark(args)
    except BenchError as err:
        print(f"quality: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nquality: interrupted (results so far are in bench/results/)", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (BenchError), not usage text plus error."""

    def error(self, message: str):
        raise BenchError(message)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="bench/quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", default="1 3 5 10 15",
                   help="wall budgets, one run per system each (default: %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated (default: %(default)s)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="text file (default: ../shared/corpora/tinyshakespeare.txt)")
    p.add_argument("--textgen-args", default="", help='extra `python train.py` flags, e.g. "--units 512" '
                                                        '(one flag alone: --textgen-args=--mixed-precision)')
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every system (default: each framework's own choice)")
    p.add_argument("--seed", type=int, default=0, help="seed for every system (default: %(default)s)")
    p.add_argument("--workdir", default=None,
                   help="keep data, bundles, logs and per-run output here (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    args.minutes = _budgets(args.minutes)
    args.systems = _systems(args.systems)
    args.textgen_args = shlex.split(args.textgen_args)
    if args.threads is not None and args.threads < 1:
        raise BenchError("--threads must be at least 1")
    return args


def _budgets(text: str) -> list[float]:
    try:
        minutes = [float(m) for m in text.replace(",", " ").split()]
    except ValueError:
        raise BenchError(f"--minutes takes numbers, not {text!r}") from None
    if not minutes or not all(m > 0 and math.isfinite(m) for m in minutes):
        raise BenchError(f"--minutes needs positive budgets, not {text!r}")
    return minutes


def _systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        raise BenchError(f"--systems: unknown {unknown or text!r}; choose from {', '.join(SYSTEMS)}")
    return names


def run_benchmark(args: argparse.Namespace) -> int:
    """Split the corpus, run every (budget, system) in turn, print and save the table."""
    if "pytorch" in args.systems:
        _require_torch()
    with tempfile.TemporaryDirectory(prefix="textgen-quality-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        train_file, val_file, split = split_corpus(Path(args.corpus), work)
        report = _new_report(args, split)
        out = RESULTS / f"quality-{report['started'].replace(':', '').replace('-', '')[:15]}.json"
        failures = 0
        for minutes in args.minutes:
            for system in args.systems:
                print(f"== {system}, {minutes:g} min ...", flush=True)
                # Other processes' load skews every number here; record it to judge a run by.
                load = {"load_avg_before": _load_average()}
                try:
                    row = RUNNERS[system](minutes, train_file, val_file, work, args)
                except BenchError as err:  # one run failing keeps the others' results
                    row, failures = {"error": str(err)}, failures + 1
                load["load_avg_after"] = _load_average()
                report["runs"].append({"system": system, "minutes": minutes, **row, **load})
                print("   " + _row_line(report["runs"][-1]), flush=True)
                _write_json(out, report)
        print()
        print(format_table(report["runs"]))
        print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if failures else 0


def _require_torch() -> None:
    try:
        import torch  # noqa: F401  (only checks the bench extra is installed)
    except ImportError:
        raise BenchError("the pytorch anchor needs torch: pip install -e '.[bench]' (or leave it out of --systems)") from None


def split_corpus(corpus: Path, work: Path) -> tuple[Path, Path, dict]:
    """Write nanoGPT's split of `corpus` as work/train.txt and work/val.txt."""
    try:
        text = corpus.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"{corpus}: cannot read ({err})") from None
    cut = int(len(text) * TRAIN_FRACTION)
    if cut < 1000 or len(text) - cut < 100:
        raise BenchError(f"{corpus}: too short for a benchmark ({len(text):,} characters)")
    train_file, val_file = work / "train.txt", work / "val.txt"
    # newline="" keeps the text byte-for-byte (no CRLF translation on any platform).
    train_file.write_text(text[:cut], encoding="utf-8", newline="")
    val_file.write_text(text[cut:], encoding="utf-8", newline="")
    return train_file, val_file, {"corpus": str(corpus), "train_chars": cut, "val_chars": len(text) - cut}


# ----------------------------------------------------------------------------- textgen


def run_textgen(minutes: float, train_file: Path, val_file: Path, work: Path, args) -> dict:
    """A real `python train.py` run for `minutes`, then `textgen evaluate` on val.txt."""
    name = f"textgen-{minutes:g}min"
    ckpt, logs = work / "checkpoints", work / "runs"
    cmd = [sys.executable, str(REPO / "train.py"), str(train_file), "--val-file", str(val_file),
           "--max-minutes", f"{minutes:g}", "--name", name, "--checkpoint-dir", str(ckpt),
           "--log-dir", str(logs), "--seed", str(args.seed), "--overwrite", *args.textgen_args]
    started = time.perf_counter()
    _run(cmd, work / f"{name}.log", args.threads)
    wall = time.perf_counter() - started
    bundle = ckpt / name
    score = json.loads(_run([sys.executable, "-m", "textgen", "evaluate", str(bundle), str(val_file), "--json"],
                            work / f"{name}.evaluate.log", args.threads).strip().splitlines()[-1])
    document = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    final = json.loads((bundle / "resume" / "state.json").read_text(encoding="utf-8"))["state"]
    train_cfg = document["config"]["train"]
    return {
        "val_nats_per_char": score["bits_per_char"] * LN2,
        "updates": final["step"],
        "tokens_per_s": _last_scalar(logs / name / "train", "tokens_per_second"),
        "best_step": document["state"].get("step"),
        "batch": train_cfg["batch_size"], "seq_len": train_cfg["seq_len"],
        "model": {k: document["config"]["model"][k] for k in ("layers", "units", "embedding_dim", "dropout")},
        "process_wall_s": round(wall, 1),
        "command": shlex.join(["python", "train.py", "train.txt", "--val-file", "val.txt",
                               "--max-minutes", f"{minutes:g}", *args.textgen_args]),
    }


def _last_scalar(event_dir: Path, tag: str) -> float | None:
    """The last value of a tf.summary scalar in a TensorBoard log folder (training rate,
    validation excluded: textgen logs it per epoch from the epoch's first step)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(str(event_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    if tag not in acc.Tags().get("tensors", []):
        return None  # fewer steps than the logging interval
    return float(tensor_util.make_ndarray(acc.Tensors(tag)[-1].tensor_proto))


# ----------------------------------------------------------------------------- anchors (parent side)


def run_anchor(system: str):
    """A runner that trains and scores one anchor in a fresh process of this script."""

    def runner(minutes: float, train_file: Path, val_file: Path, work: Path, args) -> dict:
        result = work / f"{system}-{minutes:g}min.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_anchor", system, str(train_file), str(val_file),
               str(minutes), str(result), str(args.seed), str(args.threads or 0)]
        _run(cmd, work / f"{system}-{minutes:g}min.log", args.threads)
        return json.loads(result.read_text(encoding="utf-8"))

    return runner


RUNNERS = {"textgen": run_textgen, "keras-classic": run_anchor("keras-classic"), "pytorch": run_anchor("pytorch")}


def _run(cmd: list[str], log: Path, threads: int | None) -> str:
    """Run a command to completion, its output kept in `log`; return its stdout, or raise
    BenchError with the last lines of its stderr."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": _pythonpath()}
    if threads:
        # Thread pools are fixed when each framework starts, so they are set by environment.
        env |= {"TF_NUM_INTRAOP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, errors="replace")
    log.write_text(f"$ {shlex.join(cmd)}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}",
                   encoding="utf-8")
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-3:] if line.strip())
        raise BenchError(f"{Path(cmd[1]).name} exited {done.returncode}: {tail} (log: {log})")
    return done.stdout


def _pythonpath() -> str:
    # The checkout this script lives in comes first, so the textgen it measures is this one.
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


# ----------------------------------------------------------------------------- anchors (child side)


def _anchor_main(argv: list[str]) -> int:
    system, train_file, val_file, minutes, result, seed, threads = argv
    train_text = Path(train_file).read_text(encoding="utf-8")
    val_text = Path(val_file).read_text(encoding="utf-8")
    vocab = {ch: i for i, ch in enumerate(sorted(set(train_text + val_text)))}
    train_fn = {"keras-classic": train_keras_classic, "pytorch": train_pytorch}[system]
    row = train_fn(_ids(train_text, vocab), _ids(val_text, vocab), len(vocab), float(minutes) * 60, int(seed),
                   int(threads) or None)
    Path(result).write_text(json.dumps(row), encoding="utf-8")
    return 0


def _ids(text: str, vocab: dict[str, int]):
    import numpy as np

    return np.array([vocab[ch] for ch in text], dtype=np.int32)


def train_keras_classic(train_ids, val_ids, vocab: int, seconds: float, seed: int, threads: int | None) -> dict:
    """The classic Keras text-generation example's recipe for `seconds`, then its val nats/char."""
    import keras
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    keras.utils.set_random_seed(seed)
    w = CLASSIC["window"]
    windows = sliding_window_view(train_ids, w + 1)[:: CLASSIC["step"]]  # (n, window + 1), a view
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, -1])
    model = keras.Sequential([
        keras.Input((w,), dtype="int32"),
        # A frozen identity embedding is the example's one-hot input without materialising
        # a (windows, 40, vocab) array: (batch, window) -> (batch, window, vocab).
        keras.layers.Embedding(vocab, vocab, embeddings_initializer="identity", trainable=False),
        keras.layers.LSTM(CLASSIC["units"]),  # (batch, units): only the last step is used
        keras.layers.Dense(vocab),  # (batch, vocab) logits; the softmax is in the loss
    ])
    model.compile(optimizer=keras.optimizers.RMSprop(CLASSIC["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    clock = _make_time_limit()(seconds)
    model.fit(x, y, batch_size=CLASSIC["batch"], epochs=1_000_000, shuffle=True, callbacks=[clock], verbose=0)
    started = time.perf_counter()
    nats = _classic_val_nats(model, val_ids, w)
    return {
        "val_nats_per_char": nats,
        "updates": clock.updates,
        # Characters read per second (each window reads 40 and predicts one).
        "tokens_per_s": clock.updates * CLASSIC["batch"] * w / max(clock.elapsed, 1e-9),
        "scored": f"every validation position from the {w} characters before it ({len(val_ids) - w:,} predictions)",
        "eval_s": round(time.perf_counter() - started, 1),
        "recipe": CLASSIC,
    }


def _classic_val_nats(model, val_ids, w: int, batch: int = 4096) -> float:
    """Mean nats of val[i] given val[i-w:i], for every i >= w: all the model can see."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(val_ids, w + 1)  # (positions, w + 1), strided: no copy
    total = 0.0
    for start in range(0, len(windows), batch):
        chunk = np.ascontiguousarray(windows[start : start + batch])
        logits = np.asarray(model(chunk[:, :-1], training=False))  # (batch, vocab)
        total += _nll(logits, chunk[:, -1])
    return total / len(windows)


def _nll(logits, targets) -> float:
    """Total negative log-likelihood (nats) of targets under logits (rows, vocab)."""
    import numpy as np

    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].sum())


def _make_time_limit():
    """The time-limit callback class (defined on first use: the parent never imports Keras)."""
    import keras

    class KerasTimeLimit(keras.callbacks.Callback):
        """Stop model.fit once `seconds` have passed since its first batch; count updates."""

        def __init__(self, seconds: float):
            super().__init__()
            self.seconds, self.updates, self.start, self.elapsed = seconds, 0, None, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            if self.start is None:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.updates += 1
            self.elapsed = time.perf_counter() - self.start
            if self.elapsed >= self.seconds:
                self.model.stop_training = True

    return KerasTimeLimit


def train_pytorch(train_ids, val_ids, vocab: int, seconds: float, seed: int, threads: int | None) -> dict:
    """The hand-tuned PyTorch truncated-BPTT script for `seconds`, then its val nats/char."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = TORCH
    net = _torch_module()(vocab, cfg["embedding"], cfg["units"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["learning_rate"])
    ids = torch.from_numpy(train_ids.astype("int64"))
    stream_len = (len(ids) - 1) // cfg["batch"]
    steps_per_pass = stream_len // cfg["seq_len"]
    starts = torch.arange(cfg["batch"]) * stream_len  # (batch,): stream b begins at b * stream_len
    offsets = torch.arange(cfg["seq_len"] + 1)
    state, updates, start = None, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        t = updates % steps_per_pass
        if t == 0:
            state = None  # the streams start over: zero state
        rows = ids[starts[:, None] + t * cfg["seq_len"] + offsets]  # (batch, seq_len + 1)
        cosine = 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        for group in opt.param_groups:
            group["lr"] = cfg["learning_rate"] * (cfg["final"] + (1 - cfg["final"]) * cosine)
        logits, state = net(rows[:, :-1], state)  # (batch, seq_len, vocab)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["clip"])
        opt.step()
        state = tuple(s.detach() for s in state)  # truncated BPTT: carry the values, not the graph
        updates += 1
    train_s = time.perf_counter() - start
    started = time.perf_counter()
    nats = _torch_val_nats(net, val_ids)
    return {
        "val_nats_per_char": nats,
        "updates": updates,
        "tokens_per_s": updates * cfg["batch"] * cfg["seq_len"] / train_s,
        "scored": f"the whole validation text streamed with carried state ({len(val_ids) - 1:,} predictions)",
        "eval_s": round(time.perf_counter() - started, 1),
        "recipe": cfg,
        "torch_threads": torch.get_num_threads(),
    }


def _torch_val_nats(net, val_ids) -> float:
    """Mean nats of val[1:] streamed through the net in chunks, state carried, batch 1."""
    import torch

    ids = torch.from_numpy(val_ids.astype("int64"))[None, :]  # (1, n)
    total, state = 0.0, None
    net.eval()
    with torch.no_grad():
        for s in range(0, ids.shape[1] - 1, EVAL_CHUNK):
            x, y = ids[:, s : s + EVAL_CHUNK], ids[:, s + 1 : s + 1 + EVAL_CHUNK]
            logits, state = net(x[:, : y.shape[1]], state)  # (1, time, vocab)
            total += float(torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum"))
    return total / (ids.shape[1] - 1)


def _torch_module():
    """The PyTorch anchor's module class (defined on first use: torch is imported only here)."""
    import torch

    class TorchCharLSTM(torch.nn.Module):
        """Embedding -> one nn.LSTM layer -> linear logits."""

        def __init__(self, vocab: int, embedding: int, units: int):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, embedding)
            self.lstm = torch.nn.LSTM(embedding, units, batch_first=True)
            self.head = torch.nn.Linear(units, vocab)

        def forward(self, x, state=None):
            out, state = self.lstm(self.embed(x), state)  # (batch, time, units)
            return self.head(out), state  # (batch, time, vocab)

    return TorchCharLSTM


# ----------------------------------------------------------------------------- report


def _new_report(args: argparse.Namespace, split: dict) -> dict:
    return {
        "benchmark": "quality",
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_record(),
        "split": split,
        "options": {"minutes": args.minutes, "systems": args.systems, "textgen_args": args.textgen_args,
                    "threads": args.threads, "seed": args.seed},
        "command": shlex.join(["python", "bench/quality.py", *sys.argv[1:]]),
        "runs": [],
    }


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    load = load_average()
    return load[0] if load else None


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def _row_line(run: dict) -> str:
    if "error" in run:
        return f"{run['system']:<14} {run['minutes']:>6g}  failed: {run['error']}"
    rate = run.get("tokens_per_s")
    return (f"{run['system']:<14} {run['minutes']:>6g}  {run['val_nats_per_char']:>8.4f}  "
            f"{run['updates']:>8,}  {'-' if rate is None else f'{rate:,.0f}':>9}")


def format_table(runs: list[dict]) -> str:
    """system x budget -> val nats/char, updates, training tokens/s."""
    header = f"{'system':<14} {'min':>6}  {'val nats':>8}  {'updates':>8}  {'tokens/s':>9}"
    return "\n".join([header, "-" * len(header), *(_row_line(r) for r in runs)])


if __name__ == "__main__":
    sys.exit(main())
