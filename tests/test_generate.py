import numpy as np
import pytest

from textgen.config import TextgenError


def test_same_seed_same_text(tiny_generator):
    a = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=3)
    b = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=3)
    c = tiny_generator.generate(prime="The", length=60, temperature=1.0, seed=4)
    assert a == b and a != c
    assert a.startswith("The") and len(a) == 3 + 60


def test_output_uses_only_vocabulary_symbols(tiny_generator):
    vocab = set(tiny_generator.tokenizer.get_vocab()) - {"[UNK]"}
    text = tiny_generator.generate(length=200, temperature=1.5, seed=0)
    assert set(text) <= vocab


def test_stream_yields_prime_then_one_piece_per_token(tiny_generator):
    pieces = list(tiny_generator.stream(prime="Cat", length=10, seed=1))
    assert pieces[0] == "Cat" and len(pieces) == 11
    assert "".join(pieces) == tiny_generator.generate(prime="Cat", length=10, seed=1)


def test_stateful_next_token_distribution_matches_full_model(tiny_generator):
    ids = tiny_generator.encode_prime("The cat sat on a mat.\nAnd")
    full = np.asarray(tiny_generator.model(ids[None, :], training=False))[0]  # (time, vocab)
    logits, states = tiny_generator.forward(ids[None, :10], tiny_generator.zero_states(1))
    for t in range(10, len(ids)):
        logits, states = tiny_generator.forward(ids[None, t : t + 1], states)
        np.testing.assert_allclose(logits[0, -1], full[t], atol=1e-4)


def test_unknown_prime_characters_are_named(tiny_generator):
    with pytest.raises(TextgenError, match="'Z'.*'#'|'#'.*'Z'"):
        tiny_generator.generate(prime="Z#", length=5)


def test_bad_controls_are_refused(tiny_generator):
    with pytest.raises(TextgenError, match="length"):
        tiny_generator.generate(length=0)
    with pytest.raises(TextgenError, match="temperature"):
        tiny_generator.generate(temperature=-0.5)
