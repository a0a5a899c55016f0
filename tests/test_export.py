"""textgen export: each format, run in its own runtime, gives textgen's own logits; the README's
ONNX example decodes with onnxruntime and tokenizers alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from textgen import export
from tests.conftest import TINY
from textgen.cli import main

STEPS = 50
PRIME = "The cat sat"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """Every format of the session's tiny bundle, exported once."""
    root = tmp_path_factory.mktemp("exported")
    return {fmt: export.export(tiny_bundle, fmt, root / fmt) for fmt in export.FORMATS}


@pytest.fixture(scope="module")
def reference(tiny_generator) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of 50 tokens (a prime, then textgen's greedy continuation; and another prime's),
    with the logits textgen's NumPy stepper gives after each: (2, 50) ids, (2, 50, vocab) logits."""
    rows = []
    for prime in (PRIME, "A dog ran"):
        text = tiny_generator.generate(prime, length=STEPS, temperature=0)
        rows.append(tiny_generator.encode_prime(text)[:STEPS])
    ids = np.stack(rows).astype(np.int32)
    logits, _ = tiny_generator.forward(ids, tiny_generator.zero_states(2))
    return ids, logits


def _runner(fmt: str, folder: Path):
    """feed {name: array} -> {name: array}, with the format's own runtime."""
    if fmt == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(str(folder / "saved_model")).signatures["serve"]
        return lambda feed: {k: v.numpy() for k, v in serve(**{k: tf.constant(v) for k, v in feed.items()}).items()}
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(folder / "model.tflite")).get_signature_runner()
        return lambda feed: runner(**feed)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return lambda feed: dict(zip(names, session.run(names, feed)))


@pytest.mark.parametrize("fmt", sorted(export.FORMATS))
def test_exported_step_matches_textgen_logits_over_50_steps(fmt, exported, reference):
    ids, expected = reference
    spec = json.loads((exported[fmt] / export.SIGNATURE_FILE).read_text())
    run = _runner(fmt, exported[fmt])
    states = {name: np.zeros((2, spec["units"]), np.float32) for name in spec["state_inputs"]}
    for t in range(STEPS):
        out = run({"tokens": ids[:, t], **states})
        np.testing.assert_allclose(out["logits"], expected[:, t], atol=1e-4, rtol=0, err_msg=f"step {t}")
        states = {name: out[name + "_next"] for name in spec["state_inputs"]}


def test_export_folder_carries_tokenizer_and_signature(exported, tiny_generator):
    folder = exported["onnx"]
    spec = json.loads((folder / export.SIGNATURE_FILE).read_text())
    m = tiny_generator.config.model
    assert spec["state_inputs"] == ["h_0", "c_0", "h_1", "c_1"][: 2 * m.layers]
    assert spec["state_outputs"] == [n + "_next" for n in spec["state_inputs"]]
    assert spec["outputs"]["logits"]["shape"] == ["batch", m.vocab_size]
    tok = tiny_generator.tokenizer
    assert spec["banned_ids"] == [tok.token_to_id("[UNK]"), tok.token_to_id("[DOC]")]
    assert spec["start_id"] == tok.token_to_id("\n") and spec["lowercase"] is False
    assert "no_glue" not in spec  # a word-level rule
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).to_str() == tok.to_str()


def test_word_level_lowercase_signature_says_so_and_carries_the_no_glue_ids(corpus_file, tmp_path):
    import textgen
    from textgen.tokenizer import word_edges

    bundle = textgen.train(str(corpus_file), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           level="word", lowercase=True, max_steps=2, **TINY)
    folder = export.export(bundle, "saved_model", tmp_path / "out")
    spec = json.loads((folder / export.SIGNATURE_FILE).read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ends, starts = word_edges(tokenizer)
    assert spec["level"] == "word" and spec["lowercase"] is True
    assert spec["no_glue"]["ends_word"] == np.flatnonzero(ends).tolist()
    assert spec["no_glue"]["starts_word"] == np.flatnonzero(starts).tolist()
    assert tokenizer.encode("The CAT").tokens == tokenizer.encode("the cat").tokens  # tokenizer.json folds case


def test_missing_converter_is_one_line_naming_the_extra(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    assert main(["export", str(tiny_bundle), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "textgen: error: exporting to onnx needs tf2onnx: pip install 'textgen[export]'"
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_folder_in_use(tiny_bundle, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_bundle), "--format", "litert", "--out", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["keep.txt"]


def _readme_onnx_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "onnxruntime" in b]
    return code


def _run_without_textgen(code: str, cwd: Path) -> str:
    """Run `code` where importing textgen, TensorFlow or Keras fails."""
    guard = "import sys\nfor name in ('textgen', 'tensorflow', 'keras'):\n    sys.modules[name] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", guard + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _sample_with_textgen_logits(generator, prime: str, temperature: float, length: int = 200) -> str:
    """The README example's draws (same seed, same formula) over textgen's own NumPy logits."""
    tok = generator.tokenizer
    ids, rng = list(generator.encode_prime(prime)), np.random.default_rng(1)
    logits, states = generator.forward(np.array([ids], np.int32), generator.zero_states(1))
    for _ in range(length):
        z = logits[0, -1].astype(np.float64)
        z[[tok.token_to_id("[UNK]"), tok.token_to_id("[DOC]")]] = -np.inf
        p = np.exp((z - z.max()) / temperature)
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
        logits, states = generator.forward(np.array([ids[-1:]], np.int32), states)
    return tok.decode(ids) + "\n"


def test_readme_onnx_example_decodes_like_textgen(exported, tiny_generator, tmp_path):
    code = _readme_onnx_example()
    (tmp_path / "shakespeare-onnx").symlink_to(exported["onnx"])
    assert len(_run_without_textgen(code, tmp_path)) > 200  # as written (the tiny model lacks some of ROMEO:)
    settings = '"ROMEO:", 0.8'
    assert code.count(settings) == 1
    sampled = _run_without_textgen(code.replace(settings, f'"{PRIME}", 0.8'), tmp_path)
    assert sampled == _sample_with_textgen_logits(tiny_generator, PRIME, 0.8)
    greedy = _run_without_textgen(code.replace(settings, f'"{PRIME}", 0'), tmp_path)
    assert greedy == tiny_generator.generate(PRIME, length=200, temperature=0) + "\n"
