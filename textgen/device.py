"""Which device training will use, said in training's start-up lines, and why a GPU is unused.

textgen depends on `tensorflow`, which runs on a GPU once the CUDA libraries are there
(`pip install 'textgen[cuda]'`). Two set-ups leave a GPU idle without a word, so each gets
one line with its fix:
- the older `tensorflow-cpu` distribution is installed (textgen depended on it before):
  `tensorflow` and `tensorflow-cpu` unpack into the same `tensorflow/` folder, so whichever
  was installed last wins, and only a forced reinstall of `tensorflow` repairs it;
- `nvidia-smi` works (the system has an NVIDIA GPU and driver) but TensorFlow sees no GPU:
  the CUDA libraries are missing.

It also decides the precision --mixed-precision gives (`choose_precision`): bfloat16 pays on
a CPU only with bfloat16 matrix instructions (`cpu_bfloat16`: AMX tiles or AVX-512 BF16), and
there only for the big products outside the LSTM's time loops (`bfloat16_matmuls`), so the
start-up lines say when it will be slower, and a resumed bfloat16 run continues in float32 on a
CPU without them.
TensorFlow is imported only by the functions that ask it: bench/machine.py reads the CPU
here without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from textgen.config import TextgenError
from textgen.distribute import mixed_precision_dtype

REPAIR_COMMAND = "pip uninstall -y tensorflow-cpu && pip install --force-reinstall --no-deps 'tensorflow>=2.21,<2.22'"
CUDA_COMMAND = "pip install 'textgen[cuda]'"
_NVIDIA_SMI_SECONDS = 10  # a hung driver must not hold up training's start
# What a run computes in: Keras dtype policies, and bfloat16_matmuls: float32 layers whose LSTM
# products outside the time loops run in bfloat16 (textgen.fast_lstm), for CPUs with bfloat16
# matrix instructions.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16_matmuls")
# The CPU bfloat16 hardware (`cpu_bfloat16`) each bfloat16 precision needs to beat float32.
FAST_ON = {"mixed_bfloat16": ("amx",), "bfloat16_matmuls": ("amx", "avx512")}
CPUINFO = Path("/proc/cpuinfo")
SLOW_BFLOAT16_LINE = ("Warning: bfloat16 will be slower than float32 on this CPU (it lacks the bfloat16 "
                      "matrix instructions, amx_bf16 or avx512_bf16, this precision needs); training goes on in "
                      "bfloat16 as asked")
RESUMED_IN_FLOAT32_LINE = ("Precision: this run trained in bfloat16, which is slower than float32 on this CPU "
                           "(it lacks the bfloat16 matrix instructions, amx_bf16 or avx512_bf16, this precision "
                           "needs); it continues in float32 (the weights are float32 either way)")


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
    import tensorflow as tf

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
    import tensorflow as tf

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


def cpu_info(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags", ...); {} where
    it is unreadable (not Linux). The first processor's: every core has the same model and flags."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        if not line.strip():  # a blank line ends a processor's block
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (`flags : fpu vme ... amx_bf16`); an empty set where unreadable."""
    return set(cpu_info(cpuinfo).get("flags", "").split())


def cpu_bfloat16(flags: set[str] | None = None) -> str | None:
    """The CPU's bfloat16 matrix instructions: "amx" (`amx_bf16`: Intel AMX tiles), "avx512"
    (`avx512_bf16`: AVX-512 BF16 dot products, e.g. AMD Zen 4) or None.

    Measured (issue 11): on both, oneDNN's bfloat16 matrix products beat its float32 ones, so
    FastLSTM's products outside the time loops pay in bfloat16 (1.15-1.35x a float32 step on a
    Xeon with AMX, 1.2x on an EPYC with avx512_bf16); XLA's time loops run bfloat16 without
    either (mixed_bfloat16 made an LSTM step 0.5-0.6x float32 on both).
    """
    flags = cpu_flags() if flags is None else flags
    return "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else None


@dataclass(frozen=True)
class Precision:
    """The compute precision a run uses and, when that needs saying, its start-up line."""

    policy: str  # one of PRECISIONS
    line: str | None = None

    @property
    def layer_dtype(self) -> str | None:
        """The Keras dtype policy of the layers (None: float32)."""
        return self.policy if self.policy.startswith("mixed_") else None

    @property
    def matmul_dtype(self) -> str | None:
        """The dtype of the LSTM's products outside its time loops (None: the layers')."""
        return "bfloat16" if self.policy == "bfloat16_matmuls" else None


def requested_precision(mixed: bool, device_kind: str, cpu_bf16: str | None, cell: str = "lstm") -> str:
    """What --mixed-precision (`mixed`) gives a new run on this device (`cpu_bf16`: `cpu_bfloat16()`).

    On a CPU with bfloat16 matrix instructions, an LSTM gets bfloat16_matmuls: measured on a
    2-core Xeon with amx_bf16 (issue 11), the products outside the time loops run 2-3.5x faster
    in bfloat16 there, while XLA's loops run bfloat16 2.3x slower than float32 (no AMX inside
    them), so mixed_bfloat16 made a step 2x slower and bfloat16_matmuls made it 1.1-1.3x faster.
    """
    if not mixed:
        return "float32"
    if device_kind == "CPU" and cpu_bf16 and cell == "lstm":
        return "bfloat16_matmuls"
    return mixed_precision_dtype(device_kind)


def choose_precision(mixed: bool, device_kind: str, cpu_bf16: str | None, *, resumed: bool = False,
                     saved: str | None = None, cell: str = "lstm") -> Precision:
    """The precision of a run: --mixed-precision (`mixed`) on a device kind ("GPU" or "CPU").

    A new run gets what it asks for (requested_precision), with a warning when it is a
    bfloat16 precision on a CPU without the instructions it needs (FAST_ON; slower than
    float32 there). A resumed run continues in the precision its resume state recorded
    (`saved`; a state saved before it was recorded means what `mixed` gives on this device),
    except bfloat16 on such a CPU, which continues in float32: the weights are float32
    variables either way, so only the compute precision changes.
    """
    if saved is not None and saved not in PRECISIONS:
        raise TextgenError(f"the resume state's precision is {saved!r}, not one of {', '.join(PRECISIONS)}")
    policy = saved or requested_precision(mixed, device_kind, cpu_bf16, cell)
    if policy not in FAST_ON or device_kind != "CPU" or cpu_bf16 in FAST_ON[policy]:
        return Precision(policy)
    return Precision("float32", RESUMED_IN_FLOAT32_LINE) if resumed else Precision(policy, SLOW_BFLOAT16_LINE)
