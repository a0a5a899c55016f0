"""Training on several devices and machines through `tf.distribute`, never a home-made engine.

- `make_strategy(name)`: "default" (one device), "mirrored" (`MirroredStrategy` over the
  local GPUs, or over logical CPU devices made by `split_cpu`), "multi-worker"
  (`MultiWorkerMirroredStrategy`, configured by the TF_CONFIG environment variable) or
  "auto" (mirrored when more than one GPU is visible, else default).
- `output_dir(path)`: the chief writes bundles and logs to `path`; every other
  worker writes to a temporary folder beside it, as TensorFlow's multi-worker guide
  prescribes (all workers must run the saving code, which may hold collectives).
- `worker_mean(strategy)`: lets callbacks agree across workers (same clock, same stop step).
- `MultiWorkerFix`: a mixin for `keras.Model` subclasses that makes `model.fit` work under
  MultiWorkerMirroredStrategy (see its docstring).

Global batch = per-replica batch x replicas: a run's --batch-size is the global batch, so
the same flags give the same optimisation on one device or many. The learning rate is
not scaled: Keras averages the loss over the global batch, so each step's gradient is the
same mean as on one device. Raise it by hand (linear rule: x replicas, with warm-up) when
you raise --batch-size to keep devices busy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from textgen.config import STRATEGIES, TextgenError


def split_cpu(n: int) -> None:
    """Make `n` logical CPU devices, so MirroredStrategy can run on a machine without GPUs.

    Must run before TensorFlow initialises its devices (before any op runs).
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        raise TextgenError("logical CPU devices must be configured before TensorFlow starts") from None


def make_strategy(name: str):
    """The `tf.distribute.Strategy` for a --strategy value.

    Call it before any TensorFlow op runs (datasets included): MultiWorkerMirroredStrategy
    configures collective ops, which TensorFlow allows only at start-up.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise TextgenError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    if name == "multi-worker":  # first: collectives must be configured before any device query
        if cluster_task() is None:  # also refuses a malformed TF_CONFIG with one clear line
            raise TextgenError("--strategy multi-worker needs TF_CONFIG (see README: several machines)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def cluster_task() -> tuple[str, int] | None:
    """(task type, index) from TF_CONFIG, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        task = config["task"]
        kind, index = str(task["type"]), int(task["index"])
        workers = config["cluster"][kind]
    except (ValueError, KeyError, TypeError):
        raise TextgenError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": 0}}') from None
    if not 0 <= index < len(workers):
        raise TextgenError(f"TF_CONFIG task index {index} is not in its cluster's {kind} list")
    return kind, index


def is_chief(task: tuple[str, int] | None = None) -> bool:
    """Whether this process writes the real bundle and logs: the chief, or worker 0 without one."""
    task = cluster_task() if task is None else task
    if task is None:
        return True
    kind, index = task
    if kind == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return kind == "worker" and index == 0 and not has_chief


def output_dir(path: Path, task: tuple[str, int] | None = None) -> Path:
    """`path` on the chief; `path`'s parent / .workertemp_<type>_<index>/<name> elsewhere."""
    task = cluster_task() if task is None else task
    if is_chief(task):
        return Path(path)
    kind, index = task
    path = Path(path)
    return path.parent / f".workertemp_{kind}_{index}" / path.name


def worker_mean(strategy) -> Callable[[list[float]], list[float]] | None:
    """For multi-worker training, a function averaging a small vector over every replica.

    Callbacks decide on their own clock and signals; what changes the training (the
    learning rate, stopping) must be the same on every worker, so they average their
    measurements with one collective before deciding. None for other strategies: one
    process decides alone. Every worker must call the function at the same points.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None

    def mean(values: list[float]) -> list[float]:
        local = tf.constant(values, tf.float32)
        per_replica = strategy.run(lambda: tf.identity(local))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy().tolist()

    return mean


def mixed_precision_dtype(device_kind: str) -> str:
    """The Keras dtype policy for --mixed-precision on a device kind ("GPU", "TPU" or "CPU").

    float16 on GPUs (tensor cores; Keras' LossScaleOptimizer keeps small gradients), bfloat16
    elsewhere (same exponent range as float32: no loss scaling needed). The policy is given
    to each layer as `dtype=`, never set process-wide, so it cannot leak into the next run.
    """
    return "mixed_float16" if device_kind == "GPU" else "mixed_bfloat16"


class MultiWorkerFix:
    """Mixin for `keras.Model` subclasses that makes `model.fit` work under MultiWorkerMirroredStrategy.

    Keras 3.15's TensorFlow trainer has two steps that fail there, both overridden narrowly:
    - `_maybe_symbolic_build` learns input shapes by `strategy.reduce("MEAN", first batch)`,
      which fails on integer token batches ("Attempt to convert a value (PerReplica...)
      with an unsupported type", keras issue 20585). A textgen model knows its batch
      shape, so it is built from `self.build_batch` (one replica's (x, y) as NumPy zeros).
    - `reduce_per_replica` averages each step's logs with `strategy.reduce("MEAN", v,
      axis=0)`, which needs an axis the scalar loss lacks; the subclass's train and test
      steps return their logs through `_vector_logs`, which makes every log shape (1,)
      under a multi-worker strategy, so the mean is over replicas.
    tests/test_distribute.py fails when Keras changes either, and pyproject pins keras to
    3.15.x. Everything else (callbacks, metrics, the optimizer) is Keras' own.
    """

    build_batch = None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or self.build_batch is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=self.build_batch)

    def _vector_logs(self, logs):
        import tensorflow as tf

        if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return logs
        return {name: tf.reshape(value, [-1]) for name, value in logs.items()}  # () -> (1,)
