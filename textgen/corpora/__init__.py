"""Known corpora: a small registry of public texts that `train` accepts by name.

`registry.json` beside this file holds facts only (file name, URL, sha256, size,
licence), no text; it ships with the package, so an installed textgen knows them too.
A named corpus is downloaded once with `keras.utils.get_file` (checksum verified) into
`corpora_dir()` and reused afterwards:

- TEXTGEN_CACHE_DIR=DIR set: DIR/corpora (tests and CI set it: they never write into a
  checkout);
- else, running from a checkout (pyproject.toml and a `corpora/` folder beside the
  `textgen` package): that `corpora/` folder, where users drop their own texts too;
- else (an installed package): ~/.cache/textgen/corpora.

TEXTGEN_CORPUS_MIRROR=DIR reads DIR/<file> instead of the network (tests, offline use).
`pydoc` needs no network at all: it is built from the help topics every Python install
carries (`pydoc_data`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from textgen.config import TextgenError

_REGISTRY = Path(__file__).with_name("registry.json")
_PACKAGE = Path(__file__).resolve().parents[1]  # the textgen package folder


def registry() -> dict[str, dict[str, Any]]:
    """Name -> facts of every known corpus."""
    return json.loads(_REGISTRY.read_text(encoding="utf-8"))


def cache_dir() -> Path:
    """textgen's cache folder: TEXTGEN_CACHE_DIR, default ~/.cache/textgen (the one place
    that default is spelled; token caches and, outside a checkout, corpora live there)."""
    return Path(os.environ.get("TEXTGEN_CACHE_DIR") or Path.home() / ".cache" / "textgen")


def corpora_dir() -> Path:
    """Where named corpora are downloaded (see the module docstring for the order)."""
    checkout = source_checkout(_PACKAGE)
    if checkout is not None and not os.environ.get("TEXTGEN_CACHE_DIR"):
        return checkout / "corpora"
    return cache_dir() / "corpora"


def source_checkout(package: Path) -> Path | None:
    """The source tree `package` runs from (pyproject.toml and corpora/ beside it), else None."""
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "corpora").is_dir():
        return root
    return None


def fetch(name: str) -> Path:
    """Path of the known corpus `name`, downloading or building it on first use."""
    known = registry()
    if name not in known:
        raise TextgenError(f"unknown corpus {name!r} (known: {', '.join(sorted(known))})")
    entry = known[name]
    if entry.get("builtin") == "pydoc_data":
        return _build_pydoc(corpora_dir() / entry["file"])
    return _download(entry)


def _download(entry: dict[str, Any]) -> Path:
    import keras  # deferred: importing Keras starts TensorFlow

    mirror = os.environ.get("TEXTGEN_CORPUS_MIRROR")
    origin = entry["url"]
    if mirror:
        source = Path(mirror).resolve() / entry["file"]
        if not source.is_file():
            raise TextgenError(f"TEXTGEN_CORPUS_MIRROR has no {entry['file']} (looked in {source.parent})")
        origin = source.as_uri()
    folder = corpora_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)  # get_file falls back to /tmp if it is missing
        path = keras.utils.get_file(
            fname=entry["file"], origin=origin, file_hash=entry["sha256"],
            cache_dir=str(folder.parent), cache_subdir=folder.name,
        )
    except Exception as err:  # network, checksum or disk failure: one clear line
        raise TextgenError(f"could not fetch corpus {entry['file']} from {origin}: {err}") from None
    return Path(path)


def _build_pydoc(path: Path) -> Path:
    """Write the standard library's help topics as one text file (once)."""
    if not path.is_file():
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path
