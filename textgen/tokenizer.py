"""Text <-> token ids, built and saved with HuggingFace `tokenizers`.

Three levels:
- char: every character (newlines, tabs, emoji, CJK ...) is one token; round-trips any text.
- word: a word or a punctuation mark with the one space before it (" the", " ,", "The"),
  and whitespace runs; round-trips exactly except words outside the (capped) vocabulary,
  which become [UNK]. Bundles made before carry the older scheme (words, punctuation
  marks and whitespace runs apart) in their tokenizer.json and keep working.
- bpe: byte-level BPE (GPT-2 style) with a vocabulary of --vocab-size; round-trips any text.

All are plain `tokenizers.Tokenizer` objects, so the saved `tokenizer.json` loads with
`Tokenizer.from_file` anywhere; `lowercase` puts a `normalizers.Lowercase` in it, so every
user of the file folds case the same way. Every vocabulary starts with [UNK] (id 0) and
[DOC] (id 1), the separator written between the files of a corpus; both are plain
vocabulary entries, never matched in text (a literal "[DOC]" is ordinary characters).
Char level also has a NumPy bulk encoder (~100x faster than `Tokenizer.encode` on one
core) tested to give identical ids. Tokenizers are built from an iterable of text pieces,
so a corpus can be streamed.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

UNK = "[UNK]"
DOC = "[DOC]"  # document separator: written between files as an id, never produced from text
SPECIAL_TOKENS = (UNK, DOC)
# A document's label ("[LABEL:poem]"), read before its text: a plain vocabulary entry no
# text can reach (no pre-token of any level holds "[" and letters together).
LABEL_PREFIX, LABEL_SUFFIX = "[LABEL:", "]"
# Oniguruma's (?m) is "dot matches newline": every character becomes its own piece.
_CHAR_PATTERN = r"(?m)."
# A word or one punctuation mark, each with the single space before it if there is one,
# or whitespace (a run's last space goes to the word after it, as in GPT-2's pre-tokenizer):
# every character lands in a token, and two words only touch where the text has them touch.
_WORD_PATTERN = r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+"
# The word level of bundles made before: words, punctuation marks and whitespace runs apart
# (the model had to learn to put a space between two words). Still loaded and encoded.
_LEGACY_WORD_PATTERN = r"\w+|[^\w\s]|\s+"
# What build_tokenizer makes; part of the token cache key, so bump it whenever the tokens
# a level makes change (2: words carry their space, special tokens unreachable from text).
SCHEME = 2
# Text is encoded in pieces cut where no token of any level can span: before a newline
# (preferred: pieces end at line ends) or a space that follows a non-space. No token of
# either word pattern or of GPT-2's byte-level pattern has whitespace after a non-space
# inside it, and a token starting at the cut sees the same text whether cut or not (the
# patterns' only look-around, \s+(?!\S), looks ahead from a whitespace run, never across
# the non-space before the cut). The literal space and newline are whitespace to every
# regex engine, and Python's \S is narrower than Oniguruma's and Rust's, so it errs safe.
_LINE_BOUNDARY = re.compile(r"(?<=\S)(?=\n)")
_SPACE_BOUNDARY = re.compile(r"(?<=\S)(?= )")
_CHUNK_CHARS = 1 << 20
# Text with no safe cut is carried on up to this many characters, then cut anyway: no real
# token is this long, and it bounds every piece (and the tokenizers' work on one pre-token).
MAX_PIECE_CHARS = 1 << 16


def build_tokenizer(texts: Iterable[str], level: str, vocab_size: int = 20_000,
                    lowercase: bool = False) -> Tokenizer:
    """Train a tokenizer of the given level on `texts`, streamed piece by piece.

    Args:
        texts: the corpus, as any iterable of strings (pieces may be cut anywhere for char
            level; for word and bpe cut them with `safe_cut` so no token is split).
        level: "char", "word" or "bpe".
        vocab_size: vocabulary cap for word and bpe (the two special tokens included); word
            level keeps the most frequent tokens; char level keeps every character seen.
        lowercase: fold case (a `normalizers.Lowercase` inside the tokenizer).
    """
    if level == "char":
        seen = np.zeros(0, bool)  # seen[code point]: grown as larger code points turn up
        for text in texts:
            points = _folded_points(text) if lowercase else code_points(text)  # (n_chars,)
            if len(points):
                seen = np.pad(seen, (0, max(0, int(points.max()) + 1 - len(seen))))
                seen[points] = True
        seen[0xD800:0xE000] = False  # lone surrogates cannot be tokens: they stay [UNK]
        return char_tokenizer(np.flatnonzero(seen), lowercase)
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
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.train_from_iterator(texts, trainer)
    return _unmatched_specials(tokenizer)


def _unmatched_specials(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with its special tokens kept in the vocabulary but no longer "added tokens".

    Trainers register special tokens as added tokens, which `encode` matches in raw text
    before pre-tokenizing: a corpus containing the text "[DOC]" would get separators that
    are not there. As plain vocabulary entries they keep their ids and decode as before,
    and no pre-token can equal one (the patterns split "[" from "DOC").
    """
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec))


def with_labels(tokenizer: Tokenizer, labels: Iterable[str]) -> Tokenizer:
    """The tokenizer with a label token per label appended to its vocabulary (new ids at the end)."""
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for label in labels:
        vocab.setdefault(LABEL_PREFIX + label + LABEL_SUFFIX, max(vocab.values()) + 1)
    return Tokenizer.from_str(json.dumps(spec))


def label_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Each label the tokenizer knows, to its token id, sorted by label ({} if unlabelled)."""
    return vocabulary_labels(tokenizer.get_vocab())


def vocabulary_labels(vocab: dict[str, int]) -> dict[str, int]:
    """The labels among a vocabulary's tokens ({token: id}, as in tokenizer.json), to their ids, sorted."""
    found = {token[len(LABEL_PREFIX):-len(LABEL_SUFFIX)]: i for token, i in vocab.items()
             if token.startswith(LABEL_PREFIX) and token.endswith(LABEL_SUFFIX)}
    return dict(sorted(found.items()))


def char_tokenizer(points: Iterable[int], lowercase: bool = False) -> Tokenizer:
    """A char-level tokenizer over the given code points: ids [UNK], [DOC], then by code point.

    Built directly rather than with WordLevelTrainer, whose per-character pre-tokenizing
    runs at ~1.6 MB/s (a streamed pass only has to collect the set of characters).
    The special tokens are plain vocabulary entries, not "added tokens", so a literal
    "[DOC]" in a text is five characters to `Tokenizer.encode` exactly as to CharTable.
    With `lowercase` the points should be folded already (`build_tokenizer` does it).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({chr(int(cp)): len(SPECIAL_TOKENS) + i for i, cp in enumerate(sorted(points))})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_PATTERN), "isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def code_points(text: str) -> np.ndarray:
    """Unicode code points of `text`, shape (n_chars,): uint8 for ASCII text, else uint32."""
    if text.isascii():  # CPython copies an ASCII string's bytes straight out: ~30x faster
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # lone surrogates pass


def tokenizer_level(tokenizer: Tokenizer) -> str:
    """Recognise which textgen level a tokenizer was built for (either word scheme is "word");
    worked out once per tokenizer."""
    return _known(tokenizer)[0]


def spec_level(spec: dict) -> str:
    """The textgen level a tokenizer's JSON description (`to_str()`, tokenizer.json) is of."""
    pre = spec.get("pre_tokenizer") or {}
    if (spec.get("normalizer") or {}).get("type", "Lowercase") != "Lowercase":
        raise ValueError("tokenizer was not made by textgen")  # CharTable would not match it
    if pre.get("type") == "ByteLevel":
        return "bpe"
    pattern = (pre.get("pattern") or {}).get("Regex")
    levels = {_CHAR_PATTERN: "char", _WORD_PATTERN: "word", _LEGACY_WORD_PATTERN: "word"}
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


def folds_case(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer lowercases text before splitting it (trained with `lowercase`)."""
    return isinstance(tokenizer.normalizer, normalizers.Lowercase)


def word_edges(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """Which tokens end, and which start, with a word character: (ends, starts), bool (vocab,).

    A word token straight after a token ending in a word character glues two words
    ("thecat"); `sampler.forbid_glue` refuses it. Characters are classified by asking the
    tokenizer's own pre-tokenizer whether it keeps "a" and the character together, so the
    rule is the tokenizer's: its greedy \\w+ never ends a token between two word characters,
    hence no encoded corpus has such a pair, and refusing them never refuses what the corpus
    does. Special tokens are neither. None below word level (char tokens and BPE
    subwords join letters legitimately).
    """
    if tokenizer_level(tokenizer) != "word":
        return None
    split = tokenizer.pre_tokenizer.pre_tokenize_str

    @functools.cache
    def is_word(ch: str) -> bool:
        return len(split("a" + ch)) == 1

    vocab = tokenizer.get_vocab()
    ends, starts = np.zeros(len(vocab), bool), np.zeros(len(vocab), bool)
    for token, i in vocab.items():
        if token and token not in SPECIAL_TOKENS:
            ends[i], starts[i] = is_word(token[-1]), is_word(token[0])
    return ends, starts


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as int32, shape (n_tokens,)."""
    level, table = _known(tokenizer)
    if table is not None:
        return table.encode(text)
    chunks = _word_chunks(text)
    ids = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(chunks)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int32)


def token_lengths(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Characters of `text` each token of `encode(tokenizer, text)` spans, shape (n_tokens,).

    Char level: one each (a character whose lowercase is two, such as "İ", counts as two).
    """
    level, table = _known(tokenizer)
    if table is not None:
        return np.ones(len(table.encode(text)), np.int64)
    spans = [np.asarray(e.offsets, np.int64).reshape(-1, 2) for e in tokenizer.encode_batch(_word_chunks(text))]
    spans = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)  # (n_tokens, 2) start, end
    return spans[:, 1] - spans[:, 0]


def is_panic(err: BaseException) -> bool:
    """Whether `err` is a Rust panic inside `tokenizers` (pyo3's PanicException, which is a
    BaseException: `except Exception` lets it through)."""
    return type(err).__name__ == "PanicException"


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Text of `ids`; tokens are joined exactly as they appeared in the text."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def unknown_characters(tokenizer: Tokenizer, text: str) -> list[str]:
    """Characters of `text` the (char-level) vocabulary lacks, in order of appearance (folded
    to lowercase first if the tokenizer folds case)."""
    vocab = tokenizer.get_vocab()
    if folds_case(tokenizer):
        text = tokenizer.normalizer.normalize_str(text)
    return list(dict.fromkeys(ch for ch in text if ch not in vocab))


class CharTable:
    """Vectorised char-level encoder: a dense code point -> id lookup table.

    Hand-written because `tokenizers` encodes characters one pre-token at a time
    (~1.6 MB/s); a table gather does the same mapping at memory speed, and the tests
    check it against `Tokenizer.encode`. Feed it any pieces of a text, cut anywhere.
    A tokenizer that folds case gets its text folded by the same table `Lowercase` uses.
    """

    def __init__(self, tokenizer: Tokenizer, dtype=np.int32):
        vocab = tokenizer.get_vocab()
        self.unk_id = vocab[UNK]
        self.lowercase = folds_case(tokenizer)
        chars = {ord(tok): i for tok, i in vocab.items() if len(tok) == 1}
        # At least 256 slots, so ASCII bytes index it unchecked; the slot past the largest
        # known code point catches every unknown one.
        size = max(256, max(chars, default=0) + 2)
        self.table = np.full(size, self.unk_id, dtype=dtype)
        self.table[list(chars)] = list(chars.values())

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, shape (n_chars,), in the table's dtype (int32 unless asked)."""
        points = _folded_points(text) if self.lowercase else code_points(text)  # (n_chars,) uint8 for ASCII, else uint32
        if points.dtype == np.uint32:
            points = np.minimum(points, len(self.table) - 1)  # unknown code points -> last slot
        return self.table[points]


# Planes 2-16 hold ideographs, tags and private use: no character there has a lowercase.
_CASED_PLANES_END = 0x20000


@functools.cache
def _case_folding() -> tuple[np.ndarray, dict[str, str]]:
    """How `normalizers.Lowercase` maps each code point: (fold, expansions).

    fold (0x110000,) uint32 maps a code point to its lowercase one; expansions holds the
    few characters whose lowercase is longer ("İ" -> "i̇"). Asked of `tokenizers` itself,
    one character at a time as it folds them (Python's str.lower differs: final sigma,
    and its Unicode version), in one call over every code point of planes 0-1 (~0.1 s).
    """
    points = np.arange(1, _CASED_PLANES_END, dtype=np.uint32)
    points = points[(points < 0xD800) | (points >= 0xE000)]  # surrogates are no characters
    probe = np.zeros((len(points), 2), np.uint32)  # each character followed by a NUL separator
    probe[:, 0] = points
    text = probe.tobytes().decode("utf-32-le")
    out = code_points(normalizers.Lowercase().normalize_str(text)).astype(np.uint32)
    ends = np.flatnonzero(out == 0)  # (len(points),) where each character's lowercase ends
    starts = np.r_[0, ends[:-1] + 1]
    single = ends - starts == 1
    fold = np.arange(0x110000, dtype=np.uint32)
    fold[points[single]] = out[starts[single]]
    expansions = {chr(points[i]): "".join(map(chr, out[starts[i] : ends[i]])) for i in np.flatnonzero(~single)}
    return fold, expansions


def _folded_points(text: str) -> np.ndarray:
    """Code points of `text` lowercased exactly as `normalizers.Lowercase` does: (n,) uint32."""
    fold, expansions = _case_folding()
    if not text.isascii():
        for ch, lower in expansions.items():
            if ch in text:
                text = text.replace(ch, lower)
    return fold[code_points(text)]


def safe_cut(text: str) -> int:
    """The last place `text` can be cut without changing its word/bpe tokens (0: none)."""
    tail = max(0, len(text) - 65_536)  # the last boundary is almost always near the end
    for start in dict.fromkeys((tail, 0)):
        for pattern in (_LINE_BOUNDARY, _SPACE_BOUNDARY):
            cuts = [m.start() for m in pattern.finditer(text, start)]
            if cuts and cuts[-1] > 0:
                return cuts[-1]
    return 0


def token_pieces(texts: Iterable[str], level: str, max_chars: int | None = None,
                 on_forced_cut: Callable[[], None] | None = None) -> Iterator[str]:
    """Text chunks re-cut where no token of `level` spans, so each piece encodes on its own.

    Char level: any cut is safe, the chunks pass through. Word and bpe: each piece ends at
    its last `safe_cut` and the rest joins the next chunk. Text with no safe place (no space
    or line start) for more than `max_chars` characters is cut anyway every `max_chars`
    characters (default MAX_PIECE_CHARS), and `on_forced_cut()` is told: only there can a token
    be split (ids then differ from a whole-text encode), and no piece or carry outgrows a chunk
    plus `max_chars`, so time and memory stay linear and flat in the text's size.
    """
    if level == "char":
        yield from texts
        return
    max_chars = max_chars or MAX_PIECE_CHARS
    carry = ""
    for text in texts:
        text = carry + text  # carry is at most max_chars: no text is copied over and over
        start = safe_cut(text)
        if start:
            yield text[:start]
        while len(text) - start > max_chars:  # no safe cut in text[start:]
            yield text[start : start + max_chars]
            start += max_chars
            if on_forced_cut:
                on_forced_cut()
        carry = text[start:]
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
        match = _LINE_BOUNDARY.search(text, end) if end < len(text) else None
        stop = match.start() if match else len(text)
        chunks.append(text[start:stop])
        start = stop
    return chunks
