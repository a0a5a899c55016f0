"""Resume state: everything needed to continue a run exactly, in NAME/resume/.

    checkpoints/NAME/resume/
        state.json          the bundle's document (textgen.bundle.build_document): the
                            Config, loop counters as "state", the sha256 of the two files below
        tokenizer.json      the run's tokenizer
        variables.npz       every variable, in creation order: "model/0007", "optimizer/0012"

A save writes the new state whole into `.resume-new/`, then swaps it in with two renames
(`resume` -> `.resume-old`, `.resume-new` -> `resume`); a crash between them (fault point
resume-swapped) leaves `.resume-old`, which loading falls back to. Nothing is pickled.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from textgen.atomic import fault_point, fsync, write_json_atomic
from textgen.bundle import TOKENIZER_FILE, BundleError, build_document, load_tokenizer, pick_file, read_document
from textgen.config import Config
from textgen.corpus_cache import sha256_file

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
    optimizer's (moments, iteration) in creation order, crash-consistently (see the
    module docstring); return the resume folder.
    """

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
        fsync(new / name)
    files = {name: sha256_file(new / name) for name in (ARRAYS_FILE, TOKENIZER_FILE)}
    write_json_atomic(new / STATE_FILE, build_document(config, progress, files))
    if current.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(current, old)
        fault_point("resume-swapped")
    os.replace(new, current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def load_resume_state(bundle_dir: Path) -> ResumeState:
    """Read and verify NAME/resume/ (or the previous state a crash left); no pickle."""

    bundle_dir = Path(bundle_dir)
    folder = next((bundle_dir / n for n in (RESUME_DIR, ".resume-old") if (bundle_dir / n / STATE_FILE).is_file()), None)
    if folder is None:
        raise BundleError(f"{bundle_dir}: no resume state to continue from ({bundle_dir / RESUME_DIR} is missing)")
    document, config = read_document(folder, STATE_FILE)
    arrays_file = pick_file(folder, ARRAYS_FILE, document["files"])
    tokenizer = load_tokenizer(pick_file(folder, TOKENIZER_FILE, document["files"]), config)
    try:
        with np.load(arrays_file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise BundleError(f"{arrays_file}: unreadable ({err})") from None
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
