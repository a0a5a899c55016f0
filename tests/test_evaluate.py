import math

import numpy as np

from textgen.evaluate import evaluate_texts
from textgen.tokenizer import encode


def test_evaluate_equals_mean_loss_computed_directly(tiny_generator, corpus_text, monkeypatch):
    import textgen.evaluate as module

    monkeypatch.setattr(module, "CHUNK_TOKENS", 64)  # several chunks, state carried across them
    text = corpus_text[:500]
    ids = encode(tiny_generator.tokenizer, text)
    logits = np.asarray(tiny_generator.model(ids[None, :-1], training=False), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    mean_nats = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    score = evaluate_texts(tiny_generator, [text])
    assert score.tokens == len(ids) - 1 == score.characters
    assert math.isclose(score.perplexity, math.exp(mean_nats), rel_tol=1e-4)
    assert math.isclose(score.bits_per_char, mean_nats / math.log(2), rel_tol=1e-4)


def _tiny_generator(tmp_path, level: str, vocab_size: int):
    """A 3-step model of make_text(150) at `level`, loaded."""
    import textgen
    from tests.conftest import TINY, make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(150), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=3, level=level, vocab_size=vocab_size, **TINY)
    return textgen.load(bundle)


def test_bits_per_char_counts_characters_not_bpe_tokens(tmp_path):
    generator = _tiny_generator(tmp_path, "bpe", 300)
    text = "Then the cat sat on a mat.\n"
    first = generator.tokenizer.encode(text).tokens[0]  # "Then": never predicted
    score = evaluate_texts(generator, [text])
    assert score.tokens == len(encode(generator.tokenizer, text)) - 1 < score.characters
    assert score.characters == len(text) - len(first)
    assert math.isclose(score.bits_per_char, score.nats / score.characters / math.log(2))


def test_files_read_in_small_blocks_score_as_the_whole_text(tiny_generator, corpus_text, tmp_path, monkeypatch):
    import textgen.evaluate as module
    from textgen.evaluate import evaluate_files

    text = "\ufeff" + corpus_text[:3000].replace("\n", "\r\n")  # a BOM and CRLFs, split across blocks
    path = tmp_path / "held_out.txt"
    path.write_text(text, encoding="utf-8", newline="")
    monkeypatch.setattr(module, "READ_BYTES", 97)
    monkeypatch.setattr(module, "CHUNK_TOKENS", 50)
    seen = []
    streamed = evaluate_files(tiny_generator, [path], progress=seen.append)
    whole = evaluate_texts(tiny_generator, [corpus_text[:3000]])
    assert sum(seen) == path.stat().st_size and max(seen) == 97
    assert (streamed.tokens, streamed.characters) == (whole.tokens, whole.characters)
    assert math.isclose(streamed.nats, whole.nats, rel_tol=1e-5)


def test_reading_a_large_file_keeps_memory_flat(corpus_text, tmp_path, monkeypatch):
    """Scoring holds one piece (plus one chunk of logits) at a time; the reader must too."""
    import tracemalloc

    import textgen.evaluate as module
    from textgen.evaluate import read_pieces

    path = tmp_path / "large.txt"
    path.write_text(corpus_text * 700, encoding="utf-8")  # ~3 MB
    monkeypatch.setattr(module, "READ_BYTES", 65536)
    tracemalloc.start()
    try:
        lengths = [len(piece) for piece in read_pieces(path, level="word")]  # re-cut at safe places
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(lengths) == len(corpus_text) * 700 and max(lengths) <= 65536 + 100
    assert peak < 1_000_000 < path.stat().st_size / 3


def test_bad_files_get_clear_errors(tiny_generator, tmp_path):
    import pytest

    from textgen.config import TextgenError
    from textgen.evaluate import evaluate_files

    cases = {b"": "empty", b"ab\x00cd": "NUL byte at offset 2", b"abc\xff": "byte offset 3", b"a": "too short"}
    for data, message in cases.items():
        (tmp_path / "f.txt").write_bytes(data)
        with pytest.raises(TextgenError, match=message):
            evaluate_files(tiny_generator, [tmp_path / "f.txt"])


def test_unk_char_share_counts_the_characters_of_unknown_words(tmp_path):
    """Word level charges one [UNK] for a whole unknown word: the score says how many characters that hid."""
    generator = _tiny_generator(tmp_path, "word", 100)
    text = "The cat zork on a mat.\nThe quux sat blorp dog.\n"
    unknown = [" zork", " quux", " blorp"]  # each word carries its space into its [UNK]
    score = evaluate_texts(generator, [text])
    assert score.characters == len(text) - len("The")  # the first token is never predicted
    assert score.unk_char_share == sum(map(len, unknown)) / score.characters
    assert evaluate_texts(generator, ["The cat sat on a mat.\n"]).unk_char_share == 0.0
    assert evaluate_texts(generator, ["Zork cat sat.\n"]).unk_char_share == 0.0  # never predicted


def test_documents_score_as_trained_doc_text_doc_text_doc(lines_bundle, tmp_path, monkeypatch):
    """Every token after the first [DOC] is charged, each document's closing [DOC] included;
    characters are the documents' own (blank lines are no documents)."""
    import textgen
    import textgen.evaluate as module
    from textgen.evaluate import evaluate_documents
    from textgen.tokenizer import DOC

    monkeypatch.setattr(module, "CHUNK_TOKENS", 7)  # state carried across chunks
    generator = textgen.load(lines_bundle)
    d1, d2 = "The cat sat on a mat.", "A dog ran to it."
    path = tmp_path / "held_out.txt"
    path.write_text(f"{d1}\n\n{d2}\n", encoding="utf-8")
    doc = generator.tokenizer.token_to_id(DOC)
    ids = np.concatenate([[doc], encode(generator.tokenizer, d1), [doc], encode(generator.tokenizer, d2), [doc]])
    logits = np.asarray(generator.model(ids[None, :-1].astype(np.int32), training=False), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nats = -logp[np.arange(len(ids) - 1), ids[1:]].sum()
    score = evaluate_documents(generator, [path], "lines")
    assert (score.tokens, score.characters) == (len(ids) - 1, len(d1) + len(d2))
    assert math.isclose(score.nats, nats, rel_tol=1e-6)
    assert math.isclose(score.bits_per_char, nats / (len(d1) + len(d2)) / math.log(2), rel_tol=1e-6)
