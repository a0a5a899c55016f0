"""bench/gpu_check.py where CI runs it: no GPU (exit 0, says so) and the whole pipeline on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _no_gpu() -> bool:
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _run(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(not _no_gpu(), reason="TensorFlow sees a GPU here")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    fake = tmp_path / "nvidia-smi"  # a driver that lists a GPU TensorFlow cannot use
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA Test (UUID: GPU-1)'\n")
    fake.chmod(0o755)
    done = _run(env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"No GPU visible to TensorFlow (Device: CPU, {os.cpu_count()} cores): nothing to check."
    assert lines[1].endswith("pip install 'textgen[cuda]'")
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_force_cpu_tiny_runs_every_check_and_writes_the_report(tmp_path):
    report = tmp_path / "report.json"
    done = _run("--force-cpu", "--tiny", "--report", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(report.read_text())
    runs = [(r["model"], r["precision"]) for r in data["runs"]]
    assert runs == [("S", "float32"), ("S", "mixed"), ("M", "float32"), ("M", "mixed")]
    assert all(r["steps"] == data["steps"] and r["steps_per_second"] > 0 and r["sample"] for r in data["runs"])
    assert data["resume"]["exact"] is True and data["resume"]["stopped_at"] == data["steps"] // 2
    env = data["environment"]
    assert env["device"] == f"Device: CPU, {os.cpu_count()} cores"
    assert data["machine"]["cpu"] and data["machine"]["versions"]["tensorflow"]
    assert "Resume: exact" in done.stdout and "M 2x24" in done.stdout
