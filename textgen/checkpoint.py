"""Checkpoint bundles: one folder holding everything needed to generate or continue.

    checkpoints/NAME/
        config.json         format_version, versions, the whole Config, training state,
                            and the sha256 of the two files below
        tokenizer.json      a `tokenizers.Tokenizer`
        model.weights.h5    Keras weights (HDF5, no pickle, no code)

Writing is crash-consistent: every new file is written under a temporary name and
fsynced; the current weights and tokenizer are hard-linked to `.prev.*` names; the
new files are renamed into place and config.json (naming the hashes of the files it
belongs with) goes last. A crash at any point leaves config.json whose hashed files
are on disk, either under their own names or as `.prev.*`, and loading picks them by
hash, so the last complete bundle always loads and a torn pair is never paired.

Loading rebuilds the architecture from a validated config.json, checks that the
weights file holds exactly the variables (names, shapes, float dtype) that
architecture has and nothing else (no links to other files), then loads them and
refuses non-finite values: opening a bundle never deserializes code from it, and a
bundle is loaded whole or refused, never half-loaded.

Fault injection for tests (kill -9 and full-disk at a chosen moment of a save):
TEXTGEN_CRASH_AT=POINT[:N] ends the process with os._exit at the N-th time (default
1st) a save reaches POINT; TEXTGEN_FAIL_AT=POINT[:N] raises ENOSPC there instead.
POINTs: files-written, previous-kept, weights-renamed, tokenizer-renamed, config-renamed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from textgen import __version__
from textgen.config import FORMAT_VERSION, Config, ConfigError, TextgenError
from textgen.corpus_cache import sha256_file
from textgen.tokenizer import tokenizer_level

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.weights.h5"
PREVIOUS = ".prev."  # prefix of the last complete bundle's files while a save is under way
_TOP_KEYS = {"format_version", "versions", "config", "state", "files"}
OPTIMIZER_GROUP = "optimizer/"  # where Keras saves a compiled model's optimizer variables
_MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB; refuse to parse a huge one
_CRASH_EXIT = 137  # what a kill -9 looks like to a shell


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
    """Write a bundle crash-consistently (see the module docstring); return its folder.

    On an OSError (a full disk, a vanished folder) the new files are removed, the
    previous bundle is left as it was, and BundleError says so.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    weights_tmp = path / f".tmp-{os.getpid()}.{WEIGHTS_FILE}"  # Keras insists on the .weights.h5 suffix
    tokenizer_tmp = path / f".tmp-{os.getpid()}.{TOKENIZER_FILE}"
    renamed: list[str] = []
    files: dict[str, str] = {}
    try:
        model.save_weights(str(weights_tmp))
        tokenizer.save(str(tokenizer_tmp))
        for tmp in (weights_tmp, tokenizer_tmp):
            _fsync(tmp)
        files = {WEIGHTS_FILE: sha256_file(weights_tmp), TOKENIZER_FILE: sha256_file(tokenizer_tmp)}
        document = {"format_version": FORMAT_VERSION, "versions": _versions(),
                    "config": config.to_dict(), "state": state, "files": files}
        fault_point("files-written")
        _keep_previous(path)
        fault_point("previous-kept")
        for tmp, name, point in ((weights_tmp, WEIGHTS_FILE, "weights-renamed"),
                                 (tokenizer_tmp, TOKENIZER_FILE, "tokenizer-renamed")):
            _commit(tmp, path / name)
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
        _unlink(path / (PREVIOUS + name))  # config.json now names the new files
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
            _unlink(previous)
            _link_or_copy(current, previous)


def _roll_back(path: Path, renamed: list[str], temporaries: list[Path]) -> None:
    """Undo a failed save as far as the disk allows; loading copes with whatever is left."""
    for tmp in temporaries:
        _unlink(tmp)
    for name in renamed:
        previous = path / (PREVIOUS + name)
        if previous.is_file():
            try:
                os.replace(previous, path / name)  # a rename needs no free space
            except OSError:
                pass


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of saves that died (kill -9) are garbage: one writer per bundle."""
    for stale in path.glob(".tmp-*"):
        _unlink(stale)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # FAT, some network file systems: no hard links
        shutil.copyfile(source, target)
        _fsync(target)


def _unlink(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # left-over files are harmless: loading goes by config.json's hashes


def fault_point(point: str) -> None:
    """Crash (TEXTGEN_CRASH_AT) or fail with ENOSPC (TEXTGEN_FAIL_AT) here, for tests.

    The value is POINT or POINT:N: the N-th time this point is reached while the
    variable holds that value. Hand-written because no library injects faults between
    two renames of our own.
    """
    for variable in ("TEXTGEN_CRASH_AT", "TEXTGEN_FAIL_AT"):
        value = os.environ.get(variable, "")
        wanted, _, nth = value.partition(":")
        if wanted != point:
            continue
        _hits[(variable, value)] = _hits.get((variable, value), 0) + 1
        if _hits[(variable, value)] == int(nth or 1):
            if variable == "TEXTGEN_CRASH_AT":
                os._exit(_CRASH_EXIT)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_hits: dict[tuple[str, str], int] = {}


def load_bundle(path: Path | str) -> Bundle:
    """Load and verify a bundle; any inconsistency raises BundleError with one clear line."""
    path = Path(path)
    document, config = read_document(path)
    if config.model.vocab_size < 2:
        raise BundleError(f"{path}: invalid config.json (model.vocab_size must be at least 2)")
    weights = _pick_file(path, WEIGHTS_FILE, document["files"])
    tokenizer = _load_tokenizer(_pick_file(path, TOKENIZER_FILE, document["files"]), config)
    model = _load_model(weights, config)
    return Bundle(path, config, tokenizer, model, dict(document["state"]))


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


def _verify_files(path: Path, files: dict[str, Any], names=(WEIGHTS_FILE, TOKENIZER_FILE)) -> None:
    for name in names:
        _pick_file(path, name, files)


def _pick_file(path: Path, name: str, hashes: dict[str, Any]) -> Path:
    """The file config.json's sha256 names: `name`, or `.prev.name` after a torn save."""
    expected = hashes.get(name)
    for candidate in (path / name, path / (PREVIOUS + name)):
        if candidate.is_file() and sha256_file(candidate) == expected:
            return candidate
    if not (path / name).is_file():
        raise BundleError(f"{path}: bundle is missing {name}")
    raise BundleError(f"{path / name}: contents do not match the sha256 recorded beside it (torn or edited bundle)")


def _load_tokenizer(file: Path, config: Config) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(file))
        level = tokenizer_level(tokenizer)
    except Exception as err:  # the tokenizers library raises plain Exceptions
        raise BundleError(f"{file}: not a textgen tokenizer ({_first_line(err)})") from None
    if level != config.tokenizer.level:
        raise BundleError(f"{file}: tokenizer is {level} level but config says {config.tokenizer.level}")
    if tokenizer.get_vocab_size() != config.model.vocab_size:
        raise BundleError(
            f"{file}: tokenizer has {tokenizer.get_vocab_size():,} tokens but config says "
            f"vocab_size {config.model.vocab_size:,}"
        )
    return tokenizer


def _load_model(file: Path, config: Config):
    """Build the config's architecture and fill it from `file`, all or nothing."""
    import numpy as np

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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_document(path: Path, name: str = CONFIG_FILE) -> tuple[dict[str, Any], Config]:
    """config.json (or resume/state.json) of a folder, and the validated Config in it."""
    document = read_config(path, name)
    try:
        return document, Config.from_dict(document["config"])
    except (ConfigError, TypeError) as err:
        raise BundleError(f"{path}: invalid {name} ({err})") from None


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to a temporary file, fsync it and rename it over `path`."""
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file, fsync it and rename it over `path`."""
    tmp = path.with_name(f".tmp-{os.getpid()}.{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        _commit(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _fsync(file: Path) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _commit(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it into place, fsync the folder."""
    _fsync(tmp)
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
    optimizer's (moments, iteration) in creation order, crash-consistently.

    The new state is written whole into `.resume-new/`, then swapped in with two
    renames (`resume` -> `.resume-old`, `.resume-new` -> `resume`); a crash between
    them leaves `.resume-old`, which loading falls back to.
    """
    import numpy as np

    bundle_dir = Path(bundle_dir)
    new, current, old = (bundle_dir / n for n in (".resume-new", RESUME_DIR, ".resume-old"))
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    arrays = {f"model/{i:04d}": v.numpy() for i, v in enumerate(trainer.state_variables())}
    arrays |= {f"optimizer/{i:04d}": v.numpy() for i, v in enumerate(trainer.optimizer.variables)}
    with open(new / ARRAYS_FILE, "wb") as f:
        np.savez(f, **arrays)
    tokenizer.save(str(new / TOKENIZER_FILE))
    for name in (ARRAYS_FILE, TOKENIZER_FILE):
        _fsync(new / name)
    files = {name: sha256_file(new / name) for name in (ARRAYS_FILE, TOKENIZER_FILE)}
    document = {"format_version": FORMAT_VERSION, "versions": _versions(), "config": config.to_dict(),
                "state": progress, "files": files}
    write_json_atomic(new / STATE_FILE, document)
    if current.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(current, old)
        fault_point("resume-swapped")
    os.replace(new, current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def load_resume_state(bundle_dir: Path) -> ResumeState:
    """Read and verify NAME/resume/ (or the previous state a crash left); no pickle."""
    import numpy as np

    bundle_dir = Path(bundle_dir)
    folder = next((bundle_dir / n for n in (RESUME_DIR, ".resume-old") if (bundle_dir / n / STATE_FILE).is_file()), None)
    if folder is None:
        raise BundleError(f"{bundle_dir}: no resume state to continue from ({bundle_dir / RESUME_DIR} is missing)")
    document, config = read_document(folder, STATE_FILE)
    _verify_files(folder, document["files"], (ARRAYS_FILE, TOKENIZER_FILE))
    tokenizer = _load_tokenizer(folder / TOKENIZER_FILE, config)
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


def bundle_info(path: Path | str) -> dict[str, Any]:
    """What `textgen info` shows: config, size, training progress and provenance of a bundle.

    Reads config.json only (the weights are not loaded); the parameter count comes from
    building the network the config describes, so it is exact for any layer type.
    """
    import math

    from textgen.model import build_model

    path = Path(path)
    document, config = read_document(path)
    state = dict(document.get("state") or {})
    best = state.get("best_val_loss", state.get("val_loss"))
    chars_per_token = state.get("chars_per_token") or (1.0 if config.tokenizer.level == "char" else None)
    best_bits = best / (math.log(2) * chars_per_token) if best is not None and chars_per_token else None
    return {
        "path": str(path), "name": config.name, "format_version": document["format_version"],
        "versions": document.get("versions", {}), "config": config.to_dict(),
        "parameters": build_model(config.model).count_params(),
        "vocab_size": config.model.vocab_size, "level": config.tokenizer.level,
        "epoch": state.get("epoch"), "step": state.get("step"),
        "best_val_loss": best, "best_val_bits_per_char": best_bits, "corpus": config.corpus,
    }
