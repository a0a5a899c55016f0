import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from textgen.tokenizer import UNK, build_tokenizer, decode, encode, tokenizer_level

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


def test_word_level_splits_words_punctuation_and_whitespace_runs():
    text = "Hello,  world!\n\nBye."
    tok = build_tokenizer([text], "word")
    assert tok.encode(text).tokens == ["Hello", ",", "  ", "world", "!", "\n\n", "Bye", "."]
    assert decode(tok, encode(tok, text)) == text
    assert tokenizer_level(tok) == "word"


def test_word_vocabulary_cap_maps_rare_words_to_unk():
    text = "a a a a b b b c c d"
    tok = build_tokenizer([text], "word", vocab_size=5)  # [UNK], [DOC], " ", a, b
    assert tok.get_vocab_size() == 5
    assert decode(tok, encode(tok, text)) == "a a a a b b b [UNK] [UNK] [UNK]"


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
    from textgen.tokenizer import safe_cut

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
