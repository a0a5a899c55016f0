"""Bundles: one folder holding everything needed to generate or continue.

    checkpoints/NAME/
        config.json         format_version, versions, the whole Config, training state,
                            and the sha256 of the two files below
        tokenizer.json      a `tokenizers.Tokenizer`
        model.weights.h5    Keras weights (HDF5, no pickle, no code)
        resume/             the resume state (textgen.resume)

Writing is crash-consistent (textgen.atomic): every new file is written under a
temporary name and fsynced; the current weights and tokenizer are hard-linked to
`.prev.*` names; the new files are renamed into place and config.json (naming the
hashes of the files it belongs with) goes last. A crash at any point leaves config.json
whose hashed files are on disk, either under their own names or as `.prev.*`, and
loading picks them by hash, so the last complete bundle always loads and a torn pair is
never paired. A save's fault points: files-written, previous-kept, weights-renamed,
tokenizer-renamed, config-renamed.

Loading rebuilds the architecture from a validated config.json, checks that the
weights file holds exactly the variables (names, shapes, float dtype) that
architecture has and nothing else (no links to other files), then loads them and
refuses non-finite values: opening a bundle never deserializes code from it, and a
bundle is loaded whole or refused, never half-loaded. `bundle_info` reads config.json
alone and imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from textgen import __version__
from textgen.atomic import (commit, fault_point, fsync, link_or_copy, remove_stale_temporaries, temporary_name,
                            unlink, write_json_atomic)
from textgen.config import FORMAT_VERSION, Config, ConfigError, TextgenError
from textgen.corpus_cache import sha256_file
from textgen.tokenizer import is_panic, spec_level, tokenizer_level

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.weights.h5"
PREVIOUS = ".prev."  # prefix of the last complete bundle's files while a save is under way
_TOP_KEYS = {"format_version", "versions", "config", "state", "files"}
OPTIMIZER_GROUP = "optimizer/"  # where Keras saves a compiled model's optimizer variables
_MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB; refuse to parse a huge one


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


def build_document(config: Config, state: dict, files: dict[str, str]) -> dict[str, Any]:
    """The JSON document of a bundle's config.json and of a resume state's state.json.

    `files`: {file name: sha256} of the files the document vouches for.
    """
    return {"format_version": FORMAT_VERSION, "versions": _versions(),
            "config": config.to_dict(), "state": state, "files": files}


def save_bundle(path: Path, model, tokenizer: Tokenizer, config: Config, state: dict) -> Path:
    """Write a bundle crash-consistently (see the module docstring); return its folder.

    On an OSError (a full disk, a vanished folder) the new files are removed, the
    previous bundle is left as it was, and BundleError says so.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    weights_tmp, tokenizer_tmp = temporary_name(path / WEIGHTS_FILE), temporary_name(path / TOKENIZER_FILE)
    renamed: list[str] = []
    files: dict[str, str] = {}
    try:
        model.save_weights(str(weights_tmp))
        tokenizer.save(str(tokenizer_tmp))
        for tmp in (weights_tmp, tokenizer_tmp):
            fsync(tmp)
        files = {WEIGHTS_FILE: sha256_file(weights_tmp), TOKENIZER_FILE: sha256_file(tokenizer_tmp)}
        document = build_document(config, state, files)
        fault_point("files-written")
        _keep_previous(path)
        fault_point("previous-kept")
        for tmp, name, point in ((weights_tmp, WEIGHTS_FILE, "weights-renamed"),
                                 (tokenizer_tmp, TOKENIZER_FILE, "tokenizer-renamed")):
            commit(tmp, path / name)
            renamed.append(name)
            fault_point(point)
        write_json_atomic(path / CONFIG_FILE, document)
        fault_point("config-renamed")
    except OSError as err:
        if not _config_names(path, files):  # failed before config.json took the new files
            _roll_back(path, renamed, [weights_tmp, tokenizer_tmp])
            raise BundleError(f"{path}: could not save the bundle ({err.strerror or err}); "
                              "the previous bundle is kept") from None
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        unlink(path / (PREVIOUS + name))  # config.json now names the new files
    return path


def _config_names(path: Path, files: dict[str, str]) -> bool:
    """Whether the bundle's config.json already vouches for exactly these files."""
    try:
        return bool(files) and read_config(path)["files"] == files
    except BundleError:
        return False


def _keep_previous(path: Path) -> None:
    """Hard-link the current bundle's files to `.prev.*` so a torn save can fall back.

    Only files that config.json's hashes vouch for are kept: after a crash the
    `.prev.*` copy may be the good one and the main name a torn newer file.
    """
    try:
        hashes = read_config(path)["files"]
    except BundleError:
        return  # no complete bundle yet: nothing to keep
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        current, previous = path / name, path / (PREVIOUS + name)
        if current.is_file() and sha256_file(current) == hashes.get(name):
            unlink(previous)
            link_or_copy(current, previous)


def _roll_back(path: Path, renamed: list[str], temporaries: list[Path]) -> None:
    """Undo a failed save as far as the disk allows; loading copes with whatever is left."""
    for tmp in temporaries:
        unlink(tmp)
    for name in renamed:
        previous = path / (PREVIOUS + name)
        if previous.is_file():
            try:
                os.replace(previous, path / name)  # a rename needs no free space
            except OSError:
                pass


def load_bundle(path: Path | str) -> Bundle:
    """Load and verify a bundle; any inconsistency raises BundleError with one clear line."""
    path = Path(path)
    document, config = read_document(path)
    if config.model.vocab_size < 2:
        raise BundleError(f"{path}: invalid config.json (model.vocab_size must be at least 2)")
    weights = pick_file(path, WEIGHTS_FILE, document["files"])
    tokenizer = load_tokenizer(pick_file(path, TOKENIZER_FILE, document["files"]), config)
    model = _load_model(weights, config)
    return Bundle(path, config, tokenizer, model, dict(document["state"]))


def read_document(path: Path, name: str = CONFIG_FILE) -> tuple[dict[str, Any], Config]:
    """config.json (or resume/state.json) of a folder, and the validated Config in it."""
    document = read_config(path, name)
    try:
        return document, Config.from_dict(document["config"])
    except (ConfigError, TypeError) as err:
        raise BundleError(f"{path}: invalid {name} ({err})") from None


def read_config(path: Path, name: str = CONFIG_FILE) -> dict[str, Any]:
    """The parsed, structurally checked config.json (or resume state.json) of a folder."""
    path = Path(path)
    config_path = path / name
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    if not config_path.is_file():
        raise BundleError(f"{path}: not a textgen bundle (no {name})")
    try:
        if config_path.stat().st_size > _MAX_CONFIG_BYTES:
            raise BundleError(f"{config_path}: too large for a textgen config")
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{config_path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(document, dict) or "format_version" not in document:
        raise BundleError(f"{config_path}: not a textgen config (no format_version)")
    if document["format_version"] != FORMAT_VERSION or isinstance(document["format_version"], bool):
        raise BundleError(
            f"{config_path}: format_version {document['format_version']!r} is not supported "
            f"(this textgen reads {FORMAT_VERSION})"
        )
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise BundleError(f"{config_path}: unknown keys {sorted(unknown)}")
    if not isinstance(document.get("files"), dict) or "config" not in document:
        raise BundleError(f"{config_path}: incomplete config (no files or config section)")
    if not isinstance(document.get("state", {}), dict) or not isinstance(document.get("versions", {}), dict):
        raise BundleError(f"{config_path}: state and versions must be JSON objects")
    document.setdefault("state", {})
    return document


def pick_file(path: Path, name: str, hashes: dict[str, Any]) -> Path:
    """The file the document's sha256 names: `name`, or `.prev.name` after a torn save."""
    expected = hashes.get(name)
    for candidate in (path / name, path / (PREVIOUS + name)):
        if candidate.is_file() and sha256_file(candidate) == expected:
            return candidate
    if not (path / name).is_file():
        raise BundleError(f"{path}: bundle is missing {name}")
    raise BundleError(f"{path / name}: contents do not match the sha256 recorded beside it (torn or edited bundle)")


def load_tokenizer(file: Path, config: Config) -> Tokenizer:
    """A saved tokenizer, checked against the config's level and vocabulary size.

    Its parts are checked against what textgen writes before `tokenizers` builds anything:
    a foreign normalizer or regex can make the library panic, here or on every encode.
    """
    try:
        text = file.read_text(encoding="utf-8")
        check_tokenizer_parts(json.loads(text))
        tokenizer = Tokenizer.from_str(text)
        level = tokenizer_level(tokenizer)  # worked out once here, remembered for every encode
    except BaseException as err:  # tokenizers raises plain Exceptions, or panics (a BaseException)
        if not isinstance(err, Exception) and not is_panic(err):
            raise
        raise BundleError(f"{file}: not a textgen tokenizer ({_first_line(err)})") from None
    if level != config.tokenizer.level:
        raise BundleError(f"{file}: tokenizer is {level} level but config says {config.tokenizer.level}")
    if tokenizer.get_vocab_size() != config.model.vocab_size:
        raise BundleError(
            f"{file}: tokenizer has {tokenizer.get_vocab_size():,} tokens but config says "
            f"vocab_size {config.model.vocab_size:,}"
        )
    return tokenizer


# The parts of a tokenizer.json textgen writes, by type (None: absent). The pre-tokenizer's
# pattern is one of textgen's own (`spec_level`); word level may lowercase.
_TOKENIZER_PARTS = {"normalizer": {None, "Lowercase"}, "pre_tokenizer": {"Split", "ByteLevel"},
                    "model": {"WordLevel", "BPE"}, "decoder": {"Fuse", "ByteLevel"}, "post_processor": {None}}


def check_tokenizer_parts(spec: Any) -> None:
    """Refuse a tokenizer description with any part textgen does not write (ValueError)."""
    if not isinstance(spec, dict):
        raise ValueError("not a JSON object")
    for part, allowed in _TOKENIZER_PARTS.items():
        value = spec.get(part)
        kind = value.get("type") if isinstance(value, dict) else value
        if kind not in allowed:
            raise ValueError(f"its {part} {kind!r} is not one textgen writes")
    spec_level(spec)


def _load_model(file: Path, config: Config):
    """Build the config's architecture and fill it from `file`, all or nothing."""

    from textgen.model import build_model

    found = weights_layout(file)
    if sum(int(np.prod(shape)) for shape in found.values()) != config.model.parameter_count():
        raise BundleError(f"{file}: weights do not fit config (the file holds "
                          f"{sum(int(np.prod(s)) for s in found.values()):,} numbers, the config's "
                          f"model has {config.model.parameter_count():,})")
    model = build_model(config.model)
    expected = _expected_layout(model)
    if found != expected:
        wrong = sorted(set(found.items()) ^ set(expected.items()))[0][0]
        raise BundleError(f"{file}: weights do not fit config (variable {wrong} differs)")
    try:
        model.load_weights(str(file))
    except Exception as err:  # h5py/Keras raise many types for damaged files
        raise BundleError(f"{file}: weights do not fit config ({_first_line(err)})") from None
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise BundleError(f"{file}: weights contain NaN or infinite values")
    return model


def weights_layout(file: Path) -> dict[str, tuple[int, ...]]:
    """{variable path: shape} of a Keras .weights.h5 file, refusing anything but plain data.

    Links to other files, external or virtual storage and non-float datasets are
    refused: a weights file must hold its numbers itself. The optimizer's variables
    (saved by a compiled model, for resuming) are checked the same way but not listed:
    loading for generation ignores them.
    """
    import h5py

    layout: dict[str, tuple[int, ...]] = {}
    try:
        with h5py.File(file, "r") as handle:
            links: list[tuple[str, Any]] = []
            handle.visititems_links(lambda name, link: links.append((name, link)))  # None: keep going
            for name, link in links:
                if not isinstance(link, h5py.HardLink):
                    raise BundleError(f"{file}: weights file links to other data ({name})")
                item = handle[name]
                if isinstance(item, h5py.Dataset):
                    optimizer = name.startswith(OPTIMIZER_GROUP)  # its step counter is an integer
                    if item.is_virtual or item.external or item.dtype.kind not in ("fiu" if optimizer else "f"):
                        raise BundleError(f"{file}: weights file has an unexpected dataset ({name})")
                    if not optimizer:
                        layout[name] = tuple(int(n) for n in item.shape)
    except BundleError:
        raise
    except Exception as err:  # truncated or not HDF5 at all
        raise BundleError(f"{file}: not a readable weights file ({_first_line(err)})") from None
    return layout


def _expected_layout(model) -> dict[str, tuple[int, ...]]:
    """The layout Keras writes for `model`, found by writing it (robust to Keras' naming)."""
    with tempfile.TemporaryDirectory(prefix="textgen-layout-") as folder:
        reference = Path(folder) / "reference.weights.h5"
        model.save_weights(str(reference))
        return weights_layout(reference)


def bundle_info(path: Path | str) -> dict[str, Any]:
    """What `textgen info` shows: config, size, training progress and provenance of a bundle.

    Reads config.json only: the weights are neither read nor checked, and the parameter
    count comes from the config (ModelConfig.parameter_count), so no Keras is imported.
    """
    path = Path(path)
    document, config = read_document(path)
    state = dict(document.get("state") or {})
    best = state.get("best_val_loss", state.get("val_loss"))
    chars_per_token = state.get("chars_per_token") or (1.0 if config.tokenizer.level == "char" else None)
    best_bits = best / (math.log(2) * chars_per_token) if best is not None and chars_per_token else None
    return {
        "path": str(path), "name": config.name, "format_version": document["format_version"],
        "versions": document.get("versions", {}), "config": config.to_dict(),
        "parameters": config.model.parameter_count(),
        "vocab_size": config.model.vocab_size, "level": config.tokenizer.level,
        "epoch": state.get("epoch"), "step": state.get("step"),
        "best_val_loss": best, "best_val_bits_per_char": best_bits, "corpus": config.corpus,
    }


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"textgen": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
