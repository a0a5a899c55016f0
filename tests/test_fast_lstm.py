"""FastLSTM must be a drop-in keras.layers.LSTM: same outputs, gradients, weights."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from textgen import fast_lstm
from textgen.fast_lstm import FastLSTM

BATCH, STEPS, FEATURES, UNITS = 3, 7, 5, 4


def random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def layer_pair(**kwargs):
    """A built keras LSTM (random, non-zero bias) and a FastLSTM with its weights."""
    ref = keras.layers.LSTM(UNITS, bias_initializer="random_normal", **kwargs)
    fast = FastLSTM(UNITS, **kwargs)
    ref.build((BATCH, STEPS, FEATURES))
    fast.build((BATCH, STEPS, FEATURES))
    fast.set_weights(ref.get_weights())
    return ref, fast


def outputs_and_grads(layer, x, state, compile_mode):
    """Layer outputs plus gradients of a scalar loss w.r.t. inputs, state and weights."""

    def run(x, h0, c0):
        with tf.GradientTape() as tape:
            tape.watch([x, h0, c0])
            seq, h, c = layer(x, initial_state=[h0, c0])
            # Touch every output differently so that all upstream gradients matter.
            loss = tf.reduce_sum(seq**2) + tf.reduce_sum(tf.sin(h)) + tf.reduce_sum(c**3)
        grads = tape.gradient(loss, [x, h0, c0] + layer.trainable_variables)
        return [seq, h, c], grads

    if compile_mode == "graph":
        run = tf.function(run)
    elif compile_mode == "xla":
        run = tf.function(run, jit_compile=True)
    return run(tf.constant(x), *(tf.constant(s) for s in state))


@pytest.mark.parametrize("name,a,b,want", [
    ("_weight_grad", random(96, 8), random(96, 12, seed=1), lambda a, b: a.T @ b),  # (8, 12)
    ("_input_grad", random(96, 12), random(8, 12, seed=1), lambda a, b: a @ b.T),  # (96, 8)
])
def test_products_are_timed_once_per_shape_and_every_form_agrees(monkeypatch, name, a, b, want):
    product = getattr(fast_lstm, name)
    monkeypatch.setattr(product, "chosen", {})
    np.testing.assert_allclose(product(tf.constant(a), tf.constant(b)), want(a, b), rtol=1e-5, atol=1e-5)
    assert product.chosen == {}  # too small to be worth timing: the first form
    monkeypatch.setattr(fast_lstm, "_TIMED_FLOPS", 0)
    product(tf.constant(a), tf.constant(b))
    assert list(product.chosen) == [(a.shape, b.shape, "float32")]
    assert len(product.forms) == 2
    for form in range(len(product.forms)):
        product.chosen[(a.shape, b.shape, "float32")] = form
        np.testing.assert_allclose(product(tf.constant(a), tf.constant(b)), want(a, b), rtol=1e-5, atol=1e-5)


def test_bfloat16_products_are_never_timed_under_xla(monkeypatch):
    monkeypatch.setattr(fast_lstm, "_TIMED_FLOPS", 0)
    monkeypatch.setattr(fast_lstm._input_grad, "chosen", {})
    a, b = (tf.constant(v, tf.bfloat16) for v in (random(96, 12), random(8, 12, seed=1)))
    assert fast_lstm._input_grad.choose(a, b) == 0  # its one MatMul form: nothing to time
    assert fast_lstm._input_grad.chosen == {}


@pytest.mark.parametrize("compile_mode", ["eager", "graph", "xla"])
def test_outputs_states_and_gradients_match_keras_lstm(compile_mode):
    ref, fast = layer_pair(return_sequences=True, return_state=True)
    x, state = random(BATCH, STEPS, FEATURES), [random(BATCH, UNITS, seed=1), random(BATCH, UNITS, seed=2)]
    ref_out, ref_grads = outputs_and_grads(ref, x, state, compile_mode)
    fast_out, fast_grads = outputs_and_grads(fast, x, state, compile_mode)
    for want, got in zip(ref_out, fast_out):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(fast_grads) == 3 + 3  # x, h0, c0, kernel, recurrent_kernel, bias
    for want, got in zip(ref_grads, fast_grads):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("compile_mode", ["graph", "xla"])
def test_bfloat16_products_stay_close_to_keras_lstm_and_are_bfloat16(compile_mode):
    ref, fast = layer_pair(return_sequences=True, return_state=True)
    low = FastLSTM(UNITS, return_sequences=True, return_state=True, matmul_dtype="bfloat16")
    low.build((BATCH, STEPS, FEATURES))
    low.set_weights(ref.get_weights())
    x, state = random(BATCH, STEPS, FEATURES), [random(BATCH, UNITS, seed=1), random(BATCH, UNITS, seed=2)]
    ref_out, ref_grads = outputs_and_grads(ref, x, state, compile_mode)
    low_out, low_grads = outputs_and_grads(low, x, state, compile_mode)
    for want, got in zip(ref_out + ref_grads, low_out + low_grads):
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)  # bfloat16 keeps 8 bits of mantissa
    # ... and bfloat16 was used: the products' rounding shows (float32 matches to 1e-5, above).
    assert max(np.abs(got - want).max() for want, got in zip(ref_out, low_out)) > 1e-4


def test_matmul_dtype_is_checked():
    with pytest.raises(ValueError, match="matmul_dtype must be one of"):
        FastLSTM(UNITS, matmul_dtype="float16")


def test_default_state_and_last_output_only():
    ref, fast = layer_pair()
    x = random(BATCH, STEPS, FEATURES)
    np.testing.assert_allclose(fast(x), ref(x), atol=1e-5)


def test_initial_state_is_honored_and_carries_over():
    """Running two halves with the state carried equals one full run (truncated BPTT)."""
    _, fast = layer_pair(return_sequences=True, return_state=True)
    x = random(BATCH, STEPS, FEATURES)
    full, h_full, c_full = fast(x)
    first, h, c = fast(x[:, :3])
    second, h, c = fast(x[:, 3:], initial_state=[h, c])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-5)
    np.testing.assert_allclose(h, h_full, atol=1e-5)
    np.testing.assert_allclose(c, c_full, atol=1e-5)
    zero_start, _, _ = fast(x)
    other_start, _, _ = fast(x, initial_state=[np.ones((BATCH, UNITS), "float32")] * 2)
    assert not np.allclose(zero_start, other_start)


def test_stateful_matches_keras_lstm():
    ref = keras.layers.LSTM(UNITS, stateful=True, return_sequences=True)
    fast = FastLSTM(UNITS, stateful=True, return_sequences=True)
    ref.build((BATCH, 2, FEATURES))
    fast.build((BATCH, 2, FEATURES))
    fast.set_weights(ref.get_weights())
    for step in range(3):
        x = random(BATCH, 2, FEATURES, seed=step)
        np.testing.assert_allclose(fast(x), ref(x), atol=1e-5)


def test_weights_have_keras_lstm_names_and_shapes():
    ref, fast = layer_pair()
    assert [(w.path.split("/")[-1], w.shape) for w in fast.weights] == [
        (w.path.split("/")[-1], w.shape) for w in ref.weights
    ]
    assert [w.shape for w in fast.weights] == [(FEATURES, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,)]


def test_config_round_trip():
    fast = FastLSTM(UNITS, return_sequences=True, return_state=True, unit_forget_bias=False, name="lm",
                    matmul_dtype="bfloat16")
    clone = FastLSTM.from_config(fast.get_config())
    assert type(clone) is FastLSTM
    assert clone.get_config() == fast.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fast))
    assert type(revived) is FastLSTM and revived.get_config() == fast.get_config()


def model_with(lstm_class):
    """A tiny model whose layers have fixed names."""
    lstm = lstm_class(UNITS, return_sequences=True, name="lstm")
    return keras.Sequential([keras.Input((STEPS, FEATURES)), lstm, keras.layers.Dense(2, name="dense")])


@pytest.mark.parametrize("source,target", [(keras.layers.LSTM, FastLSTM), (FastLSTM, keras.layers.LSTM)])
def test_weights_load_across_classes_by_layer_name(tmp_path, source, target):
    """Legacy .h5 files match layers by name, so they load into either class.

    (Keras 3's .weights.h5 format keys layers by class name instead, so there
    a FastLSTM model and an LSTM model don't see each other's weights.)
    """
    x = random(BATCH, STEPS, FEATURES)
    saved = model_with(source)
    path = str(tmp_path / "model.h5")
    saved.save(path)
    loaded = model_with(target)
    loaded.load_weights(path, by_name=True)
    np.testing.assert_allclose(loaded(x), saved(x), atol=1e-5)
    copied = model_with(target)
    copied.get_layer("lstm").set_weights(saved.get_layer("lstm").get_weights())
    copied.get_layer("dense").set_weights(saved.get_layer("dense").get_weights())
    np.testing.assert_allclose(copied(x), saved(x), atol=1e-5)


def test_whole_model_save_and_load(tmp_path):
    x = random(BATCH, STEPS, FEATURES)
    model = model_with(FastLSTM)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("lstm")) is FastLSTM
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


def test_unsupported_options_fall_back_to_keras():
    """go_backwards and recurrent_dropout take the parent's path, so still match."""
    ref, fast = layer_pair(go_backwards=True)
    x = random(BATCH, STEPS, FEATURES)
    np.testing.assert_allclose(fast(x), ref(x), atol=1e-5)
