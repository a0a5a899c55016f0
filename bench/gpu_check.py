"""Check textgen's GPU path on your machine and write a report to share.

    python bench/gpu_check.py                      # about 5 minutes on one GPU
    python bench/gpu_check.py --report my-gpu.json

It trains the S (2x256) and M (3x512) models for a fixed number of steps with and without
--mixed-precision through `textgen.train` (cuDNN LSTM, float16 with loss scaling), times
them, stops one run halfway and resumes it, checking that it ends exactly where the
uninterrupted run did (TensorFlow's op determinism on, so cuDNN is repeatable), generates
from each bundle, prints a table and writes a JSON report (GPU, driver, TensorFlow, CPU).
Without a GPU it says so and exits 0. `--force-cpu --tiny` runs the same pipeline on the
CPU with tiny models in seconds (the test suite does this).
Exit status: 0 if every check passed (or there is no GPU), 1 if the resumed run differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from machine import machine_record  # noqa: E402  (bench/machine.py)

MODELS = {"S": dict(layers=2, units=256), "M": dict(layers=3, units=512)}
TINY_MODELS = {"S": dict(layers=1, units=16, embedding_dim=8), "M": dict(layers=2, units=24, embedding_dim=8)}
TINY_SHAPE = dict(batch_size=4, seq_len=16)
GENERATE_TOKENS = 200


def main(argv=None) -> int:
    args = _parse(argv)
    import keras
    import tensorflow as tf

    import textgen
    from textgen.device import device_line, missing_gpu_hint

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.force_cpu:
        print(f"No GPU visible to TensorFlow ({device_line()}): nothing to check.")
        hint = missing_gpu_hint()
        if hint:
            print(hint)
        return 0
    models = TINY_MODELS if args.tiny else MODELS
    shape = TINY_SHAPE if args.tiny else {}
    steps = args.steps or (4 if args.tiny else 300)
    print(device_line())
    with tempfile.TemporaryDirectory(prefix="textgen-gpu-check-") as folder:
        root = Path(folder)
        corpus = args.corpus or (_tiny_corpus(root) if args.tiny else "pydoc")
        options = dict(checkpoint_dir=root / "checkpoints", log_dir=root / "runs", max_steps=steps,
                       patience=1_000, **shape)
        runs = [_timed_run(textgen, keras, corpus, size, mixed, {**options, **sizes})
                for size, sizes in models.items() for mixed in (False, True)]
        resume = _resume_check(textgen, keras, tf, corpus, steps, {**options, **models["S"]})
    report = {"machine": machine_record(), "environment": _environment(tf, gpus), "steps": steps, "corpus": str(corpus),
              "runs": runs, "resume": resume}
    print(_table(runs))
    print(f"Resume: {'exact' if resume['exact'] else 'NOT exact'} (S float32, stopped at step "
          f"{resume['stopped_at']} of {steps}; largest difference {resume['max_abs_diff']:.3g})")
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"Report: {args.report} (attach it to an issue to share the numbers)")
    return 0 if resume["exact"] else 1


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train, time, resume and generate on the GPU; write a JSON report.")
    p.add_argument("--corpus", default=None, help="corpus to train on (default: pydoc, offline; a small text with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 300; 4 with --tiny)")
    p.add_argument("--report", default="gpu_check.json", help="where to write the JSON report (default: %(default)s)")
    p.add_argument("--force-cpu", action="store_true", help="run even without a GPU (on the CPU)")
    p.add_argument("--tiny", action="store_true", help="tiny models and few steps: checks the pipeline in seconds")
    return p.parse_args(argv)


def _tiny_corpus(folder: Path) -> Path:
    """A small made-up text: with --tiny, validation and the token cache take no time."""
    words = "the cat sat on a mat and the dog ran to it".split()
    lines = (" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(4 + i % 5)) for i in range(300))
    path = folder / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _step_timer(keras):
    class StepTimer(keras.callbacks.Callback):
        """Wall time of every optimizer step after the first (which traces the graph)."""

        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.loss = float((logs or {}).get("loss", float("nan")))

    return StepTimer()


def _timed_run(textgen, keras, corpus: str, size: str, mixed: bool, options: dict) -> dict:
    """Train one model for the fixed steps; its speed, final loss and generation speed."""
    timer = _step_timer(keras)
    precision = "mixed" if mixed else "float32"
    start = time.perf_counter()
    bundle = textgen.train(corpus, name=f"{size}-{precision}", mixed_precision=mixed, callbacks=[timer], **options)
    total = time.perf_counter() - start
    later = len(timer.times) - 1
    seconds = timer.times[-1] - timer.times[0] if later > 0 else float("nan")
    generator = textgen.load(bundle)
    start = time.perf_counter()
    text = generator.generate(length=GENERATE_TOKENS, temperature=0.8, seed=1)
    gen_seconds = time.perf_counter() - start
    tokens_per_step = generator.config.train.batch_size * generator.config.train.seq_len
    return {"model": size, "layers": options["layers"], "units": options["units"], "precision": precision,
            "steps": len(timer.times), "steps_per_second": later / seconds, "tokens_per_second": later * tokens_per_step / seconds,
            "run_seconds": total, "final_loss": timer.loss, "generate_tokens_per_second": GENERATE_TOKENS / gen_seconds,
            "sample": text}


def _resume_check(textgen, keras, tf, corpus: str, steps: int, options: dict) -> dict:
    """An uninterrupted run against one stopped halfway and resumed: same final variables?"""
    import numpy as np

    from textgen.resume import load_resume_state

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= steps // 2:
                self.model.stop_training = True

    tf.config.experimental.enable_op_determinism()  # cuDNN picks repeatable kernels from here on
    textgen.train(corpus, name="whole", **options)
    textgen.train(corpus, name="split", callbacks=[StopAt()], **options)
    textgen.train(corpus, name="split", resume=True, **options)
    whole, split = (load_resume_state(Path(options["checkpoint_dir"]) / n) for n in ("whole", "split"))
    diff = max(float(np.max(np.abs(split.arrays[k].astype(np.float64) - whole.arrays[k]), initial=0.0))
               for k in whole.arrays)
    exact = split.progress["step"] == whole.progress["step"] == steps and all(
        np.allclose(split.arrays[k], whole.arrays[k], rtol=1e-5, atol=1e-6) for k in whole.arrays)
    return {"exact": bool(exact), "max_abs_diff": diff, "stopped_at": steps // 2}


def _environment(tf, gpus) -> dict:
    """The GPUs the numbers were measured on (the rest of the machine: bench/machine.py)."""
    from textgen.device import device_line

    return {"device": device_line(),
            "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
            "driver": _nvidia_query("driver_version"), "cuda_build": tf.sysconfig.get_build_info().get("cuda_version"),
            "cudnn_build": tf.sysconfig.get_build_info().get("cudnn_version")}


def _nvidia_query(field: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _table(runs: list[dict]) -> str:
    head = f"{'model':<8} {'precision':<9} {'steps/s':>8} {'tokens/s':>10} {'final loss':>10} {'generate tok/s':>15}"
    rows = [f"{r['model']} {r['layers']}x{r['units']:<4} {r['precision']:<9} {r['steps_per_second']:>8.2f} "
            f"{r['tokens_per_second']:>10,.0f} {r['final_loss']:>10.4f} {r['generate_tokens_per_second']:>15,.0f}"
            for r in runs]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    sys.exit(main())
