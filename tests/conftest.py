"""Shared fixtures: a small self-made corpus and one tiny trained bundle per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up lines out of test output

import pytest

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
OLD_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_v1"  # saved by textgen 0.1.0 (with resume/): must keep loading
# Config fields added after OLD_BUNDLE was written, with the value an old bundle means by leaving
# them out: a new save writes them, and nothing else of the old document may change.
ADDED_CONFIG_FIELDS = {"tokenizer": {"lowercase": False, "docs": "text", "label_field": None, "label_column": None},
                       "model": {"cell": "lstm"},
                       # what a config from before each field means
                       "train": {"dropout_min_epochs": 0.0, "final_lr_fraction": 0.1}}


def with_added_fields(document: dict) -> dict:
    """An old config.json/state.json document as today's code writes it back."""
    config = {key: {**value, **ADDED_CONFIG_FIELDS[key]} if key in ADDED_CONFIG_FIELDS else value
              for key, value in document["config"].items()}
    return {**document, "config": config}

# Tiny model settings: every test trains in seconds on two CPU cores.
TINY = dict(units=16, layers=2, embedding_dim=8, seq_len=16, batch_size=8, dropout=0.0, seed=1)
TINY_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]  # the same, as CLI flags


def bench_module(name: str):
    """bench/NAME.py loaded by its path (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_text(lines: int = 200) -> str:
    """A repetitive text with a small alphabet: a tiny LSTM learns it within a few dozen steps."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it"]
    out = []
    for i in range(lines):
        n = 4 + i % 5
        out.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(n)).capitalize() + ".")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session", autouse=True)
def token_cache_dir(tmp_path_factory) -> Path:
    """Token caches (and fetched corpora) go to a temporary folder, never the user's ~/.cache
    nor a checkout's corpora/ (TEXTGEN_CACHE_DIR set wins over the checkout)."""
    folder = tmp_path_factory.mktemp("textgen_cache")
    os.environ["TEXTGEN_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_text()


@pytest.fixture
def corpus_file(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


def train_tiny(tmp_path_factory, corpus_name: str, text: str, **options) -> Path:
    """A real tiny training run on `text` in a fresh folder (checkpoints/ and runs/ beside the corpus)."""
    import textgen

    root = tmp_path_factory.mktemp(Path(corpus_name).stem + "_run")
    corpus = root / corpus_name
    corpus.write_text(text, encoding="utf-8")
    return textgen.train(str(corpus), checkpoint_dir=root / "checkpoints", log_dir=root / "runs",
                         **{**TINY, **options})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """One real tiny training run, shared by every test that only reads a bundle."""
    return train_tiny(tmp_path_factory, "tiny.txt", make_text(), max_steps=40)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle (resume state included) that a test may edit or break."""
    import shutil

    return shutil.copytree(tiny_bundle, tmp_path / "copy")


@pytest.fixture(scope="session")
def tiny_generator(tiny_bundle: Path):
    import textgen

    return textgen.load(tiny_bundle)


@pytest.fixture
def shakespeare_mirror(monkeypatch, tmp_path: Path) -> Path:
    """Point corpus downloads at ../shared/corpora; skip where that folder is absent."""
    if not (SHARED_CORPORA / "tinyshakespeare.txt").is_file():
        pytest.skip("../shared/corpora/tinyshakespeare.txt is not available")
    monkeypatch.setenv("TEXTGEN_CORPUS_MIRROR", str(SHARED_CORPORA))
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path / "cache"))
    return SHARED_CORPORA


class Child:
    """`python -m textgen ARGS` in its own process group, for tests where a real process is the point.

    `command=` runs another program instead (tensorboard, a helper script). Use as a context
    manager: on the way out (a failed assertion included) the whole group is killed, so no
    process outlives its test. stdout and stderr are pipes unless `stderr=` names a file.
    """

    def __init__(self, *args, command: list | None = None, env: dict | None = None, cwd: Path | None = None,
                 stderr=None):
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "textgen"]), *map(str, args)], cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})},
            stdout=subprocess.PIPE, stderr=stderr or subprocess.PIPE, text=True, start_new_session=True,
        )

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait_for_line(self, text: str) -> str:
        """Read stdout until a line containing `text` (the child's "ready" line)."""
        for line in self.proc.stdout:
            if text in line:
                return line
        raise AssertionError(f"child ended without printing {text!r}: {self.proc.stderr.read()[-2000:]}")

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        """Wait for the exit; return (exit code, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def make_labelled_documents(count: int = 1200) -> str:
    """JSONL of short documents in two labels with disjoint alphabets ("low": abc, "up": XYZ),
    each a cycle through its letters: what follows a letter is certain, only the label says which
    alphabet a document starts in."""
    import json

    lines = []
    for i in range(count):
        label, letters = ("low", "abc") if i % 2 else ("up", "XYZ")
        text = "".join(letters[(i // 2 + j) % 3] for j in range(2 + i % 5))
        lines.append(json.dumps({"text": text, "kind": label}))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def labelled_bundle(tmp_path_factory) -> Path:
    """A tiny char-level documents bundle trained on make_labelled_documents (labels in field "kind")."""
    return train_tiny(tmp_path_factory, "docs.jsonl", make_labelled_documents(), docs="jsonl:text",
                      label_field="kind", max_steps=300, learning_rate=0.01, patience=100, units=32, seq_len=32)


@pytest.fixture(scope="session")
def lines_bundle(tmp_path_factory) -> Path:
    """A tiny char-level documents bundle (`--docs lines`) trained on make_text: each line a document."""
    return train_tiny(tmp_path_factory, "lines.txt", make_text(), docs="lines", max_steps=3)
