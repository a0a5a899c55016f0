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
