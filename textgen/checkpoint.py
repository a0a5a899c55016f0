"""Checkpoint bundles: one folder holding everything needed to generate or continue.

    checkpoints/NAME/
        config.json         format_version, versions, the whole Config, training state,
                            and the sha256 of the two files below
        tokenizer.json      a `tokenizers.Tokenizer`
        model.weights.h5    Keras weights (HDF5, no pickle, no code)

Writing: each file goes to a temporary name in the same folder, is fsynced and renamed
over the old one; config.json goes last and names the hashes of the files it belongs
with, so a crash between renames leaves a bundle whose hashes disagree, which loading
detects and refuses instead of pairing new weights with an old config.

Loading rebuilds the architecture from a validated config.json and then loads weights
by name and shape: opening a bundle never deserializes code from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from textgen import __version__
from textgen.config import FORMAT_VERSION, Config, ConfigError, TextgenError
from textgen.tokenizer import tokenizer_level

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.weights.h5"
_TOP_KEYS = {"format_version", "versions", "config", "state", "files"}


class BundleError(TextgenError):
    """A folder is not a loadable textgen bundle."""


@dataclass
class Bundle:
    """A loaded bundle: the training-view Keras model, its tokenizer, config and state."""

    path: Path
    config: Config
    tokenizer: Tokenizer
    model: Any  # keras.Model
    state: dict[str, Any] = field(default_factory=dict)  # epoch, step, val_loss, ...


def save_bundle(path: Path, model, tokenizer: Tokenizer, config: Config, state: dict) -> Path:
    """Write a bundle atomically file by file (config.json last); return its folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_tmp = path / f".tmp-{os.getpid()}.weights.h5"  # Keras insists on this suffix
    model.save_weights(str(weights_tmp))
    tokenizer_tmp = path / f".tmp-{os.getpid()}.tokenizer.json"
    tokenizer.save(str(tokenizer_tmp))
    files = {WEIGHTS_FILE: sha256_file(weights_tmp), TOKENIZER_FILE: sha256_file(tokenizer_tmp)}
    _commit(weights_tmp, path / WEIGHTS_FILE)
    _commit(tokenizer_tmp, path / TOKENIZER_FILE)
    document = {
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "config": config.to_dict(),
        "state": state,
        "files": files,
    }
    write_json_atomic(path / CONFIG_FILE, document)
    return path


def load_bundle(path: Path | str) -> Bundle:
    """Load and verify a bundle; any inconsistency raises BundleError with one clear line."""
    path = Path(path)
    document = read_config(path)
    try:
        config = Config.from_dict(document["config"])
    except (ConfigError, TypeError) as err:
        raise BundleError(f"{path}: invalid config.json ({err})") from None
    _verify_files(path, document["files"])
    tokenizer = _load_tokenizer(path, config)
    model = _load_model(path, config)
    return Bundle(path, config, tokenizer, model, dict(document.get("state") or {}))


def read_config(path: Path, name: str = CONFIG_FILE) -> dict[str, Any]:
    """The parsed, structurally checked config.json (or resume state.json) of a folder."""
    config_path = path / name
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    if not config_path.is_file():
        raise BundleError(f"{path}: not a textgen bundle (no {name})")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{config_path}: unreadable ({err})") from None
    if not isinstance(document, dict) or "format_version" not in document:
        raise BundleError(f"{config_path}: not a textgen config (no format_version)")
    if document["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{config_path}: format_version {document['format_version']!r} is not supported "
            f"(this textgen reads {FORMAT_VERSION})"
        )
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise BundleError(f"{config_path}: unknown keys {sorted(unknown)}")
    if not isinstance(document.get("files"), dict) or "config" not in document:
        raise BundleError(f"{config_path}: incomplete config (no files or config section)")
    return document


def _verify_files(path: Path, files: dict[str, Any], names=(WEIGHTS_FILE, TOKENIZER_FILE)) -> None:
    for name in names:
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: bundle is missing {name}")
        if files.get(name) != sha256_file(file):
            raise BundleError(
                f"{file}: contents do not match the sha256 recorded beside it (torn or edited bundle)"
            )


def _load_tokenizer(path: Path, config: Config) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        level = tokenizer_level(tokenizer)
    except Exception as err:  # the tokenizers library raises plain Exceptions
        raise BundleError(f"{path / TOKENIZER_FILE}: not a textgen tokenizer ({err})") from None
    if level != config.tokenizer.level:
        raise BundleError(f"{path}: tokenizer is {level} level but config says {config.tokenizer.level}")
    if tokenizer.get_vocab_size() != config.model.vocab_size:
        raise BundleError(
            f"{path}: tokenizer has {tokenizer.get_vocab_size():,} tokens but config says "
            f"vocab_size {config.model.vocab_size:,}"
        )
    return tokenizer


def _load_model(path: Path, config: Config):
    from textgen.model import build_model

    model = build_model(config.model)
    try:
        model.load_weights(str(path / WEIGHTS_FILE))
    except Exception as err:  # h5py/Keras raise many types for damaged or mismatched files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(f"{path / WEIGHTS_FILE}: weights do not fit config ({first_line})") from None
    return model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to a temporary file, fsync it and rename it over `path`."""
    tmp = path.with_name(f".tmp-{os.getpid()}.{path.name}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _commit(tmp, path)


def _commit(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it into place, fsync the folder."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    folder = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"textgen": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


# ---------------------------------------------------------------------------------
# Resume state: everything needed to continue a run exactly, in NAME/resume/.

RESUME_DIR = "resume"
STATE_FILE = "state.json"
ARRAYS_FILE = "variables.npz"


@dataclass
class ResumeState:
    """A saved training state: config, tokenizer, every variable, and loop counters."""

    config: Config
    tokenizer: Tokenizer
    arrays: dict[str, Any]  # "model/0007" or "optimizer/0012" -> np.ndarray
    progress: dict[str, Any]  # step, epoch, best_val_loss, wait


def save_resume_state(bundle_dir: Path, trainer, tokenizer: Tokenizer, config: Config,
                      progress: dict) -> Path:
    """Write the trainer's variables (weights, carried states, dropout seeds) and the
    optimizer's (moments, iteration) in creation order, atomically, state.json last."""
    import numpy as np

    folder = Path(bundle_dir) / RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{i:04d}": v.numpy() for i, v in enumerate(trainer.state_variables())}
    arrays |= {f"optimizer/{i:04d}": v.numpy() for i, v in enumerate(trainer.optimizer.variables)}
    arrays_tmp = folder / f".tmp-{os.getpid()}.{ARRAYS_FILE}"
    with open(arrays_tmp, "wb") as f:
        np.savez(f, **arrays)
    tokenizer_tmp = folder / f".tmp-{os.getpid()}.{TOKENIZER_FILE}"
    tokenizer.save(str(tokenizer_tmp))
    files = {ARRAYS_FILE: sha256_file(arrays_tmp), TOKENIZER_FILE: sha256_file(tokenizer_tmp)}
    _commit(arrays_tmp, folder / ARRAYS_FILE)
    _commit(tokenizer_tmp, folder / TOKENIZER_FILE)
    document = {"format_version": FORMAT_VERSION, "versions": _versions(), "config": config.to_dict(),
                "state": progress, "files": files}
    write_json_atomic(folder / STATE_FILE, document)
    return folder


def load_resume_state(bundle_dir: Path) -> ResumeState:
    """Read and verify NAME/resume/; no pickle (np.load with allow_pickle=False)."""
    import numpy as np

    folder = Path(bundle_dir) / RESUME_DIR
    if not (folder / STATE_FILE).is_file():
        raise BundleError(f"{bundle_dir}: no resume state to continue from ({folder / STATE_FILE} is missing)")
    document = read_config(folder, STATE_FILE)
    try:
        config = Config.from_dict(document["config"])
    except (ConfigError, TypeError) as err:
        raise BundleError(f"{folder}: invalid {STATE_FILE} ({err})") from None
    _verify_files(folder, document["files"], (ARRAYS_FILE, TOKENIZER_FILE))
    tokenizer = _load_tokenizer(folder, config)
    try:
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise BundleError(f"{folder / ARRAYS_FILE}: unreadable ({err})") from None
    return ResumeState(config, tokenizer, arrays, dict(document.get("state") or {}))


def restore_variables(variables: list, arrays: dict[str, Any], prefix: str) -> None:
    """Assign saved arrays to variables in creation order, checking count and shapes."""
    saved = sorted(key for key in arrays if key.startswith(prefix + "/"))
    if len(saved) != len(variables):
        raise BundleError(f"resume state has {len(saved)} {prefix} variables, the run has {len(variables)}")
    for key, var in zip(saved, variables):
        if tuple(arrays[key].shape) != tuple(var.shape):
            raise BundleError(f"resume state {key} has shape {arrays[key].shape}, expected {tuple(var.shape)}")
        var.assign(arrays[key])
