"""bench/machine.py: the machine record every benchmark result carries, and its one-line form."""

from __future__ import annotations

import json
import os
import platform

import pytest

from tests.conftest import bench_module


@pytest.fixture(scope="module")
def machine():
    return bench_module("machine")


def test_record_names_the_cpu_its_flags_of_interest_cores_load_versions_and_date(machine):
    from textgen.device import cpu_bfloat16, cpu_flags

    record = machine.machine_record()
    assert set(record) == {"cpu", "cpu_flags", "cpu_bfloat16", "cores", "load_average", "platform", "versions",
                           "date"}
    assert record["cpu"] and record["cores"] == os.cpu_count()
    assert set(record["cpu_flags"]) <= set(machine.FLAGS_OF_INTEREST)
    assert set(record["cpu_flags"]) == set(machine.FLAGS_OF_INTEREST) & cpu_flags()
    assert record["cpu_bfloat16"] == cpu_bfloat16(set(record["cpu_flags"]))
    assert record["load_average"] is None or len(record["load_average"]) == 3
    assert record["versions"]["python"] == platform.python_version()
    assert {"tensorflow", "keras", "numpy", "tokenizers"} <= set(record["versions"])
    assert record["date"].endswith("Z")
    assert json.loads(json.dumps(record)) == record  # goes into the results' JSON as it is


def test_describe_is_one_line_with_the_cpu_flags_cores_and_versions(machine):
    record = {**machine.machine_record(), "cpu": "Test CPU", "cpu_flags": ["avx2", "fma"], "cores": 2,
              "load_average": [1.5, 0.25, 0.0], "versions": {"python": "3.11.7", "tensorflow": "2.21.0"},
              "date": "2026-01-02T03:04:05Z"}
    assert machine.describe(record) == ("CPU: Test CPU (avx2 fma), 2 cores, load 1.50/0.25/0.00; "
                                        "python 3.11.7, tensorflow 2.21.0; 2026-01-02T03:04:05Z")
    assert "load unknown" in machine.describe({**record, "load_average": None})
