"""Training throughput: textgen's Keras LSTM stack vs PyTorch nn.LSTM, on CPU.

Builds the same character model in both frameworks,

    Embedding(65 -> 128) -> N x LSTM(H, return_sequences) -> Dense(65) logits

trained with Adam on softmax cross-entropy, and times full training steps
(Keras' own train step via `train_on_batch`; forward/backward/step in
PyTorch) on one repeated synthetic batch. Frameworks alternate within one
process, round after round, so that noise from other work on the machine
hits them alike; we report medians.

Run by hand (needs `pip install torch==2.13.0`):

    python bench/train_speed.py --size both --layer both --rounds 3 --seconds 8

On a machine shared with other work, wall-clock ratios mostly measure the
other work (PyTorch's OpenMP threads suffer most from oversubscription);
`--threads 1 --clock cpu` compares per-core efficiency robustly instead.

`--train-py CORPUS` adds textgen's speed in real `python train.py` runs of each size
(steps reached between two `--max-minutes` budgets), against the same run's PyTorch.

`--bfloat16` adds the bfloat16 gears: PyTorch under `torch.autocast("cpu", torch.bfloat16)`
("torch-bf16"), FastLSTM with its products outside the time loops in bfloat16 ("fast-bf16",
what `--mixed-precision` gives on a CPU with amx_bf16 or avx512_bf16) and FastLSTM under Keras'
`mixed_bfloat16` policy ("fast-mixed", what it gave before). With `--train-py`, a second pair
of real runs with `--mixed-precision`.

Writes bench/results/train_speed-<size>[-jit][-bf16]-<UTC time>.json: one file per run, so the
results of earlier machines stay beside this one's.
"""

import argparse
import json
import os
import statistics
import sys
import time

# Must be set before TensorFlow is imported to silence its C++ logging.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZES = {"S": (2, 256), "M": (3, 512)}  # name -> (layers, units)
BATCH, SEQ_LEN, VOCAB, EMBED = 64, 128, 65, 128
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # import textgen from this checkout
import textgen  # noqa: E402,F401  before TensorFlow: its CPU allocator setting (textgen/__init__.py)

from machine import describe, machine_record  # noqa: E402  (bench/machine.py)


# ----------------------------------------------------------------------------
# Accounting


def train_flops_per_token(layers, units, embed=EMBED, vocab=VOCAB):
    """Matmul FLOPs per token for one training step (forward x 3)."""
    flops, width = 0, embed
    for _ in range(layers):
        flops += 2 * 4 * units * (width + units)  # x·W and h·U, four gates
        width = units
    flops += 2 * units * vocab  # output layer
    return 3 * flops


def matmul_peak_gflops(n=2048, repeats=5):
    """Best float32 n^3 matmul rate of NumPy, PyTorch and TensorFlow: our practical 'peak'.

    All three, because their BLAS differ by up to 2x on one CPU (on an AVX-512 EPYC:
    NumPy's OpenBLAS 245, PyTorch 210, TensorFlow's oneDNN 456 GFLOP/s).
    """
    import numpy as np
    import tensorflow as tf
    import torch

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fa, fb = tf.constant(a), tf.constant(b)
    tf_matmul = tf.function(tf.matmul, autograph=False)
    rates = []
    for run in (lambda: a @ b, lambda: ta @ tb, lambda: tf_matmul(fa, fb).numpy()):
        run()  # warm up the thread pool (and trace the tf.function)
        rates.append(2 * n**3 / min(_timed(run) for _ in range(repeats)) / 1e9)
    return max(rates)


CLOCK = time.perf_counter  # main() switches to process CPU time for --clock cpu


def _timed(fn):
    start = CLOCK()
    fn()
    return CLOCK() - start


# ----------------------------------------------------------------------------
# Models


def synthetic_batch():
    """A fixed random (inputs, next-char targets) batch of token ids."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ_LEN + 1))
    return tokens[:, :-1], tokens[:, 1:]


def keras_trainer(layers, units, layer_kind, jit):
    """Return a zero-argument function that runs one Keras train step.

    layer_kind: "keras" (keras.layers.LSTM), "fast" (FastLSTM), "fast-bf16" (FastLSTM's
    products outside the loops in bfloat16) or "fast-mixed" (FastLSTM, mixed_bfloat16 policy).
    """
    import keras
    import tensorflow as tf

    from textgen.fast_lstm import FastLSTM

    policy = "mixed_bfloat16" if layer_kind == "fast-mixed" else None
    lstm = {"keras": keras.layers.LSTM, "fast": FastLSTM, "fast-mixed": FastLSTM,
            "fast-bf16": lambda units, **kw: FastLSTM(units, matmul_dtype="bfloat16", **kw)}[layer_kind]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(batch_shape=(BATCH, SEQ_LEN), dtype="int32"), keras.layers.Embedding(VOCAB, EMBED, dtype=policy)]
        + [lstm(units, return_sequences=True, dtype=policy) for _ in range(layers)]
        + [keras.layers.Dense(VOCAB, dtype="float32")]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    x, y = (tf.constant(a, dtype=tf.int32) for a in synthetic_batch())
    return lambda: model.train_on_batch(x, y)


def torch_trainer(layers, units, bfloat16=False):
    """Return a zero-argument function that runs one PyTorch train step (under bfloat16 autocast if asked)."""
    import torch
    from torch import nn

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.lstm = nn.LSTM(EMBED, units, num_layers=layers, batch_first=True)
            self.head = nn.Linear(units, VOCAB)

        def forward(self, x):
            h, _ = self.lstm(self.embed(x))  # (batch, seq_len, units)
            return self.head(h)  # (batch, seq_len, vocab)

    torch.manual_seed(0)
    model = CharLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = (torch.as_tensor(a, dtype=torch.long) for a in synthetic_batch())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = loss_fn(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()

    return step


def train_py_steps(size, corpus, minutes, workdir, extra=()):
    """Optimizer steps a real `python train.py` run of this size (and `extra` flags) reaches in `minutes`."""
    import subprocess

    layers, units = SIZES[size]
    name = f"{size}-{minutes:g}{''.join(extra)}"
    cmd = [sys.executable, os.path.join(os.path.dirname(BENCH_DIR), "train.py"), corpus, "--max-minutes", f"{minutes:g}",
           "--layers", str(layers), "--units", str(units), "--embedding-dim", str(EMBED),
           "--batch-size", str(BATCH), "--seq-len", str(SEQ_LEN), "--name", name,
           "--checkpoint-dir", os.path.join(workdir, "ck"), "--log-dir", os.path.join(workdir, "runs"), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(workdir, "ck", name, "resume", "state.json")) as f:
        return json.load(f)["state"]["step"]


def train_py_tokens_per_second(size, corpus, budgets, extra=()):
    """textgen's training speed as users get it: a real `python train.py` (carried state,
    dropout, the tf.data pipeline, validation), as the steps reached between two
    `--max-minutes` budgets, so that start-up and exit cancel out."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        short, long = (train_py_steps(size, corpus, m, work, extra) for m in budgets)
    return (long - short) * BATCH * SEQ_LEN / ((budgets[1] - budgets[0]) * 60), (short, long)


# ----------------------------------------------------------------------------
# Timing


def tokens_per_second(step, seconds, min_steps=2):
    """Run `step` for about `seconds` (at least `min_steps` times); return tok/s."""
    steps, start = 0, CLOCK()
    while steps < min_steps or CLOCK() - start < seconds:
        step()
        steps += 1
    return steps * BATCH * SEQ_LEN / (CLOCK() - start)


def bench_size(size, layer_kinds, rounds, seconds, jit, peak, bfloat16=False):
    """Alternate torch and the Keras variants for `rounds`; return a result dict."""
    layers, units = SIZES[size]
    trainers = {"torch": torch_trainer(layers, units)}
    if bfloat16:
        trainers["torch-bf16"] = torch_trainer(layers, units, bfloat16=True)
    for kind in layer_kinds:
        trainers[kind] = keras_trainer(layers, units, kind, jit)
    for name, step in trainers.items():  # warm-up: tracing, allocation
        t = _timed(lambda: [step() for _ in range(2)])
        print(f"  warm-up {name}: {t:.1f}s", flush=True)

    runs = {name: [] for name in trainers}
    for r in range(rounds):
        for name, step in trainers.items():
            runs[name].append(tokens_per_second(step, seconds))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in runs.items()), flush=True)

    flops = train_flops_per_token(layers, units)
    summary = {}
    for name, values in runs.items():
        tps = statistics.median(values)
        summary[name] = {
            "tokens_per_s": tps,
            "best_tokens_per_s": max(values),
            "rounds": values,
            "gflops": tps * flops / 1e9,
            "pct_of_peak": 100 * tps * flops / 1e9 / peak,
            "ratio_vs_torch": tps / statistics.median(runs["torch"]),
            "best_ratio_vs_torch": max(values) / max(runs["torch"]),
        }
        for base in ("torch-bf16", "fast"):
            if base in runs:
                summary[name][f"ratio_vs_{base}"] = tps / statistics.median(runs[base])
    return {"size": size, "layers": layers, "units": units, "flops_per_token": flops, "results": summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["S", "M", "both"], default="S")
    parser.add_argument("--layer", choices=["keras", "fast", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per framework per round")
    parser.add_argument("--jit", action="store_true", help="compile the Keras train step with XLA")
    parser.add_argument("--threads", type=int, default=0, help="threads per framework (0: their defaults)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time by process CPU time; with --threads 1 this is robust to other load on the machine",
    )
    parser.add_argument("--train-py", metavar="CORPUS",
                        help="also time real `python train.py CORPUS` runs of each size (textgen's defaults "
                             "otherwise, dropout included) against this run's PyTorch")
    parser.add_argument("--budgets", default="0.4 0.9", help="the two --max-minutes of --train-py (default: %(default)s)")
    parser.add_argument("--bfloat16", action="store_true",
                        help="add PyTorch under bfloat16 autocast and textgen's bfloat16 variants (fast-bf16, "
                             "fast-mixed); with --train-py, also real runs with --mixed-precision")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu only measures throughput with --threads 1")

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        # BLAS/OpenMP pools read these when first loaded, so set them first.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import tensorflow as tf
    import torch

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        torch.set_num_threads(args.threads)

    # Other work on the machine skews the comparison (PyTorch's OpenMP
    # threads suffer most from oversubscription), so record the load.
    load_before = os.getloadavg()
    machine = machine_record()
    print(describe(machine), flush=True)
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak {peak:.1f} GFLOP/s; load {load_before[0]:.1f}", flush=True)
    kinds = ["keras", "fast"] if args.layer == "both" else [args.layer]
    if args.bfloat16:
        kinds = [*dict.fromkeys([*kinds, "fast", "fast-bf16", "fast-mixed"])]
    sizes = ["S", "M"] if args.size == "both" else [args.size]
    for size in sizes:
        print(f"size {size}: {SIZES[size][0]} x LSTM({SIZES[size][1]}), batch {BATCH}, seq {SEQ_LEN}", flush=True)
        result = bench_size(size, kinds, args.rounds, args.seconds, args.jit, peak, args.bfloat16)
        for name, r in result["results"].items():
            others = "".join(f"  {r[f'ratio_vs_{b}']:.2f}x {b}" for b in ("torch-bf16", "fast") if f"ratio_vs_{b}" in r)
            print(
                f"  {name:>10}: {r['tokens_per_s']:>8,.0f} tok/s  {r['ratio_vs_torch']:.2f}x torch{others}  "
                f"{r['gflops']:.1f} GFLOP/s ({r['pct_of_peak']:.0f}% of peak)  "
                f"[best round {r['best_tokens_per_s']:,.0f}, {r['best_ratio_vs_torch']:.2f}x]"
            )
        if args.train_py:
            budgets = [float(b) for b in args.budgets.split()]
            tps, steps = train_py_tokens_per_second(size, args.train_py, budgets)
            ratio = tps / result["results"]["torch"]["tokens_per_s"]
            print(f"  train.py: {tps:>8,.0f} tok/s  {ratio:.2f}x torch  (steps {steps[0]} at {budgets[0]:g} min, "
                  f"{steps[1]} at {budgets[1]:g} min)", flush=True)
            result["train_py"] = {"tokens_per_s": tps, "ratio_vs_torch": ratio, "budgets_min": budgets,
                                  "steps": steps, "corpus": args.train_py}
            if args.bfloat16:
                mixed, mixed_steps = train_py_tokens_per_second(size, args.train_py, budgets, ["--mixed-precision"])
                vs_bf16 = mixed / result["results"]["torch-bf16"]["tokens_per_s"]
                print(f"  train.py --mixed-precision: {mixed:>8,.0f} tok/s  {mixed / tps:.2f}x its float32  "
                      f"{vs_bf16:.2f}x torch-bf16  (steps {mixed_steps[0]}, {mixed_steps[1]})", flush=True)
                result["train_py_mixed_precision"] = {"tokens_per_s": mixed, "ratio_vs_float32": mixed / tps,
                                                      "ratio_vs_torch_bf16": vs_bf16, "steps": mixed_steps}
        result.update(
            machine=machine,
            matmul_peak_gflops=peak,
            threads={
                "torch": torch.get_num_threads(),
                "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                "env": {k: v for k, v in os.environ.items() if "THREAD" in k},
            },
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
            args=vars(args),
            command=" ".join(["python"] + sys.argv),
        )
        os.makedirs(RESULTS_DIR, exist_ok=True)
        suffix = ("-jit" if args.jit else "") + ("-bf16" if args.bfloat16 else "")
        stamp = machine["date"].replace("-", "").replace(":", "")  # 20261202T124756Z
        path = os.path.join(RESULTS_DIR, f"train_speed-{size}{suffix}-{stamp}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
