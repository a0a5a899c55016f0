"""`textgen export BUNDLE --format {saved_model,litert,onnx} --out PATH`: the one-step generator.

The exported graph is one decoding step, so a caller in any runtime reads the prime one
token at a time and then generates one token per call, carrying the states:

    inputs   tokens (batch,) int32; h_0, c_0, h_1, c_1, ... (batch, units) float32
    outputs  logits (batch, vocab) float32; h_0_next, c_0_next, ... (batch, units) float32

(output names differ from the input names: tf2onnx cannot convert a graph whose output
is named like an input). It is built for export from `keras.layers.LSTMCell` over the
bundle's weights, not from the training model's FastLSTM, which picks an XLA loop or
cuDNN when traced; neither converts portably, while a cell is a few matrix products and
element-wise ops every converter knows. Keras' own `Model.export` writes each format
(TensorFlow's SavedModel; the TFLite converter for LiteRT; tf2onnx for ONNX), float32,
unquantized.

The output folder also holds tokenizer.json and signature.json: the input and output
names and shapes, the state layout per layer, the ids a sampler must never emit, the
start token for an empty prime, whether text is lowercased first (tokenizer.json's own
normalizer does it), and at word level the ids of the rule that keeps words apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from textgen import __version__
from textgen.bundle import load_bundle
from textgen.config import TextgenError
from textgen.generate import banned_ids, start_id
from textgen.tokenizer import folds_case, word_edges

FORMATS = {"saved_model": "saved_model", "litert": "model.tflite", "onnx": "model.onnx"}  # format -> file
KERAS_FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
NEEDS = {"onnx": ("tf2onnx", "onnx")}  # Python packages a format needs beyond TensorFlow
SIGNATURE_FILE = "signature.json"
TOKENIZER_FILE = "tokenizer.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `textgen export` arguments (cli.py adds the subcommand)."""
    p.add_argument("bundle", metavar="BUNDLE", help="a checkpoint folder, e.g. checkpoints/my_corpus")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to export to")
    p.add_argument("--out", required=True, metavar="PATH", help="a new (or empty) folder for the export")
    p.set_defaults(run=lambda args: _run(args.bundle, args.format, args.out))


def _run(bundle: str, format: str, out: str) -> int:
    folder = export(bundle, format, out)
    print(f"Exported {bundle} to {folder / FORMATS[format]} (with {TOKENIZER_FILE} and {SIGNATURE_FILE})")
    return 0


def export(bundle: str | Path, format: str, out: str | Path) -> Path:
    """Write the bundle's one-step generator in `format` into folder `out`; return the folder."""
    if format not in FORMATS:
        raise TextgenError(f"unknown export format {format!r} (choose from {', '.join(sorted(FORMATS))})")
    _check_packages(format)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TextgenError(f"{out} already exists and is not an empty folder; choose another --out")
    loaded = load_bundle(bundle)
    if loaded.config.model.cell != "lstm":  # the step model below is built from LSTMCell
        raise TextgenError(f"export supports LSTM bundles only; this one is {loaded.config.model.cell.upper()}")
    step = build_step_model(loaded.model, loaded.config.model)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        step.export(str(out / FORMATS[format]), format=KERAS_FORMATS[format], verbose=False)
    except BaseException:
        if created:  # leave no half-written export behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    loaded.tokenizer.save(str(out / TOKENIZER_FILE))
    signature = describe(loaded, format)
    (out / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")
    return out


def _check_packages(format: str) -> None:
    missing = [name for name in NEEDS.get(format, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise TextgenError(f"exporting to {format} needs {', '.join(missing)}: pip install 'textgen[export]'")


def state_names(layers: int, suffix: str = "") -> list[str]:
    """State input names in order, [h_0, c_0, h_1, c_1, ...]; suffix "_next" for the outputs."""
    return [f"{kind}_{i}{suffix}" for i in range(layers) for kind in ("h", "c")]


def build_step_model(trained, cfg):
    """A Keras model of one decoding step over the trained model's weights (copied by layer name).

    {tokens (batch,), h_i, c_i (batch, units)} -> {logits (batch, vocab), h_i_next, c_i_next}.
    """
    import keras  # inside: `textgen export --help` and the CLI stay free of Keras

    tokens = keras.Input(shape=(), dtype="int32", name="tokens")  # (batch,)
    x = keras.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, name="embedding")(tokens)  # (batch, E)
    inputs: dict[str, Any] = {"tokens": tokens}
    outputs: dict[str, Any] = {}
    cells = []
    for i in range(cfg.layers):
        h = keras.Input(shape=(cfg.units,), name=f"h_{i}")  # (batch, units)
        c = keras.Input(shape=(cfg.units,), name=f"c_{i}")
        cell = keras.layers.LSTMCell(cfg.units, activation="tanh", recurrent_activation="sigmoid", name=f"lstm_{i}")
        x, (h_next, c_next) = cell(x, [h, c])
        cells.append(cell)
        inputs |= {f"h_{i}": h, f"c_{i}": c}
        outputs |= {f"h_{i}_next": h_next, f"c_{i}_next": c_next}
    logits = keras.layers.Dense(cfg.vocab_size, name="logits")(x)  # (batch, vocab)
    step = keras.Model(inputs, {"logits": logits, **outputs}, name="textgen_step")
    for name in ("embedding", "logits"):
        step.get_layer(name).set_weights(trained.get_layer(name).get_weights())
    for i, cell in enumerate(cells):
        cell.set_weights(trained.get_layer(f"lstm_{i}").get_weights()[:3])  # kernel, recurrent, bias
    step({"tokens": np.zeros(1, np.int32), **{n: np.zeros((1, cfg.units), np.float32) for n in state_names(cfg.layers)}})
    return step  # called once: the ONNX export traces only a model that has run


def describe(bundle, format: str) -> dict[str, Any]:
    """signature.json: what a caller needs to drive the exported step without textgen."""
    m = bundle.config.model
    states = {"shape": ["batch", m.units], "dtype": "float32"}
    return {
        "format": format, "file": FORMATS[format], "textgen_version": __version__,
        "bundle": {"name": bundle.config.name, "step": bundle.state.get("step")},
        "inputs": {"tokens": {"shape": ["batch"], "dtype": "int32"}, **{n: states for n in state_names(m.layers)}},
        "outputs": {"logits": {"shape": ["batch", m.vocab_size], "dtype": "float32"},
                    **{n: states for n in state_names(m.layers, "_next")}},
        "layers": m.layers, "units": m.units, "vocab_size": m.vocab_size,
        "state_inputs": state_names(m.layers), "state_outputs": state_names(m.layers, "_next"),
        "state_layout": "per layer i: h_i then c_i, (batch, units) each; zeros start a text; "
                        "feed each step's X_next back as X",
        "banned_ids": banned_ids(bundle.tokenizer, bundle.config),
        "start_id": start_id(bundle.tokenizer, bundle.config),
        "level": bundle.config.tokenizer.level,
        "lowercase": folds_case(bundle.tokenizer),
        **_glue_rule(bundle.tokenizer),
    }


def _glue_rule(tokenizer) -> dict[str, Any]:
    """Word level: the ids ending and starting with a word character, for the no-glue rule
    (textgen.sampler.forbid_glue); nothing at char and bpe level, which have no such rule."""
    edges = word_edges(tokenizer)
    if edges is None:
        return {}
    ends, starts = edges
    return {"no_glue": {"rule": "after a token in ends_word, never sample one in starts_word "
                                "(two words would run together); unless that leaves no token",
                        "ends_word": np.flatnonzero(ends).tolist(), "starts_word": np.flatnonzero(starts).tolist()}}
