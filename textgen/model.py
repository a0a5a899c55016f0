"""The network: Embedding -> stacked LSTM -> Dense logits over the vocabulary.

Two views of the same weights:
- `build_model`: tokens (batch, time) -> logits (batch, time, vocab), for training;
- `build_stateful_model`: tokens and every layer's (h, c) in, logits and new states
  out, for generation and evaluation that carry state from one call to the next.

Layers are named (`embedding`, `lstm_0`, ..., `logits`) so weights move between the
two views, and between a bundle and either view, by name.
"""

from __future__ import annotations

import keras

from textgen.config import ModelConfig


def _lstm(units: int, name: str, *, return_state: bool) -> keras.layers.LSTM:
    # These arguments stay inside the cuDNN fast-path conditions (tanh/sigmoid activations,
    # recurrent_dropout=0, unroll=False, use_bias=True), so on a GPU Keras runs cuDNN.
    return keras.layers.LSTM(
        units, return_sequences=True, return_state=return_state, name=name,
        activation="tanh", recurrent_activation="sigmoid",
        recurrent_dropout=0.0, unroll=False, use_bias=True,
    )


def build_model(cfg: ModelConfig) -> keras.Model:
    """The training model: int tokens (batch, time) -> float logits (batch, time, vocab)."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    x = keras.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, name="embedding")(tokens)
    for i in range(cfg.layers):
        if i > 0 and cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
        x = _lstm(cfg.units, f"lstm_{i}", return_state=False)(x)  # (batch, time, units)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout_out")(x)
    logits = keras.layers.Dense(cfg.vocab_size, name="logits")(x)  # (batch, time, vocab)
    return keras.Model(tokens, logits, name="textgen_lstm")


def build_stateful_model(cfg: ModelConfig) -> keras.Model:
    """Inference model: [tokens, h_0, c_0, h_1, c_1, ...] -> [logits, h_0', c_0', ...].

    Dropout is left out (it is the identity at inference), so this model has exactly
    the training model's weights, by name and in the same order.
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    states_in, states_out = [], []
    x = keras.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, name="embedding")(tokens)
    for i in range(cfg.layers):
        h = keras.Input(shape=(cfg.units,), name=f"h_{i}")  # (batch, units)
        c = keras.Input(shape=(cfg.units,), name=f"c_{i}")
        x, h_new, c_new = _lstm(cfg.units, f"lstm_{i}", return_state=True)(x, initial_state=[h, c])
        states_in += [h, c]
        states_out += [h_new, c_new]
    logits = keras.layers.Dense(cfg.vocab_size, name="logits")(x)  # (batch, time, vocab)
    return keras.Model([tokens, *states_in], [logits, *states_out], name="textgen_lstm_stateful")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer, matched by name (dropout layers have none)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
