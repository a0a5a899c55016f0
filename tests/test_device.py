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


def test_cpu_flags_come_from_the_first_flags_line_and_are_empty_where_unreadable(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert device.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert device.cpu_flags(tmp_path / "absent") == set()  # e.g. not Linux


def test_cpu_bfloat16_names_amx_first_then_avx512_bf16():
    assert device.cpu_bfloat16({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) == "amx"
    assert device.cpu_bfloat16({"avx512f", "avx512_bf16"}) == "avx512"
    assert device.cpu_bfloat16({"avx2", "avx512f", "amx_tile"}) is None
    assert device.cpu_bfloat16() == device.cpu_bfloat16(device.cpu_flags())


@pytest.mark.parametrize("mixed, kind, cpu_bf16, resumed, saved, policy, line", [
    # a new run gets what it asks for; only bfloat16 on a CPU without the instructions it needs is said
    (False, "CPU", None, False, None, "float32", None),
    (False, "GPU", None, False, None, "float32", None),
    (True, "GPU", None, False, None, "mixed_float16", None),
    (True, "CPU", "amx", False, None, "bfloat16_matmuls", None),  # the products outside the loops
    (True, "CPU", "avx512", False, None, "bfloat16_matmuls", None),
    (True, "CPU", None, False, None, "mixed_bfloat16", device.SLOW_BFLOAT16_LINE),
    # a resumed run continues in its recorded precision, bfloat16 only where it pays
    (True, "CPU", "amx", True, "mixed_bfloat16", "mixed_bfloat16", None),
    (True, "CPU", "avx512", True, "mixed_bfloat16", "float32", device.RESUMED_IN_FLOAT32_LINE),
    (True, "CPU", None, True, "mixed_bfloat16", "float32", device.RESUMED_IN_FLOAT32_LINE),
    (True, "CPU", "amx", True, "bfloat16_matmuls", "bfloat16_matmuls", None),
    (True, "CPU", "avx512", True, "bfloat16_matmuls", "bfloat16_matmuls", None),
    (True, "CPU", None, True, "bfloat16_matmuls", "float32", device.RESUMED_IN_FLOAT32_LINE),
    (True, "GPU", None, True, "mixed_bfloat16", "mixed_bfloat16", None),
    (True, "GPU", None, True, "mixed_float16", "mixed_float16", None),
    (True, "CPU", None, True, "float32", "float32", None),  # already continued in float32 once
    (False, "CPU", None, True, "float32", "float32", None),
    # a resume state saved before the precision was recorded: what the kept setting gives here
    (False, "CPU", None, True, None, "float32", None),
    (True, "CPU", "amx", True, None, "bfloat16_matmuls", None),
    (True, "CPU", None, True, None, "float32", device.RESUMED_IN_FLOAT32_LINE),
    (True, "GPU", None, True, None, "mixed_float16", None),
])
def test_choose_precision(mixed, kind, cpu_bf16, resumed, saved, policy, line):
    chosen = device.choose_precision(mixed, kind, cpu_bf16, resumed=resumed, saved=saved)
    assert chosen == device.Precision(policy, line)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_get_keras_bfloat16_slow_without_amx(cell):
    # bfloat16_matmuls is FastLSTM's; Keras' GRU and SimpleRNN take a dtype policy
    assert device.choose_precision(True, "CPU", "amx", cell=cell) == device.Precision("mixed_bfloat16")
    slow = device.Precision("mixed_bfloat16", device.SLOW_BFLOAT16_LINE)
    assert device.choose_precision(True, "CPU", "avx512", cell=cell) == slow


def test_precisions_say_what_the_layers_and_the_lstm_products_compute_in():
    views = {p: (device.Precision(p).layer_dtype, device.Precision(p).matmul_dtype) for p in device.PRECISIONS}
    assert views == {"float32": (None, None), "mixed_bfloat16": ("mixed_bfloat16", None),
                     "mixed_float16": ("mixed_float16", None), "bfloat16_matmuls": (None, "bfloat16")}


def test_an_unknown_recorded_precision_is_a_one_line_error():
    from textgen.config import TextgenError

    with pytest.raises(TextgenError, match="precision is 'float64', not one of float32, mixed_bfloat16"):
        device.choose_precision(True, "CPU", None, resumed=True, saved="float64")


@cpu_only
def test_bfloat16_run_warns_records_its_precision_and_resumes_in_float32(corpus_file, tmp_path, capsys,
                                                                         monkeypatch):
    import textgen
    from textgen import session
    from textgen.resume import load_resume_state

    monkeypatch.setattr(session, "cpu_bfloat16", lambda: None)  # a CPU without bfloat16 instructions
    options = dict(checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "r", mixed_precision=True, **TINY)
    bundle = textgen.train(str(corpus_file), max_steps=2, **options)
    first = capsys.readouterr().out.splitlines()
    assert load_resume_state(bundle).progress["precision"] == "mixed_bfloat16"
    assert first.count(device.SLOW_BFLOAT16_LINE) == 1 and device.RESUMED_IN_FLOAT32_LINE not in first

    textgen.train(str(corpus_file), max_steps=4, resume=True, **options)
    resumed = capsys.readouterr().out.splitlines()
    assert load_resume_state(bundle).progress["precision"] == "float32"
    assert resumed.count(device.RESUMED_IN_FLOAT32_LINE) == 1 and device.SLOW_BFLOAT16_LINE not in resumed
    model = next(i for i, line in enumerate(resumed) if line.startswith("Model: "))
    assert resumed.index(device.RESUMED_IN_FLOAT32_LINE) < model  # a start-up line


@cpu_only
def test_amx_run_trains_with_bfloat16_matmuls_and_resumes_in_them(corpus_file, tmp_path, capsys, monkeypatch):
    import textgen
    from textgen import session
    from textgen.resume import load_resume_state

    built, build = [], session.build_stateful_model
    monkeypatch.setattr(session, "cpu_bfloat16", lambda: "amx")  # a CPU with AMX (any CPU can run it)
    monkeypatch.setattr(session, "build_stateful_model", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    options = dict(checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "r", mixed_precision=True, **TINY)
    bundle = textgen.train(str(corpus_file), max_steps=2, **options)
    textgen.train(str(corpus_file), max_steps=4, resume=True, **options)
    assert load_resume_state(bundle).progress["precision"] == "bfloat16_matmuls"
    lstms = [layer for net in built for layer in net.layers if layer.name.startswith("lstm_")]
    assert [(layer.matmul_dtype, layer.dtype_policy.name) for layer in lstms] == [("bfloat16", "float32")] * 4
    assert "bfloat16" not in capsys.readouterr().out  # nothing to warn of


@cpu_only
def test_float32_run_records_float32_and_says_nothing_of_precision(corpus_file, tmp_path, capsys):
    import textgen
    from textgen.resume import load_resume_state

    bundle = textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "r", max_steps=1,
                           **TINY)
    out = capsys.readouterr().out
    assert load_resume_state(bundle).progress["precision"] == "float32"
    assert "bfloat16" not in out
