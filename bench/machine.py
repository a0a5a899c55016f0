"""What a benchmark ran on, for every result it records (issue 11): the CPU model, its flags
of interest, the core count, the load average, the library versions and the date.

    from machine import describe, machine_record   # bench/ is the script's folder
    record = machine_record()                        # into the result's JSON as "machine"
    print(describe(record))                          # one line for the printed results

The CPU is read by textgen.device (one /proc/cpuinfo parser); versions come from the
installed distributions' metadata, so nothing here imports TensorFlow or PyTorch.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata

from textgen.device import cpu_bfloat16, cpu_flags, cpu_info

# The flags that decide how fast the matrix products run: AVX2/AVX-512 and FMA for float32,
# avx512_bf16 and the AMX tiles for bfloat16 (textgen.device.cpu_bfloat16).
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
DISTRIBUTIONS = ("textgen", "tensorflow", "tensorflow-cpu", "keras", "torch", "numpy", "tokenizers")


def machine_record() -> dict:
    """The machine as a JSON-ready dict: cpu, cpu_flags (those of FLAGS_OF_INTEREST it has),
    cpu_bfloat16 ("amx", "avx512" or None), cores, load_average (1, 5, 15 minutes; None where the OS has none),
    platform, versions (python and each installed distribution of DISTRIBUTIONS), date (UTC)."""
    flags = cpu_flags()
    return {
        "cpu": cpu_info().get("model name") or platform.processor() or "unknown",
        "cpu_flags": [flag for flag in FLAGS_OF_INTEREST if flag in flags],
        "cpu_bfloat16": cpu_bfloat16(flags),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "versions": {"python": platform.python_version(), **_versions()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe(record: dict) -> str:
    """One line: `CPU: AMD EPYC (avx2 fma), 2 cores, load 1.0/0.8/0.5; python 3.11.7, ...; 2026-...Z`."""
    load = "/".join(f"{x:.2f}" for x in record["load_average"]) if record["load_average"] else "unknown"
    versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
    return (f"CPU: {record['cpu']} ({' '.join(record['cpu_flags']) or 'no flags of interest'}), "
            f"{record['cores']} cores, load {load}; {versions}; {record['date']}")


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages; None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


def _versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # torch only where the anchors are installed
            pass
    return found
