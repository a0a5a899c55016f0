"""Which device training will use, said in training's start-up lines, and why a GPU is unused.

textgen depends on `tensorflow`, which runs on a GPU once the CUDA libraries are there
(`pip install 'textgen[cuda]'`). Two set-ups leave a GPU idle without a word, so each gets
one line with its fix:
- the older `tensorflow-cpu` distribution is installed (textgen depended on it before):
  `tensorflow` and `tensorflow-cpu` unpack into the same `tensorflow/` folder, so whichever
  was installed last wins, and only a forced reinstall of `tensorflow` repairs it;
- `nvidia-smi` works (the system has an NVIDIA GPU and driver) but TensorFlow sees no GPU:
  the CUDA libraries are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata

import tensorflow as tf

REPAIR_COMMAND = "pip uninstall -y tensorflow-cpu && pip install --force-reinstall --no-deps 'tensorflow>=2.21,<2.22'"
CUDA_COMMAND = "pip install 'textgen[cuda]'"
_NVIDIA_SMI_SECONDS = 10  # a hung driver must not hold up training's start


def startup_lines() -> list[str]:
    """Training's device lines: a stale tensorflow-cpu warning, the device, a missing-CUDA hint."""
    return [line for line in (tensorflow_cpu_warning(), device_line(), missing_gpu_hint()) if line]


def tensorflow_cpu_warning() -> str | None:
    """One line naming the repair command when the `tensorflow-cpu` distribution is installed."""
    try:
        metadata.distribution("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        return None
    return (f"Warning: the tensorflow-cpu package is installed (it never uses a GPU and shares "
            f"tensorflow's files); repair with: {REPAIR_COMMAND}")


def device_line() -> str:
    """`Device: GPU 0 (NVIDIA ...)` for each GPU TensorFlow sees, else `Device: CPU, N cores`."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"Device: CPU, {os.cpu_count()} cores"
    names = []
    for index, gpu in enumerate(gpus):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(f"GPU {index} ({details.get('device_name', gpu.name)})")
    return "Device: " + ", ".join(names)


def missing_gpu_hint() -> str | None:
    """A one-line fix when `nvidia-smi` lists a GPU that TensorFlow does not see, else None."""
    listed = [] if tf.config.list_physical_devices("GPU") else system_gpus()
    if not listed:
        return None
    return f"GPU: nvidia-smi sees {listed[0]} but TensorFlow does not; add the CUDA libraries: {CUDA_COMMAND}"


def system_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists (e.g. 'GPU 0: NVIDIA A100 ...'); [] if it is absent or fails."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        done = subprocess.run([program, "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]
