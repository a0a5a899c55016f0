"""Text <-> token ids, built and saved with HuggingFace `tokenizers`.

Three levels:
- char: every character (newlines, tabs, emoji, CJK ...) is one token; round-trips any text.
- word: words, single punctuation marks and whitespace runs are tokens; round-trips
  exactly except words outside the (capped) vocabulary, which become [UNK].
- bpe: byte-level BPE (GPT-2 style) with a vocabulary of --vocab-size; round-trips any text.

All are plain `tokenizers.Tokenizer` objects, so the saved `tokenizer.json` loads with
`Tokenizer.from_file` anywhere. Every vocabulary starts with [UNK] (id 0) and [DOC] (id 1),
the separator written between the files of a corpus. Char level also has a NumPy bulk
encoder (~100x faster than `Tokenizer.encode` on one core) tested to give identical ids.
Tokenizers are built from an iterable of text pieces, so a corpus can be streamed.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

UNK = "[UNK]"
DOC = "[DOC]"  # document separator: written between files as an id, never produced from text
SPECIAL_TOKENS = (UNK, DOC)
# Oniguruma's (?m) is "dot matches newline": every character becomes its own piece.
_CHAR_PATTERN = r"(?m)."
# A word, one punctuation mark, or a run of whitespace: every character lands in a token.
_WORD_PATTERN = r"\w+|[^\w\s]|\s+"
# Word-level text is encoded in pieces that end where a newline is followed by a
# non-space, a place where the pre-tokenizer always splits; this keeps ids identical.
# The same cut is exact for byte-level BPE, whose GPT-2 pre-tokenizer never joins a newline
# to a following non-space; Python's \S is narrower than the Rust regex's, so it errs safe.
_WORD_CHUNK_BOUNDARY = re.compile(r"(?<=\n)(?=\S)")
# Fallback cut for text without such newlines: before a space that follows a non-space
# (no word, punctuation or BPE piece has a space after a non-space inside it).
_SPACE_BOUNDARY = re.compile(r"(?<=\S)(?= )")
_CHUNK_CHARS = 1 << 20
# A piece with no safe cut is carried on up to this many characters, then cut anyway.
MAX_PIECE_CHARS = 1 << 24


def build_tokenizer(texts: Iterable[str], level: str, vocab_size: int = 20_000) -> Tokenizer:
    """Train a tokenizer of the given level on `texts`, streamed piece by piece.

    Args:
        texts: the corpus, as any iterable of strings (pieces may be cut anywhere for char
            level; for word and bpe cut them with `safe_cut` so no token is split).
        level: "char", "word" or "bpe".
        vocab_size: vocabulary cap for word and bpe (the two special tokens included);
            char level keeps every character seen, however many.
    """
    if level == "char":
        seen = np.zeros(0, bool)  # seen[code point]: grown as larger code points turn up
        for text in texts:
            points = code_points(text)  # (n_chars,)
            if len(points):
                seen = np.pad(seen, (0, max(0, int(points.max()) + 1 - len(seen))))
                seen[points] = True
        seen[0xD800:0xE000] = False  # lone surrogates cannot be tokens: they stay [UNK]
        return char_tokenizer(np.flatnonzero(seen))
    if level == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_PATTERN), "isolated")
        tokenizer.decoder = decoders.Fuse()  # join tokens with nothing in between
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=0,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    elif level == "bpe":
        # Byte-level: every text is representable, so [UNK] never occurs but keeps id 0.
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer level {level!r}")
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def char_tokenizer(points: Iterable[int]) -> Tokenizer:
    """A char-level tokenizer over the given code points: ids [UNK], [DOC], then by code point.

    Built directly rather than with WordLevelTrainer, whose per-character pre-tokenizing
    runs at ~1.6 MB/s (a streamed pass only has to collect the set of characters).
    The special tokens are plain vocabulary entries, not "added tokens", so a literal
    "[DOC]" in a text is five characters to `Tokenizer.encode` exactly as to CharTable.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({chr(int(cp)): len(SPECIAL_TOKENS) + i for i, cp in enumerate(sorted(points))})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_PATTERN), "isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def code_points(text: str) -> np.ndarray:
    """Unicode code points of `text`, shape (n_chars,): uint8 for ASCII text, else uint32."""
    if text.isascii():  # CPython copies an ASCII string's bytes straight out: ~30x faster
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # lone surrogates pass


def tokenizer_level(tokenizer: Tokenizer) -> str:
    """Recognise which textgen level a tokenizer was built for (worked out once per tokenizer)."""
    return _known(tokenizer)[0]


def spec_level(spec: dict) -> str:
    """The textgen level a tokenizer's JSON description (`to_str()`, tokenizer.json) is of."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        return "bpe"
    pattern = (pre.get("pattern") or {}).get("Regex")
    levels = {_CHAR_PATTERN: "char", _WORD_PATTERN: "word"}
    if pre.get("type") != "Split" or pattern not in levels:
        raise ValueError("tokenizer was not made by textgen")
    return levels[pattern]


# Per tokenizer, its level and (char level) its CharTable: `to_str()` serialises the whole
# vocabulary (~0.1 s at 200K tokens), far too slow to repeat on every encode.
_KNOWN: "weakref.WeakKeyDictionary[Tokenizer, tuple[str, CharTable | None]]" = weakref.WeakKeyDictionary()


def _known(tokenizer: Tokenizer) -> "tuple[str, CharTable | None]":
    known = _KNOWN.get(tokenizer)
    if known is None:
        level = spec_level(json.loads(tokenizer.to_str()))
        known = _KNOWN[tokenizer] = (level, CharTable(tokenizer) if level == "char" else None)
    return known


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as int32, shape (n_tokens,)."""
    level, table = _known(tokenizer)
    if table is not None:
        return table.encode(text)
    chunks = _word_chunks(text)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(chunks)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int32)


def is_panic(err: BaseException) -> bool:
    """Whether `err` is a Rust panic inside `tokenizers` (pyo3's PanicException, which is a
    BaseException: `except Exception` lets it through)."""
    return type(err).__name__ == "PanicException"


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Text of `ids`; tokens are joined exactly as they appeared in the text."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def unknown_characters(tokenizer: Tokenizer, text: str) -> list[str]:
    """Characters of `text` the (char-level) vocabulary lacks, in order of appearance."""
    vocab = tokenizer.get_vocab()
    return list(dict.fromkeys(ch for ch in text if ch not in vocab))


class CharTable:
    """Vectorised char-level encoder: a dense code point -> id lookup table.

    Hand-written because `tokenizers` encodes characters one pre-token at a time
    (~1.6 MB/s); a table gather does the same mapping at memory speed, and the tests
    check it against `Tokenizer.encode`. Feed it any pieces of a text, cut anywhere.
    """

    def __init__(self, tokenizer: Tokenizer, dtype=np.int32):
        vocab = tokenizer.get_vocab()
        self.unk_id = vocab[UNK]
        chars = {ord(tok): i for tok, i in vocab.items() if len(tok) == 1}
        # At least 256 slots, so ASCII bytes index it unchecked; the slot past the largest
        # known code point catches every unknown one.
        size = max(256, max(chars, default=0) + 2)
        self.table = np.full(size, self.unk_id, dtype=dtype)
        self.table[list(chars)] = list(chars.values())

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, shape (n_chars,), in the table's dtype (int32 unless asked)."""
        points = code_points(text)  # (n_chars,) uint8 for ASCII, else uint32
        if points.dtype == np.uint32:
            points = np.minimum(points, len(self.table) - 1)  # unknown code points -> last slot
        return self.table[points]


def safe_cut(text: str) -> int:
    """The last place `text` can be cut without changing its word/bpe tokens (0: none)."""
    tail = max(0, len(text) - 65_536)  # the last boundary is almost always near the end
    for start in dict.fromkeys((tail, 0)):
        for pattern in (_WORD_CHUNK_BOUNDARY, _SPACE_BOUNDARY):
            cuts = [m.start() for m in pattern.finditer(text, start)]
            if cuts and cuts[-1] > 0:
                return cuts[-1]
    return 0


def token_pieces(texts: Iterable[str], level: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """Text chunks re-cut where no token of `level` spans, so each piece encodes on its own.

    Char level: any cut is safe, the chunks pass through. Word and bpe: each piece ends at
    its last `safe_cut` and the rest joins the next chunk; text with no safe place (no
    space or line start) is carried on until it is `max_chars` long, then passed on whole,
    so memory stays bounded: only such text can have a token split.
    """
    if level == "char":
        yield from texts
        return
    carry = ""
    for text in texts:
        text = carry + text
        cut = safe_cut(text) or (len(text) if len(text) >= max_chars else 0)
        text, carry = text[:cut], text[cut:]
        if text:
            yield text
    if carry:
        yield carry


def _word_chunks(text: str, size: int | None = None) -> list[str]:
    """Split text into pieces of about `size` characters (default ~1M) at boundaries the
    word and bpe pre-tokenizers split at anyway."""
    size = size or _CHUNK_CHARS
    if len(text) <= size:
        return [text] if text else []
    chunks, start = [], 0
    while start < len(text):
        end = start + size
        match = _WORD_CHUNK_BOUNDARY.search(text, end) if end < len(text) else None
        stop = match.start() if match else len(text)
        chunks.append(text[start:stop])
        start = stop
    return chunks
