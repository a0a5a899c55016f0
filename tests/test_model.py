import numpy as np
import pytest

from textgen.config import ModelConfig
from textgen.model import build_model, build_stateful_model, copy_weights

CFG = ModelConfig(vocab_size=11, embedding_dim=4, layers=2, units=8, dropout=0.2)


def test_shapes_and_layer_names():
    model = build_model(CFG)
    out = model(np.zeros((3, 7), np.int32))
    assert tuple(out.shape) == (3, 7, 11)
    names = {layer.name for layer in model.layers}
    assert {"embedding", "lstm_0", "lstm_1", "logits"} <= names


def test_stateful_view_equals_training_model_and_carries_state():
    model = build_model(CFG)
    stateful = build_stateful_model(CFG)
    copy_weights(model, stateful)
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 12)).astype(np.int32)
    full = np.asarray(model(ids, training=False))
    zeros = [np.zeros((2, 8), np.float32)] * 4
    first = stateful([ids[:, :5], *zeros])
    second = stateful([ids[:, 5:], *[np.asarray(s) for s in first[1:]]])  # carry (h, c) into the next chunk
    chunked = np.concatenate([np.asarray(first[0]), np.asarray(second[0])], axis=1)
    np.testing.assert_allclose(chunked, full, atol=1e-5)


@pytest.mark.parametrize("cfg", [
    CFG,
    ModelConfig(vocab_size=27, embedding_dim=3, layers=1, units=4, dropout=0.0),
    ModelConfig(vocab_size=300, embedding_dim=8, layers=3, units=16, dropout=0.0),  # TINY at bpe level
])
def test_config_parameter_count_equals_what_keras_builds(cfg):
    assert cfg.parameter_count() == build_model(cfg).count_params()


def test_leveled_dropout_scales_its_rate_by_the_level_and_is_the_identity_at_level_zero():
    from textgen.model import LeveledDropout

    layer = LeveledDropout(0.5)
    x = np.ones((400, 100), np.float32)
    dropped = lambda: float(np.mean(np.asarray(layer(x, training=True)) == 0))
    assert dropped() == pytest.approx(0.5, abs=0.02)
    assert np.asarray(layer(x, training=True)).mean() == pytest.approx(1.0, abs=0.03)  # kept values scaled up
    layer.set_level(0.5)
    assert dropped() == pytest.approx(0.25, abs=0.02)
    layer.set_level(0.0)
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)), x)
    layer.set_level(1.0)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_leveled_dropout_draws_no_random_numbers_at_level_zero():
    """A short run's dropout layers cost nothing: at level 0 the seed state stays put, eagerly and traced."""
    import tensorflow as tf

    from textgen.model import LeveledDropout

    layer = LeveledDropout(0.5)
    x = np.ones((4, 8), np.float32)
    seed_state = lambda: layer.seed_generator.state.numpy().copy()
    for call in (lambda: layer(x, training=True), tf.function(lambda: layer(x, training=True))):
        layer.set_level(0.0)
        before = seed_state()
        np.testing.assert_array_equal(np.asarray(call()), x)
        np.testing.assert_array_equal(seed_state(), before)
        layer.set_level(1.0)
        call()
        assert not np.array_equal(seed_state(), before)


def test_the_dropout_level_is_not_a_weight_so_bundles_and_resume_states_keep_their_layout():
    from textgen.model import LeveledDropout

    training = build_stateful_model(CFG, dropout=True)
    assert sum(isinstance(layer, LeveledDropout) for layer in training.layers) == 2  # between layers, before logits
    plain = build_stateful_model(CFG, dropout=False)
    seeds = lambda model: sum("seed" in v.name for v in model.variables)
    # what keras.layers.Dropout adds: one seed state per layer, and no level
    assert len(training.variables) - len(plain.variables) == seeds(training) - seeds(plain) == 2


def test_a_compiled_training_step_follows_the_level_set_after_tracing():
    """Level 0 trains exactly as a model without dropout layers; level 1 then differs."""
    import keras
    import tensorflow as tf

    from textgen.model import LeveledDropout

    def trainer(rate: float):
        net = build_stateful_model(ModelConfig(vocab_size=11, embedding_dim=4, layers=2, units=8, dropout=rate),
                                   dropout=True)
        optimizer = keras.optimizers.SGD(0.5)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = net([x, *[tf.zeros((4, 8))] * 4], training=True)[0]  # (batch, time, vocab)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
            return loss

        return net, step

    (dropping, step_a), (plain, step_b) = trainer(0.5), trainer(0.0)
    copy_weights(dropping, plain)
    levels = [layer for layer in dropping.layers if isinstance(layer, LeveledDropout)]
    batches = np.random.default_rng(0).integers(0, 11, size=(4, 2, 4, 6)).astype(np.int32)  # (step, x|y, batch, time)
    for layer in levels:
        layer.set_level(0.0)
    for x, y in batches[:2]:
        assert float(step_a(x, y)) == float(step_b(x, y))
    for layer in levels:
        layer.set_level(1.0)
    assert [float(step_a(x, y)) for x, y in batches[2:]] != [float(step_b(x, y)) for x, y in batches[2:]]
