"""Text <-> token ids, built and saved with HuggingFace `tokenizers`.

Two levels:
- char: every character (newlines, tabs, emoji, CJK ...) is one token; round-trips any text.
- word: words, single punctuation marks and whitespace runs are tokens; round-trips
  exactly except words outside the (capped) vocabulary, which become [UNK].

Both are plain `tokenizers.Tokenizer` objects, so the saved `tokenizer.json` loads with
`Tokenizer.from_file` anywhere. Char level also has a NumPy bulk encoder (~100x faster
than `Tokenizer.encode` on one core) that is tested to give identical ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

UNK = "[UNK]"
# Oniguruma's (?m) is "dot matches newline": every character becomes its own piece.
_CHAR_PATTERN = r"(?m)."
# A word, one punctuation mark, or a run of whitespace: every character lands in a token.
_WORD_PATTERN = r"\w+|[^\w\s]|\s+"
# Word-level text is encoded in pieces that end where a newline is followed by a
# non-space, a place where the pre-tokenizer always splits; this keeps ids identical.
_WORD_CHUNK_BOUNDARY = re.compile(r"(?<=\n)(?=\S)")
_CHUNK_CHARS = 1 << 20


def build_tokenizer(texts: Iterable[str], level: str, vocab_size: int = 20_000) -> Tokenizer:
    """Train a tokenizer of the given level on `texts`.

    Args:
        texts: the corpus, as one or more strings.
        level: "char" or "word".
        vocab_size: cap on the word vocabulary ([UNK] included); char level keeps every
            character seen, however many.
    """
    if level == "char":
        # Counted with NumPy rather than WordLevelTrainer, which makes one string per
        # character: 3 minutes and 14 GB for a 50 MB corpus, against a second here.
        tokenizer = Tokenizer(models.WordLevel(vocab=_char_vocab(texts), unk_token=UNK))
        pattern = _CHAR_PATTERN
    elif level == "word":
        tokenizer, pattern = Tokenizer(models.WordLevel(unk_token=UNK)), _WORD_PATTERN
    else:
        raise ValueError(f"unknown tokenizer level {level!r}")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), "isolated")
    tokenizer.decoder = decoders.Fuse()  # join tokens with nothing in between
    if level == "word":
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=0, special_tokens=[UNK])
        tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _char_vocab(texts: Iterable[str]) -> dict[str, int]:
    """[UNK] = 0, then every character seen, most frequent first (ties by code point)."""
    counts = np.zeros(0x110000, np.int64)  # one slot per Unicode code point
    for text in texts:
        counts += np.bincount(_code_points(text), minlength=0x110000)
    seen = np.flatnonzero(counts)
    seen = seen[(seen < 0xD800) | (seen > 0xDFFF)]  # lone surrogates cannot be tokens: [UNK]
    order = seen[np.lexsort((seen, -counts[seen]))]
    return {UNK: 0, **{chr(point): i + 1 for i, point in enumerate(order.tolist())}}


def _code_points(text: str) -> np.ndarray:
    """Code points of `text` as uint32, shape (n_chars,); lone surrogates pass through."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def tokenizer_level(tokenizer: Tokenizer) -> str:
    """Recognise which textgen level a tokenizer was built for."""
    pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
    pattern = (pre.get("pattern") or {}).get("Regex")
    levels = {_CHAR_PATTERN: "char", _WORD_PATTERN: "word"}
    if pre.get("type") != "Split" or pattern not in levels:
        raise ValueError("tokenizer was not made by textgen")
    return levels[pattern]


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as int32, shape (n_tokens,)."""
    if tokenizer_level(tokenizer) == "char":
        return CharTable(tokenizer).encode(text)
    chunks = _word_chunks(text)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(chunks)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int32)


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Text of `ids`; tokens are joined exactly as they appeared in the text."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def unknown_characters(tokenizer: Tokenizer, text: str) -> list[str]:
    """Characters of `text` the (char-level) vocabulary lacks, in order of appearance."""
    vocab = tokenizer.get_vocab()
    return list(dict.fromkeys(ch for ch in text if ch not in vocab))


class CharTable:
    """Vectorised char-level encoder: code point -> id through a direct lookup table."""

    def __init__(self, tokenizer: Tokenizer):
        vocab = tokenizer.get_vocab()
        self.unk_id = vocab[UNK]
        chars = {ord(tok): i for tok, i in vocab.items() if len(tok) == 1}
        # table[point] is the id; the extra last slot (UNK) catches every larger code point
        self.table = np.full(max(chars, default=0) + 2, self.unk_id, np.int32)
        self.table[list(chars)] = list(chars.values())

    def encode(self, text: str) -> np.ndarray:
        points = _code_points(text)  # (n_chars,)
        return self.table[np.minimum(points, len(self.table) - 1)]


def _word_chunks(text: str) -> list[str]:
    """Split text into ~1 MB pieces at boundaries the word pre-tokenizer splits at anyway."""
    if len(text) <= _CHUNK_CHARS:
        return [text] if text else []
    chunks, start = [], 0
    while start < len(text):
        end = start + _CHUNK_CHARS
        match = _WORD_CHUNK_BOUNDARY.search(text, end) if end < len(text) else None
        stop = match.start() if match else len(text)
        chunks.append(text[start:stop])
        start = stop
    return chunks
