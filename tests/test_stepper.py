import numpy as np

from textgen.config import ModelConfig
from textgen.model import build_stateful_model
from textgen.stepper import LSTMStepper


def random_states(batch, units, layers, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, (batch, units)).astype(np.float32) for _ in range(2 * layers)]


def keras_and_stepper(layers=2, units=32):
    import keras

    keras.utils.set_random_seed(3)
    model = build_stateful_model(ModelConfig(vocab_size=30, embedding_dim=8, layers=layers, units=units, dropout=0.0))
    return model, LSTMStepper.from_model(model)


def test_forward_matches_keras_logits_and_states():
    model, stepper = keras_and_stepper(layers=3)
    ids = np.random.default_rng(1).integers(0, 30, (2, 25)).astype(np.int32)
    states = random_states(2, 32, 3)
    expected = [np.asarray(t) for t in model([ids, *states], training=False)]
    logits, new_states = stepper.forward(ids, states)
    np.testing.assert_allclose(logits, expected[0], atol=1e-5)
    for ours, theirs in zip(new_states, expected[1:]):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_steps_equal_one_forward_over_the_sequence():
    _, stepper = keras_and_stepper()
    ids = np.random.default_rng(2).integers(0, 30, (3, 12)).astype(np.int32)
    full, full_states = stepper.forward(ids, stepper.zero_states(3))
    states = stepper.zero_states(3)
    for t in range(ids.shape[1]):
        logits, states = stepper.step(ids[:, t], states)  # (3, vocab)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
    np.testing.assert_allclose(states[-1], full_states[-1], atol=1e-5)


def test_trained_bundle_weights_are_read_by_layer_name(tiny_generator):
    ids = tiny_generator.encode_prime("The cat sat on a mat.")
    expected = np.asarray(tiny_generator.model(ids[None, :], training=False))  # (1, time, vocab)
    logits, _ = LSTMStepper.from_model(tiny_generator.model).forward(ids[None, :], tiny_generator.zero_states(1))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
