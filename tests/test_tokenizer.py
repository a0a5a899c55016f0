import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from textgen.tokenizer import (DOC, UNK, CharTable, _word_chunks, build_tokenizer, decode, encode, safe_cut,
                               tokenizer_level, word_edges)

TRICKY = "Hello,\tworld!\r\n\n  Emoji 😀🎉, CJK 漢字かな, accents é ñ, zero-width\u200b, end"


def test_char_level_round_trips_tricky_text():
    tok = build_tokenizer([TRICKY], "char")
    assert decode(tok, encode(tok, TRICKY)) == TRICKY


@settings(deadline=None, derandomize=True, max_examples=60)
@given(st.text(min_size=1, max_size=200))
def test_char_level_round_trips_any_text(text):
    tok = build_tokenizer([text], "char")
    ids = encode(tok, text)
    assert len(ids) == len(text)
    assert decode(tok, ids) == text


def test_bulk_char_encoder_matches_tokenizers_own_output():
    tok = build_tokenizer([TRICKY[:40]], "char")  # some characters of TRICKY stay unknown
    assert np.array_equal(encode(tok, TRICKY), tok.encode(TRICKY).ids)
    assert tok.token_to_id(UNK) in encode(tok, TRICKY)


def test_saved_tokenizer_loads_with_tokenizers_library(tmp_path):
    tok = build_tokenizer([TRICKY], "char")
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert loaded.decode(loaded.encode(TRICKY).ids) == TRICKY
    assert tokenizer_level(loaded) == "char"


def test_word_tokens_carry_the_space_before_them():
    text = "Hello,  world!\n\nBye."
    tok = build_tokenizer([text], "word")
    assert tok.encode(text).tokens == ["Hello", ",", " ", " world", "!", "\n", "\n", "Bye", "."]
    assert decode(tok, encode(tok, text)) == text
    assert tokenizer_level(tok) == "word"


def test_word_vocabulary_cap_keeps_the_most_frequent_tokens():
    text = "a a a a b b b c c d"
    tok = build_tokenizer([text], "word", vocab_size=5)  # [UNK], [DOC], " a", " b", " c"
    assert tok.get_vocab_size() == 5
    assert decode(tok, encode(tok, text)) == "[UNK] a a a b b b c c[UNK]"


# Letters (some whose lowercase differs in tokenizers and Python, or is two characters),
# digits, marks, punctuation and whitespace that Python and Oniguruma classify differently.
TRICKY_ALPHABET = "abcAB Z09_'.,!-([\n\t \x1c\x85\xa0\u2003½৴ΣσςİéÉ\u0301漢字"
tricky_text = st.text(alphabet=TRICKY_ALPHABET, min_size=1, max_size=120)


@settings(deadline=None, derandomize=True, max_examples=60)
@given(tricky_text)
def test_word_level_round_trips_text_whose_words_it_knows(text):
    tok = build_tokenizer([text], "word")
    assert decode(tok, encode(tok, text)) == text


@settings(deadline=None, derandomize=True, max_examples=40)
@given(tricky_text)
def test_lowercase_word_level_round_trips_to_the_folded_text(text):
    tok = build_tokenizer([text], "word", lowercase=True)
    assert decode(tok, encode(tok, text)) == normalizers.Lowercase().normalize_str(text)


def legacy_word_tokenizer(texts, vocab_size=20_000) -> Tokenizer:
    """A word-level tokenizer exactly as textgen made them before words carried their space."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s+"), "isolated")
    tok.decoder = decoders.Fuse()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=0,
                                                             special_tokens=[UNK, DOC], show_progress=False))
    return tok


def test_legacy_word_tokenizers_are_still_word_level_and_round_trip(tmp_path):
    text = "Hello,  world!\n\nBye."
    tok = legacy_word_tokenizer([text])
    tok.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer_level(tok) == "word"
    assert tok.encode(text).tokens == ["Hello", ",", "  ", "world", "!", "\n\n", "Bye", "."]
    assert decode(tok, encode(tok, text)) == text


def test_word_edges_classify_tokens_by_their_first_and_last_character():
    tok = build_tokenizer(["The cat, (the) dog_2 ½ cafe\u0301 a৴\n"], "word")
    ends, starts = word_edges(tok)
    edge = {t: (bool(ends[i]), bool(starts[i])) for t, i in tok.get_vocab().items()}
    assert edge["The"] == (True, True) and edge[" cat"] == (True, False)
    assert edge[" dog_2"] == (True, False) and edge["the"] == (True, True)
    assert edge[","] == edge[" ("] == edge[")"] == edge["\n"] == (False, False)
    # The tokenizer's regex decides, not Python's: its \w has combining marks, not "৴".
    assert edge[" cafe\u0301"] == (True, False) and edge["৴"] == (False, False)
    assert edge[UNK] == edge[DOC] == (False, False)
    assert word_edges(build_tokenizer(["The cat"], "char")) is None
    assert word_edges(build_tokenizer(["The cat"], "bpe", vocab_size=300)) is None


@settings(deadline=None, derandomize=True, max_examples=60)
@given(tricky_text, st.booleans())
def test_encoded_text_never_has_a_pair_the_glue_rule_refuses(text, legacy):
    tok = legacy_word_tokenizer([text]) if legacy else build_tokenizer([text], "word")
    ends, starts = word_edges(tok)
    ids = encode(tok, text)
    assert not (ends[ids[:-1]] & starts[ids[1:]]).any()


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
def test_special_tokens_are_unreachable_from_text(level):
    text = "see [DOC] and [UNK] here"
    tok = build_tokenizer([text], level, vocab_size=300)
    ids = encode(tok, text).tolist()
    assert tok.token_to_id(DOC) == 1 and tok.token_to_id(UNK) == 0  # still in the vocabulary
    assert 1 not in ids and 0 not in ids
    assert decode(tok, ids) == text
    assert decode(tok, [1]) == DOC


@settings(deadline=None, derandomize=True, max_examples=60)
@given(st.text(min_size=1, max_size=200))
def test_lowercase_char_table_matches_tokenizers_on_any_text(text):
    tok = build_tokenizer([text[: len(text) // 2]], "char", lowercase=True)  # some characters unknown
    assert encode(tok, text).tolist() == tok.encode(text).ids
    assert decode(tok, encode(tok, text[: len(text) // 2])) == normalizers.Lowercase().normalize_str(text[: len(text) // 2])


def test_lowercase_char_level_folds_case_that_python_folds_differently():
    text = "ΟΔΟΣ İstanbul Σ"
    tok = build_tokenizer([text], "char", lowercase=True)
    assert "Σ" not in tok.get_vocab() and "ς" not in tok.get_vocab()  # tokenizers folds Σ to σ everywhere
    assert np.array_equal(CharTable(tok).encode(text), tok.encode(text).ids)
    assert decode(tok, encode(tok, text)) == "οδοσ i̇stanbul σ"


def test_long_word_text_is_encoded_in_chunks_with_identical_ids(monkeypatch):
    import textgen.tokenizer as module

    text = "one two, three\n  four\nfive six.\n" * 50
    tok = build_tokenizer([text], "word")
    monkeypatch.setattr(module, "_CHUNK_CHARS", 37)
    assert len(module._word_chunks(text)) > 10
    assert np.array_equal(encode(tok, text), tok.encode(text).ids)


@settings(deadline=None, derandomize=True, max_examples=40)
@given(st.text(min_size=1, max_size=200))
def test_bpe_round_trips_any_text(text):
    tok = build_tokenizer([TRICKY, text], "bpe", vocab_size=300)
    assert tokenizer_level(tok) == "bpe"
    assert decode(tok, encode(tok, text)) == text


def test_bpe_learns_merges_up_to_the_vocabulary_size():
    tok = build_tokenizer([TRICKY * 20, "the cat sat on the mat " * 50], "bpe", vocab_size=300)
    assert tok.get_vocab_size() == 300
    assert len(tok.encode("the cat sat on the mat").ids) < 10  # far fewer tokens than bytes


@pytest.mark.parametrize("level", ["word", "bpe"])
def test_safe_cuts_leave_word_and_bpe_ids_unchanged(level):
    text = "one two,  three\n  four\nfive six.\n\n  seven's eight!!  nine" * 20
    tok = build_tokenizer([text], level, vocab_size=300)
    pieces, rest = [], text
    while len(rest) > 50:
        cut = safe_cut(rest[:50]) or len(rest)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    assert len(pieces) > 10
    ids = [i for piece in pieces for i in tok.encode(piece).ids]
    assert ids == tok.encode(text).ids


@pytest.mark.parametrize("level", ["word", "bpe"])
def test_token_pieces_recut_any_chunks_so_ids_are_unchanged(level):
    from textgen.tokenizer import token_pieces

    text = "one two,  three\n  four\nfive six.\n\n  seven's eight!!  nine" * 20
    tok = build_tokenizer([text], level, vocab_size=300)
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]  # cut inside words and space runs
    pieces = list(token_pieces(chunks, level))
    assert "".join(pieces) == text and len(pieces) > 10
    assert [i for piece in pieces for i in tok.encode(piece).ids] == tok.encode(text).ids


def test_token_pieces_carry_text_with_no_safe_cut_up_to_a_bound():
    from textgen.tokenizer import token_pieces

    chunks = ["x" * 100] * 5  # no space, no line start
    assert list(token_pieces(chunks, "word", max_chars=250)) == ["x" * 300, "x" * 200]
    assert list(token_pieces(["a b", "c"], "char")) == ["a b", "c"]  # any cut is safe for char


def _cut_by_safe_cut(text: str, window: int) -> list[str]:
    """Pieces as the token cache and evaluate read a file: a window at a time, re-cut by `token_pieces`."""
    from textgen.tokenizer import token_pieces

    return list(token_pieces((text[i : i + window] for i in range(0, len(text), window)), "word"))


SCHEMES = {
    "word": lambda text: build_tokenizer([text], "word"),
    "word lowercase": lambda text: build_tokenizer([text], "word", lowercase=True),
    "legacy word": lambda text: legacy_word_tokenizer([text]),
    "bpe": lambda text: build_tokenizer([text], "bpe", vocab_size=300),
    "bpe lowercase": lambda text: build_tokenizer([text], "bpe", vocab_size=300, lowercase=True),
}


@pytest.mark.parametrize("scheme", SCHEMES)
@settings(deadline=None, derandomize=True, max_examples=40)
@given(text=st.text(alphabet=TRICKY_ALPHABET, min_size=1, max_size=150), window=st.integers(1, 20))
def test_encoding_pieces_cut_at_safe_places_equals_encoding_the_whole(scheme, text, window):
    tok = SCHEMES[scheme](text)
    whole = tok.encode(text).ids
    for pieces in (_cut_by_safe_cut(text, window), _word_chunks(text, window)):
        assert "".join(pieces) == text
        assert [i for piece in pieces for i in tok.encode(piece).ids] == whole
