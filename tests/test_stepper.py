import warnings

import numpy as np
import pytest

from textgen.cells import CELL_NAMES, cell_of
from textgen.config import ModelConfig
from textgen.model import build_stateful_model
from textgen.stepper import GRUStepper, LSTMStepper, RNNStepper, Stepper


def random_states(batch, units, layers, cell="lstm", seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, (batch, units)).astype(np.float32) for _ in cell_of(cell).state_names(layers)]


def keras_and_stepper(layers=2, units=32, cell="lstm"):
    import keras

    keras.utils.set_random_seed(3)
    model = build_stateful_model(ModelConfig(vocab_size=30, embedding_dim=8, layers=layers, units=units, dropout=0.0,
                                             cell=cell))
    return model, Stepper.from_model(model)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_forward_matches_keras_logits_and_states(cell):
    model, stepper = keras_and_stepper(layers=3, cell=cell)
    assert type(stepper) is {"lstm": LSTMStepper, "gru": GRUStepper, "rnn": RNNStepper}[cell]
    ids = np.random.default_rng(1).integers(0, 30, (2, 25)).astype(np.int32)
    states = random_states(2, 32, 3, cell)
    assert len(stepper.zero_states(2)) == len(states) == len(model.inputs) - 1
    expected = [np.asarray(t) for t in model([ids, *states], training=False)]
    logits, new_states = stepper.forward(ids, states)
    np.testing.assert_allclose(logits, expected[0], atol=1e-5)
    for ours, theirs in zip(new_states, expected[1:]):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_steps_equal_one_forward_over_the_sequence(cell):
    _, stepper = keras_and_stepper(cell=cell)
    ids = np.random.default_rng(2).integers(0, 30, (3, 12)).astype(np.int32)
    full, full_states = stepper.forward(ids, stepper.zero_states(3))
    states = stepper.zero_states(3)
    for t in range(ids.shape[1]):
        logits, states = stepper.step(ids[:, t], states)  # (3, vocab)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
    for ours, theirs in zip(states, full_states):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_trace_holds_the_states_forward_reaches_and_gates_in_range(cell):
    _, stepper = keras_and_stepper(cell=cell)
    ids = np.random.default_rng(4).integers(0, 30, 15).astype(np.int32)
    _, states = stepper.forward(ids[None, :], stepper.zero_states(1))
    traced = stepper.trace(ids)
    flat = [layer[name][-1] for layer in traced for name in cell_of(cell).states]
    for ours, theirs in zip(flat, states):
        np.testing.assert_allclose(ours, theirs[0], atol=1e-6)
    for layer in traced:
        assert set(layer) == {*cell_of(cell).states, *cell_of(cell).gates}
        for gate in cell_of(cell).gates:
            assert layer[gate].shape == (15, 32) and 0 <= layer[gate].min() and layer[gate].max() <= 1
        if cell == "lstm":  # h' = o * tanh(c'): the traced output gate is the one the step used
            np.testing.assert_allclose(layer["h"], layer["output"] * np.tanh(layer["c"]), atol=1e-6)


def test_trained_bundle_weights_are_read_by_layer_name(tiny_generator):
    ids = tiny_generator.encode_prime("The cat sat on a mat.")
    expected = np.asarray(tiny_generator.model(ids[None, :], training=False))  # (1, time, vocab)
    logits, _ = Stepper.from_model(tiny_generator.model).forward(ids[None, :], tiny_generator.zero_states(1))
    np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("one_by_one", [True, False])
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 32])
def test_few_row_products_are_the_matrix_product(rows, one_by_one, monkeypatch):
    from textgen import stepper
    from textgen.stepper import _times

    monkeypatch.setattr(stepper, "_rows_one_by_one", lambda: one_by_one)  # both of the probe's answers

    rng = np.random.default_rng(rows)
    x, w = rng.normal(size=(rows, 16)).astype(np.float32), rng.normal(size=(16, 24)).astype(np.float32)
    np.testing.assert_allclose(_times(x, w), x @ w, rtol=1e-5, atol=1e-5)
    assert _times(x, w).shape == (rows, 24) and _times(x[None], w).shape == (1, rows, 24)  # (batch, time, n) too


def test_the_few_rows_probe_answers_once():
    from textgen.stepper import _rows_one_by_one

    assert _rows_one_by_one() in (True, False) and _rows_one_by_one.cache_info().currsize == 1


def test_gate_sigmoids_saturate_without_overflow_warnings():
    # pre-scaled pre-activations: sigmoid(-z) of every entry, in place
    z = np.array([[-1000.0, -20.0, 0.0, 20.0, 1000.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = LSTMStepper._sigmoids(z.copy())
    np.testing.assert_allclose(out, 0.5 * (1.0 - np.tanh(z.astype(np.float64) / 2)), rtol=1e-6, atol=1e-30)
    assert out[0, 0] == 1.0 and out[0, -1] == 0.0
