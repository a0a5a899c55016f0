"""Corpus files -> a token-id file on disk, built once by streaming and reused while unchanged.

    TEXTGEN_CACHE_DIR/tokens/KEY/      (default ~/.cache/textgen; KEY hashes the file
        manifest.json                   paths, every tokenizer setting and tokenizer.SCHEME)
        tokenizer.json                 the tokenizer the ids belong to
        train.ids                      the corpus ids, files joined by [DOC]; uint8, uint16
        val.ids                        or uint32 by vocabulary size; --val-file's ids, if any

Building reads every file twice in chunks of CHUNK_BYTES, each pass behind a tqdm bar in
bytes/s: once to train the tokenizer (and hash the files), once to encode. Memory stays
flat whatever the corpus size; training then reads the ids through `np.memmap`, so only
the pages a step touches are in memory. The manifest records each file's path, size,
mtime and sha256 and the tokenizer's sha256: a file whose size or mtime changed is
re-hashed, and any difference rebuilds the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from textgen.config import TextgenError, TokenizerConfig
from textgen.corpora import cache_dir
from textgen.text import read_chunks
from textgen.tokenizer import DOC, SCHEME, UNK, CharTable, _word_chunks, build_tokenizer, token_pieces

CACHE_FORMAT = 2  # 2: unknown-token counts in the manifest; the key holds every setting and the scheme
# Char level reads 16 MB at a time (per-call overhead vanishes, memory stays small);
# word/bpe read 4 MB, cut into ~256K-character pieces so encode_batch has work for every
# core while its Encoding objects (hundreds of bytes per token) stay small.
CHUNK_BYTES = 16 << 20
SUBWORD_CHUNK_BYTES = 4 << 20
SUBWORD_PIECE_CHARS = 1 << 18
# Bars only on a terminal, erased when done: an error then stays the one line on stderr.
_BAR = dict(disable=None, leave=False)


@dataclass
class TokenIds:
    """A corpus as token ids on disk."""

    tokenizer: Tokenizer
    train: np.ndarray  # (n_tokens,) read-only memmap of the corpus files, [DOC] between files
    val: np.ndarray | None  # (n_val_tokens,) the validation files' ids, when some were given
    characters: int  # characters of the corpus files (separators not counted)
    val_characters: int
    unknown: int  # [UNK] tokens among `train`: words the capped vocabulary lacks
    sources: list[dict]  # [{"file", "bytes", "sha256"}] in reading order
    folder: Path
    reused: bool  # True when an up-to-date cache was found

    def coverage_line(self) -> str:
        """How much of the corpus the (capped) vocabulary covers, for word level's start-up lines."""
        share = 1 - self.unknown / max(len(self.train), 1)
        return (f"Vocabulary {self.tokenizer.get_vocab_size():,} covers {100 * share:.1f} % of word tokens "
                f"({self.unknown:,} [UNK] in {len(self.train):,})")


def cache_root() -> Path:
    """Where token caches live: the `tokens` folder of the user cache (corpora.cache_dir)."""
    return cache_dir() / "tokens"


def token_ids(paths: list[Path], val_paths: list[Path], settings: TokenizerConfig,
              root: Path | None = None, tokenizer: Tokenizer | None = None) -> TokenIds:
    """The token ids of `paths` (and `val_paths`), from the cache or freshly built into it.

    The tokenizer is trained on the files, unless one is given (resuming, fine-tuning).
    """
    root = Path(root) if root is not None else cache_root()
    paths = [Path(p).resolve() for p in paths]
    val_paths = [Path(p).resolve() for p in val_paths]
    folder = root / _key(paths, val_paths, settings, tokenizer)
    cached = _load_if_fresh(folder, paths, val_paths)
    if cached is not None:
        return cached
    _build(folder, paths, val_paths, settings, tokenizer)
    cached = _load_if_fresh(folder, paths, val_paths)
    if cached is None:
        raise TextgenError(f"{folder}: token cache changed while it was being written; run again")
    cached.reused = False
    return cached


def _key(paths: list[Path], val_paths: list[Path], settings: TokenizerConfig, tokenizer=None) -> str:
    """One folder per (files, tokenizer settings or given tokenizer).

    Every TokenizerConfig field is in the key, and the scheme of the tokens build_tokenizer
    makes, so no setting (present or future) can reuse ids made another way.
    """
    what = {"format": CACHE_FORMAT, "scheme": SCHEME, "files": [str(p) for p in paths],
            "val_files": [str(p) for p in val_paths], "settings": dataclasses.asdict(settings),
            "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest() if tokenizer else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def file_pieces(path: Path, encoding: str, level: str, on_chunk=None) -> Iterator[str]:
    """One file's text in pieces cut where no token can span (see tokenizer.token_pieces)."""
    size = CHUNK_BYTES if level == "char" else SUBWORD_CHUNK_BYTES
    return token_pieces(read_chunks(path, encoding, on_chunk, size), level)


# ---------------------------------------------------------------- building


def _build(folder: Path, paths: list[Path], val_paths: list[Path], settings: TokenizerConfig,
           tokenizer: Tokenizer | None) -> None:
    """Write a fresh cache under a temporary name, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if tokenizer is None:
            sources, val_sources, tokenizer = _train_tokenizer(paths, val_paths, settings)
        else:
            sources, val_sources = [_hashed(p) for p in paths], [_hashed(p) for p in val_paths]
        tokenizer_file = work / "tokenizer.json"
        tokenizer.save(str(tokenizer_file))
        dtype = id_dtype(tokenizer.get_vocab_size())
        parts = {"train": (paths, sources)}
        if val_paths:
            parts["val"] = (val_paths, val_sources)
        counts = {}
        for part, (files, recorded) in parts.items():
            counts[part] = _encode_files(files, recorded, tokenizer, settings, work / f"{part}.ids", dtype)
        manifest = {"format": CACHE_FORMAT, "settings": dataclasses.asdict(settings),
                    "tokenizer_sha256": sha256_file(tokenizer_file), "dtype": np.dtype(dtype).name,
                    "sources": sources, "val_sources": val_sources,
                    "tokens": {p: c[0] for p, c in counts.items()},
                    "characters": {p: c[1] for p, c in counts.items()},
                    "unknown": {p: c[2] for p, c in counts.items()}}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            if _load_if_fresh(folder, paths, val_paths) is not None:
                return  # another process (a second worker) built it meanwhile: never pull it from under them
            shutil.rmtree(folder)  # stale: a source changed
        try:
            os.replace(work, folder)
        except OSError:  # another process (a second worker) finished the same cache first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_tokenizer(paths, val_paths, settings):
    """First pass: train the tokenizer on every file, hashing each file as it is read."""
    sources, val_sources = [_stat(p) for p in paths], [_stat(p) for p in val_paths]
    digests = [hashlib.sha256() for _ in paths + val_paths]
    total = sum(s["bytes"] for s in sources + val_sources)

    def pieces(bar) -> Iterator[str]:
        for path, digest in zip(paths + val_paths, digests):
            def seen(data: bytes, digest=digest) -> None:
                digest.update(data)
                bar.update(len(data))
            for piece in file_pieces(path, settings.encoding, settings.level, seen):
                # tokenizers' trainer memory grows with the piece: 4 MB pieces peaked near
                # 1 GB even for a 10 MB corpus, 256K-character pieces near 150 MB (same vocabulary).
                yield from _word_chunks(piece, SUBWORD_PIECE_CHARS) if settings.level != "char" else (piece,)

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, **_BAR, desc="building vocabulary") as bar:
        tokenizer = build_tokenizer(pieces(bar), settings.level, settings.vocab_size, settings.lowercase)
    for record, digest in zip(sources + val_sources, digests):
        record["sha256"] = digest.hexdigest()
    return sources, val_sources, tokenizer


def _encode_files(files, recorded, tokenizer, settings, out: Path, dtype) -> tuple[int, int, int]:
    """Second pass: append each file's ids to `out`, [DOC] between files;
    (tokens, characters, [UNK] tokens)."""
    doc_id = tokenizer.token_to_id(DOC)  # tokenizers older than [DOC] join files with a newline
    doc = np.array([doc_id] if doc_id is not None else tokenizer.encode("\n").ids, dtype=dtype)
    table = CharTable(tokenizer, dtype) if settings.level == "char" else None
    unk_id = tokenizer.token_to_id(UNK)
    tokens = characters = unknown = 0
    total = sum(r["bytes"] for r in recorded)
    with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, **_BAR,
                                    desc="tokenizing") as bar:
        for i, path in enumerate(files):
            if i:
                doc.tofile(f)
                tokens += len(doc)
            for text in file_pieces(path, settings.encoding, settings.level, lambda d: bar.update(len(d))):
                ids = _encode_piece(text, tokenizer, table)  # (n,)
                ids.astype(dtype, copy=False).tofile(f)
                tokens += len(ids)
                characters += len(text)
                unknown += int(np.count_nonzero(ids == unk_id))  # vocabulary coverage, for free
    return tokens, characters, unknown


def _encode_piece(text: str, tokenizer: Tokenizer, table: CharTable | None) -> np.ndarray:
    if table is not None:
        return table.encode(text)
    # encode_batch runs the 256K-character pieces (SUBWORD_PIECE_CHARS) on every core
    # (tokenizers' own thread pool).
    pieces = _word_chunks(text, SUBWORD_PIECE_CHARS)
    encodings = tokenizer.encode_batch_fast(pieces)  # "fast": the same ids, no offsets
    return np.concatenate([np.asarray(e.ids, np.int32) for e in encodings])


def id_dtype(vocab_size: int) -> type:
    """The narrowest unsigned integer type that holds every id of a vocabulary."""
    if vocab_size <= 1 << 8:
        return np.uint8
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# ---------------------------------------------------------------- reusing


def _load_if_fresh(folder: Path, paths: list[Path], val_paths: list[Path]) -> TokenIds | None:
    """The cache in `folder` if it exists, is whole and matches the files; else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            return None
        if not (_same_files(manifest["sources"], paths) and _same_files(manifest["val_sources"], val_paths)):
            return None
        if sha256_file(folder / "tokenizer.json") != manifest["tokenizer_sha256"]:
            return None
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        dtype = np.dtype(manifest["dtype"])
        arrays = {part: _memmap(folder / f"{part}.ids", dtype, n) for part, n in manifest["tokens"].items()}
    except Exception:  # missing, torn or foreign files (tokenizers raises plain Exception): rebuild
        return None
    if any(a is None for a in arrays.values()):
        return None
    chars = manifest["characters"]
    sources = [{"file": Path(s["file"]).name, "bytes": s["bytes"], "sha256": s["sha256"]}
               for s in manifest["sources"]]
    return TokenIds(tokenizer, arrays["train"], arrays.get("val"), chars["train"], chars.get("val", 0),
                    manifest["unknown"]["train"], sources, folder, reused=True)


def _same_files(recorded: list[dict], paths: list[Path]) -> bool:
    """Whether every file is the one recorded: same size and mtime, or else the same sha256."""
    if [r["file"] for r in recorded] != [str(p) for p in paths]:
        return False
    for record, path in zip(recorded, paths):
        try:
            now = _stat(path)
        except TextgenError:
            return False
        if now["bytes"] != record["bytes"]:
            return False
        # Like git and make: an unchanged mtime means unchanged contents; a touched file is
        # re-hashed, so only a real change of contents rebuilds.
        if now["mtime_ns"] != record["mtime_ns"] and sha256_file(path) != record["sha256"]:
            return False
    return True


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray | None:
    if path.stat().st_size != n * dtype.itemsize:
        return None  # torn or edited file
    if n == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _stat(path: Path) -> dict:
    try:
        st = path.stat()
    except OSError as err:
        raise TextgenError(f"{path}: cannot read ({err.strerror})") from None
    return {"file": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _hashed(path: Path) -> dict:
    return _stat(path) | {"sha256": sha256_file(path)}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
