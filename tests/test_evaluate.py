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


def test_bits_per_char_counts_characters_not_bpe_tokens(tmp_path):
    import textgen
    from tests.conftest import TINY, make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(150), encoding="utf-8")
    bundle = textgen.train(str(corpus), checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "runs",
                           max_steps=3, level="bpe", vocab_size=300, **TINY)
    generator = textgen.load(bundle)
    text = "Then the cat sat on a mat.\n"
    first = generator.tokenizer.encode(text).tokens[0]  # "Then": never predicted
    score = evaluate_texts(generator, [text])
    assert score.tokens == len(encode(generator.tokenizer, text)) - 1 < score.characters
    assert score.characters == len(text) - len(first)
    assert math.isclose(score.bits_per_char, score.nats / score.characters / math.log(2))
