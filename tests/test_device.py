"""The device line and the two one-line hints about an unused GPU (textgen.device)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY
from textgen import device


def _no_tensorflow_gpu() -> bool:
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


cpu_only = pytest.mark.skipif(not _no_tensorflow_gpu(), reason="TensorFlow sees a GPU here")


def _fake_nvidia_smi(folder: Path, monkeypatch, exit_code: int = 0) -> None:
    """A real `nvidia-smi` executable first on PATH, printing what the driver's `-L` prints."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA Test 80GB (UUID: GPU-1234)'\nexit {exit_code}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@cpu_only
def test_device_line_names_the_cpu_and_its_cores():
    assert device.device_line() == f"Device: CPU, {os.cpu_count()} cores"


@cpu_only
def test_gpu_seen_by_nvidia_smi_but_not_tensorflow_gives_the_cuda_fix(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch)
    assert device.missing_gpu_hint() == (
        "GPU: nvidia-smi sees GPU 0: NVIDIA Test 80GB (UUID: GPU-1234) but TensorFlow does not; "
        "add the CUDA libraries: pip install 'textgen[cuda]'"
    )


def test_failing_or_absent_nvidia_smi_gives_no_hint(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch, exit_code=9)  # e.g. "couldn't communicate with the driver"
    assert device.missing_gpu_hint() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert device.system_gpus() == []


def test_installed_tensorflow_cpu_is_named_with_the_repair_command(tmp_path, monkeypatch):
    info = tmp_path / "tensorflow_cpu-2.21.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow-cpu\nVersion: 2.21.0\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # the only place distributions are looked up
    line = device.tensorflow_cpu_warning()
    assert line.startswith("Warning: the tensorflow-cpu package is installed")
    assert line.endswith(device.REPAIR_COMMAND)


def test_no_tensorflow_cpu_no_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert device.tensorflow_cpu_warning() is None


@cpu_only
def test_training_start_up_names_the_device(corpus_file, tmp_path, capsys):
    import textgen

    textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "r", max_steps=1, **TINY)
    out = capsys.readouterr().out.splitlines()
    model = next(i for i, line in enumerate(out) if line.startswith("Model: "))
    assert f"Device: CPU, {os.cpu_count()} cores" in out[:model]
