import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from textgen.config import TextgenError
from textgen.generate import _PieceDecoder
from textgen.tokenizer import decode, encode
from tests.conftest import TINY, make_text


def test_same_seed_same_text(tiny_generator):
    a = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=3)
    b = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=3)
    c = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=4)
    assert a == b and a != c


def test_sample_i_of_a_batch_equals_the_single_sample_with_that_stream(tiny_generator):
    alone = tiny_generator.generate(prime="The", length=100, seed=11, top_k=10, repetition_penalty=1.2)
    batch = tiny_generator.sample(prime="The", num_samples=5, length=100, seed=11, top_k=10,
                                  repetition_penalty=1.2)
    assert len(batch) == 5 and batch[0] == alone
    assert len(set(batch)) == 5 and all(s.startswith("The") for s in batch)
    assert tiny_generator.sample(prime="The", num_samples=2, length=100, seed=11, top_k=10,
                                 repetition_penalty=1.2) == batch[:2]


def test_generated_text_never_contains_unk(tiny_generator):
    vocab = set(tiny_generator.tokenizer.get_vocab()) - {"[UNK]"}
    text = tiny_generator.generate(length=200, temperature=1.5, seed=0)
    assert set(text) <= vocab


def test_stream_yields_prime_then_one_piece_per_token_in_order(tiny_generator):
    pieces = list(tiny_generator.stream(prime="Cat", length=10, seed=1))
    assert pieces[0] == "Cat" and len(pieces) == 11
    assert "".join(pieces) == tiny_generator.generate(prime="Cat", length=10, seed=1)
    assert list(tiny_generator.stream(prime="Cat", length=10, seed=1, include_prime=False)) == pieces[1:]


def test_stateful_next_token_distribution_matches_full_model(tiny_generator):
    ids = tiny_generator.encode_prime("The cat sat on a mat.\nAnd")
    full = np.asarray(tiny_generator.model(ids[None, :], training=False))[0]  # (time, vocab)
    logits, states = tiny_generator.forward(ids[None, :10], tiny_generator.zero_states(1))
    for t in range(10, len(ids)):
        logits, states = tiny_generator.forward(ids[None, t : t + 1], states)
        np.testing.assert_allclose(logits[0, -1], full[t], atol=1e-4)


def test_stop_strings_end_the_text_where_they_first_appear(tiny_generator):
    free = tiny_generator.generate(prime="The", length=150, seed=5)
    continuation = free[3:]
    stop = next(s for s in (" a", "a", " ") if s in continuation)
    expected = "The" + continuation[: continuation.index(stop)]
    assert tiny_generator.generate(prime="The", length=150, seed=5, stop=[stop, "no such stop"]) == expected
    assert "".join(tiny_generator.stream(prime="The", length=150, seed=5, stop=stop)) == expected


def test_max_chars_and_greedy_controls(tiny_generator):
    free = tiny_generator.generate(prime="The", length=80, seed=2)
    assert tiny_generator.generate(prime="The", length=None, max_chars=40, seed=2) == free[: 3 + 40]
    greedy = tiny_generator.generate(prime="The", length=40, temperature=0)
    assert tiny_generator.generate(prime="The", length=40, top_k=1, seed=9) == greedy
    assert tiny_generator.generate(prime="The", length=40, top_p=1.0, seed=9) == \
        tiny_generator.generate(prime="The", length=40, seed=9)


def test_top_k_0_is_off_and_the_largest_seed_works(tiny_generator):
    free = tiny_generator.generate(prime="The", length=40, seed=2**63 - 1)
    assert tiny_generator.generate(prime="The", length=40, seed=2**63 - 1, top_k=0) == free
    assert tiny_generator.sample(prime="The", num_samples=2, length=40, seed=2**63 - 1)[0] == free


def test_unknown_prime_characters_are_named(tiny_generator):
    with pytest.raises(TextgenError, match="'Z'.*'#'|'#'.*'Z'"):
        tiny_generator.generate(prime="Z#", length=5)


@pytest.mark.parametrize("controls, word", [
    (dict(length=0), "length"), (dict(temperature=-0.5), "temperature"), (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(length=None), "max_chars"), (dict(max_chars=0), "max_chars"), (dict(temperature=float("nan")), "temperature"),
    (dict(seed=2**63), "seed"), (dict(temprature=0.5), "unknown control 'temprature'"),
])
def test_bad_controls_are_refused(tiny_generator, controls, word):
    with pytest.raises(TextgenError, match=word):
        tiny_generator.generate(**controls)


def test_bad_num_samples_is_refused(tiny_generator):
    with pytest.raises(TextgenError, match="num_samples"):
        tiny_generator.sample(num_samples=0)


@pytest.fixture(scope="module")
def word_generator(tmp_path_factory):
    import textgen

    root = tmp_path_factory.mktemp("word_run")
    corpus = root / "words.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=root / "ck", log_dir=root / "runs", level="word",
                           max_steps=5, **TINY)
    return textgen.load(bundle)


def test_word_level_pieces_join_into_natural_text(word_generator):
    text = "The cat sat.\nA dog ran to it.\nMat"  # only tokens the tiny vocabulary has
    ids = encode(word_generator.tokenizer, text)
    pieces = _PieceDecoder(word_generator.tokenizer, 1, word_generator._piece_table)
    assert "".join(pieces.pieces(np.array([i]))[0] for i in ids) == decode(word_generator.tokenizer, ids) == text
    out = word_generator.generate(prime="The cat", length=60, seed=1)
    assert "[UNK]" not in out and out.startswith("The cat")
    streamed = list(word_generator.stream(prime="The cat", length=60, seed=1))
    vocab = word_generator.tokenizer.get_vocab()
    assert "".join(streamed) == out and all(p in vocab for p in streamed[1:])  # tokens joined by nothing


def letter_runs(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text)


def test_word_level_text_never_glues_two_words(word_generator):
    words = set(letter_runs(make_text()))  # the corpus: words separated by spaces, lines by newlines
    samples = word_generator.sample(prime="The cat", num_samples=8, length=200, temperature=2.0, seed=3)
    assert {w for sample in samples for w in letter_runs(sample)} <= words  # no "catThe": only corpus words


def test_a_bundle_with_the_legacy_word_tokenizer_loads_and_generates(tmp_path):
    import textgen
    from textgen.corpus_cache import sha256_file
    from tests.test_tokenizer import legacy_word_tokenizer

    corpus = tmp_path / "words.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           level="word", vocab_size=16, max_steps=3, **TINY)
    # What textgen wrote before words carried their space: the same vocabulary size, old tokens.
    legacy_word_tokenizer([make_text()], vocab_size=16).save(str(bundle / "tokenizer.json"))
    document = json.loads((bundle / "config.json").read_text())
    document["files"]["tokenizer.json"] = sha256_file(bundle / "tokenizer.json")
    (bundle / "config.json").write_text(json.dumps(document))
    generator = textgen.load(bundle)
    assert " " in generator.tokenizer.get_vocab() and " cat" not in generator.tokenizer.get_vocab()
    text = generator.generate(prime="the cat", length=100, temperature=2.0, seed=0)
    assert text.startswith("the cat") and set(letter_runs(text)) <= set(letter_runs(make_text()))


def test_byte_level_tokens_are_decoded_incrementally_without_broken_characters():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = "naïve café — 東京 🎉 déjà vu\n" * 3
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = tokenizer.encode(text).ids
    assert len(ids) > 10
    decoder = _PieceDecoder(tokenizer, 2, _PieceDecoder.piece_table(tokenizer))
    pieces = [decoder.pieces(np.array([i, i])) for i in ids]  # two samples, same ids
    assert "".join(p[0] for p in pieces) == "".join(p[1] for p in pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p[0] for p in pieces)


def test_bpe_model_streams_its_prime_and_never_emits_special_tokens(tmp_path):
    import textgen
    from tests.conftest import TINY, make_text

    corpus = tmp_path / "emoji.txt"
    corpus.write_text(make_text(150).replace("cat", "c😀t漢"), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=5, level="bpe", vocab_size=270, **TINY)
    generator = textgen.load(bundle)
    assert generator.config.tokenizer.level == "bpe"
    assert len(generator.tokenizer.encode("😀").ids) > 1  # the emoji is several byte tokens
    text = generator.generate(prime="The c😀t", length=80, temperature=1.5, seed=0)
    assert text.startswith("The c😀t")
    assert "[DOC]" not in text and "[UNK]" not in text  # never sampled
    assert "".join(generator.stream(length=30, seed=2)) == generator.generate(length=30, seed=2)
