"""Known corpora: a small registry of public texts that `train` accepts by name.

`registry.json` beside this file holds facts only (file name, URL, sha256, size,
licence), no text. A named corpus is downloaded once with `keras.utils.get_file`
(checksum verified) into a cache and reused afterwards. Two environment variables:

- TEXTGEN_CORPUS_MIRROR=DIR reads DIR/<file> instead of the network (tests, offline use);
- TEXTGEN_CACHE_DIR=DIR moves the cache (default ~/.cache/textgen).

`pydoc` needs no network at all: it is built from the help topics every Python
install carries (`pydoc_data`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from textgen.config import TextgenError

_REGISTRY = Path(__file__).with_name("registry.json")


def registry() -> dict[str, dict[str, Any]]:
    """Name -> facts of every known corpus."""
    return json.loads(_REGISTRY.read_text(encoding="utf-8"))


def cache_dir() -> Path:
    return Path(os.environ.get("TEXTGEN_CACHE_DIR") or Path.home() / ".cache" / "textgen")


def fetch(name: str) -> Path:
    """Path of the known corpus `name`, downloading or building it on first use."""
    known = registry()
    if name not in known:
        raise TextgenError(f"unknown corpus {name!r} (known: {', '.join(sorted(known))})")
    entry = known[name]
    if entry.get("builtin") == "pydoc_data":
        return _build_pydoc(cache_dir() / entry["file"])
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
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)  # get_file falls back to /tmp if it is missing
        path = keras.utils.get_file(
            fname=entry["file"], origin=origin, file_hash=entry["sha256"],
            cache_dir=str(folder), cache_subdir="corpora",
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
