import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textgen import __version__
from textgen.cli import main
from tests.conftest import TINY, make_text

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def run(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and pattern in lines[0], lines[0]


def test_train_generate_evaluate_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    code, out, _ = run(capsys, "train", corpus, "--checkpoint-dir", tmp_path / "ck",
                       "--log-dir", tmp_path / "runs", "--max-steps", 20, *TINY_FLAGS)
    assert code == 0 and "textgen generate" in out
    bundle = tmp_path / "ck" / "plays"
    code, out, _ = run(capsys, "generate", bundle, "--prime", "The", "--length", 30, "--seed", 5)
    assert code == 0 and out.startswith("The") and len(out.rstrip("\n")) >= 30
    code, again, _ = run(capsys, "generate", bundle, "--prime", "The", "--length", 30, "--seed", 5)
    assert again == out
    (tmp_path / "val.txt").write_text(make_text(20), encoding="utf-8")
    code, out, _ = run(capsys, "evaluate", bundle, tmp_path / "val.txt", "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"bits_per_char", "perplexity", "characters", "tokens"}
    assert 0 < result["bits_per_char"] < 8


def _file(name, data: bytes):
    def make(folder):
        (folder / name).write_bytes(data)
        return folder / name
    return make


def _empty_dir(folder):
    (folder / "sub").mkdir()
    return folder / "sub"


@pytest.mark.parametrize("make, pattern", [
    (lambda d: d / "missing.txt", "no such file"),
    (_empty_dir, "no .txt files"),
    (_file("e.txt", b""), "empty"),
    (_file("b.txt", b"abc\xff\xfedef"), "byte offset 3"),
    (_file("n.txt", b"ab\x00"), "NUL byte"),
    (_file("s.txt", b"short text"), "too short"),
])
def test_bad_corpora_get_one_line_and_exit_2(tmp_path, capsys, make, pattern):
    path = make(tmp_path)
    code, _, err = run(capsys, "train", path, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "r")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "ck").exists()  # bad input leaves nothing behind


def test_bad_generate_inputs_get_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "generate", tmp_path)[::2], "not a textgen bundle")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--prime", "Q@")[::2], "'Q'")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--temperature", "-1")[::2], "temperature")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--length", "0")[::2], "length")
    assert_one_line_error(*run(capsys, "train", "x.txt", "--level", "bytes")[::2], "level")
    assert_one_line_error(*run(capsys, "train", "x.txt", "--no-such-flag")[::2], "unrecognized")


def test_out_of_range_hyperparameters_are_refused(tmp_path, capsys, corpus_file):
    code, _, err = run(capsys, "train", corpus_file, "--dropout", "1.5", "--checkpoint-dir", tmp_path / "ck")
    assert_one_line_error(code, err, "dropout")


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"textgen {__version__}"


def test_real_process_hides_tensorflow_logs_and_prints_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "textgen", "generate", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"textgen: error: {tmp_path}: not a textgen bundle (no config.json)"]
