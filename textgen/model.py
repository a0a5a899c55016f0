"""The network: Embedding -> stacked recurrent layers -> Dense logits over the vocabulary.

The recurrent layers are LSTM (the default), GRU or SimpleRNN (`ModelConfig.cell`); what
each carries as state is defined once, in textgen.cells. Two views of the same weights:
- `build_model`: tokens (batch, time) -> logits (batch, time, vocab), for training;
- `build_stateful_model`: tokens and every layer's state (LSTM: h, c) in, logits and new
  states out, for generation and evaluation that carry state from one call to the next.

Layers are named (`embedding`, `lstm_0` or `gru_0` or `rnn_0`, ..., `logits`) so weights
move between the two views, and between a bundle and either view, by name.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from textgen.cells import cell_of
from textgen.config import ModelConfig
from textgen.distribute import MultiWorkerFix
from textgen.fast_lstm import FastLSTM


def _recurrent(cell: str, units: int, name: str, *, return_state: bool, dtype=None,
               matmul_dtype=None) -> keras.layers.RNN:
    """One recurrent layer of the chosen cell, returning sequences (and its states if asked).

    `matmul_dtype` ("bfloat16" or None) is FastLSTM's: the LSTM's products outside its loops.
    """
    common = dict(return_sequences=True, return_state=return_state, name=name, dtype=dtype)
    if cell == "rnn":
        return keras.layers.SimpleRNN(units, activation="tanh", use_bias=True, **common)
    # These arguments stay inside the cuDNN fast-path conditions (tanh/sigmoid activations,
    # recurrent_dropout=0, unroll=False, use_bias=True; GRU: reset_after=True), so a GPU
    # runs cuDNN. FastLSTM is keras.layers.LSTM with a faster CPU training path and the same
    # weights; on a GPU it defers to Keras.
    gated = dict(activation="tanh", recurrent_activation="sigmoid", recurrent_dropout=0.0, unroll=False,
                 use_bias=True, **common)
    if cell == "gru":
        return keras.layers.GRU(units, reset_after=True, **gated)
    return FastLSTM(units, matmul_dtype=matmul_dtype, **gated)


def build_model(cfg: ModelConfig) -> keras.Model:
    """The export model: int tokens (batch, time) -> float logits (batch, time, vocab)."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    x = keras.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, name="embedding")(tokens)
    cell = cell_of(cfg.cell)
    for i in range(cfg.layers):
        if i > 0 and cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
        x = _recurrent(cfg.cell, cfg.units, cell.layer_name(i), return_state=False)(x)  # (batch, time, units)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout_out")(x)
    logits = keras.layers.Dense(cfg.vocab_size, name="logits")(x)  # (batch, time, vocab)
    return keras.Model(tokens, logits, name="textgen_lstm")


def build_stateful_model(cfg: ModelConfig, *, dropout: bool = False, dtype=None, matmul_dtype=None) -> keras.Model:
    """[tokens, *states] -> [logits, *new states], states as textgen.cells lists them
    (LSTM: [h_0, c_0, h_1, c_1, ...]; GRU and SimpleRNN: [h_0, h_1, ...]).

    Used for training with carried state (dropout=True) and for generation and
    evaluation (dropout=False: the identity at inference, so left out). Layer names
    match `build_model`, so weights move between the views with `copy_weights`.
    `dtype`: a Keras dtype policy such as "mixed_bfloat16" for every layer but the
    logits, which stay float32 (a stable softmax); weights are float32 either way.
    It is given per layer, never set process-wide, so it cannot leak into later runs.
    `matmul_dtype`: "bfloat16" runs an LSTM's products outside its time loops in bfloat16
    (textgen.fast_lstm; --mixed-precision on CPUs with AMX), or None.
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    rate = cfg.dropout if dropout else 0.0
    states_in, states_out = [], []
    cell = cell_of(cfg.cell)
    x = keras.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, name="embedding", dtype=dtype)(tokens)
    for i in range(cfg.layers):
        if i > 0 and rate > 0:
            x = LeveledDropout(rate, name=f"dropout_{i}", dtype=dtype)(x)
        layer_in = [keras.Input(shape=(cfg.units,), name=f"{state}_{i}") for state in cell.states]  # (batch, units)
        layer = _recurrent(cfg.cell, cfg.units, cell.layer_name(i), return_state=True, dtype=dtype,
                           matmul_dtype=matmul_dtype)
        x, *layer_out = layer(x, initial_state=layer_in)
        states_in += layer_in
        states_out += layer_out
    if rate > 0:
        x = LeveledDropout(rate, name="dropout_out", dtype=dtype)(x)
    logits = keras.layers.Dense(cfg.vocab_size, name="logits", dtype="float32")(x)  # (batch, time, vocab) float32
    return keras.Model([tokens, *states_in], [logits, *states_out], name="textgen_lstm_stateful")


class LeveledDropout(keras.layers.Dropout):
    """Dropout at `rate` times a level in [0, 1], which can change between steps without retracing.

    textgen.callbacks.ShortRunDropout sets the level (0: a short run trains without dropout).
    The level is a plain tf.Variable, which Keras does not count among the layer's weights, so
    bundles and resume states hold what they hold for keras.layers.Dropout (its seed state).
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(rate, **kwargs)
        self.level = tf.Variable(1.0, trainable=False, dtype=tf.float32, name=f"{self.name}_level")

    def set_level(self, level: float) -> None:
        self.level.assign(level)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        # At level 0 nothing is drawn: TensorFlow made ~400 million uniform numbers a second on
        # a 2-core AVX-512 EPYC (2.5 ms for a 32 x 64 x 512 batch; 2026-12-08), and with the select
        # and its gradient a level-0 dropout cost 9 % of a 1 x 512 training step at batch 32 x 64.
        return tf.cond(self.level > 0, lambda: self._dropped(inputs), lambda: tf.identity(inputs))

    def _dropped(self, inputs):
        rate = self.level * self.rate  # a tensor, read at every step
        noise = keras.random.uniform(tf.shape(inputs), seed=self.seed_generator)  # float32, also under bfloat16
        kept = inputs * tf.cast(1 / (1 - rate), inputs.dtype)
        return tf.where(noise >= rate, kept, tf.zeros_like(inputs))  # (batch, time, features)


class ReplicaRows:
    """A sync-on-read carried-state variable seen whole: its replicas' copies stacked by rows.

    Row block r is replica r's streams (the batch is split by rows), so the array has the
    layout one device would have. Offers what saving and restoring use: shape, numpy(),
    assign(). Hand-written because tf.distribute reads such a variable as one replica's copy.
    """

    def __init__(self, var: keras.Variable, strategy):
        self.copies = local_copies(var, strategy)  # one variable per replica of this process
        per = tuple(var.shape)  # one replica's (batch, units)
        self.shape = (per[0] * len(self.copies), *per[1:])

    def numpy(self):
        return np.concatenate([copy.numpy() for copy in self.copies])

    def assign(self, array) -> None:
        for copy, rows in zip(self.copies, np.split(np.asarray(array), len(self.copies))):
            copy.assign(rows)


def local_copies(var: keras.Variable, strategy) -> tuple:
    """The per-replica copies of a distributed Keras variable held by this process."""
    return tuple(strategy.experimental_local_results(var.value))


class CarriedStateModel(MultiWorkerFix, keras.Model):
    """Truncated backpropagation through time over B contiguous streams.

    Batch t holds the t-th slice of each of B streams of the corpus, so the states (LSTM:
    h, c) a batch ends with is the right starting state for the next one: every step sees
    context far longer than --seq-len at no extra cost. The states live in
    non-trainable variables, one set for training and one for validation, and are
    zeroed when a batch arrives with `reset` set (the streams start over).

    `train_step` follows Keras' own TensorFlow step (same loss and metric helpers),
    adding the carried state and the gradient global norm (`grad_norm` in the batch
    logs). It uses Keras internals (_compute_loss, _loss_tracker); pyproject pins
    keras to 3.15.x and tests/test_training.py fails if they change.

    Under a `tf.distribute` strategy (build it inside `strategy.scope()`), the batch
    is split by rows across replicas, so each replica reads its own contiguous streams
    and carries their state: the carry variables are sync-on-read, one copy per replica
    of shape (per-replica batch, units). `batch_size` and `val_batch_size` are per replica.
    """

    def __init__(self, net: keras.Model, cfg: ModelConfig, batch_size: int, val_batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.train_carry = self._carry(cfg, batch_size, "train")
        self.val_carry = self._carry(cfg, val_batch_size, "val")

    def _carry(self, cfg: ModelConfig, batch: int, kind: str) -> list:
        # on_read: every replica keeps and updates its own copy, never synchronised; read from
        # outside a replica (a save) it gives the first replica's copy.
        return [
            keras.Variable("zeros", shape=(batch, cfg.units), trainable=False, synchronization="on_read",
                           aggregation="only_first_replica", name=f"{kind}_{state}")
            for state in cell_of(cfg.cell).state_names(cfg.layers)
        ]

    def state_variables(self) -> list:
        """Everything a resumed run must restore: carried states, weights, dropout seeds.

        With several replicas in this process (MirroredStrategy) each carried state is
        seen whole, every replica's rows in replica order. Under multi-worker training
        the other workers' rows are out of reach, so the carried states are left out
        there: a resumed run restarts its streams from a zero state.
        """
        strategy = self.distribute_strategy
        carry = [*self.train_carry, *self.val_carry]
        if strategy.num_replicas_in_sync > 1:
            every_replica_here = len(local_copies(carry[0], strategy)) == strategy.num_replicas_in_sync
            carry = [ReplicaRows(var, strategy) for var in carry] if every_replica_here else []
        return [*carry, *self.net.variables]

    def call(self, tokens, training=False):
        if isinstance(tokens, (tuple, list)):  # a training batch's (tokens, reset), as Keras builds with it
            tokens = tokens[0]
        return self.net([tokens, *self.train_carry], training=training)[0]

    def _step(self, data, carry, training: bool):
        """Forward one batch from the carried states; store the new states."""
        (x, reset), y = data  # (batch, seq_len) each, reset: (batch,) bool
        keep = 1.0 - keras.ops.cast(reset, "float32")[:, None]  # (batch, 1)
        logits, *states = self.net([x, *[var * keep for var in carry]], training=training)
        for var, state in zip(carry, states):  # states are bfloat16/float16 under --mixed-precision
            var.assign(keras.ops.cast(keras.ops.stop_gradient(state), var.dtype))
        loss = self._compute_loss(x=x, y=y, y_pred=logits, training=training)
        return x, y, logits, loss  # logits: (batch, seq_len, vocab)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            x, y, logits, loss = self._step(data, self.train_carry, training=True)
            self._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=tf.shape(x)[0])
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_weights)
        grad_norm = tf.linalg.global_norm(grads)  # this replica's share, before the cross-replica sum
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._vector_logs({**self.compute_metrics(x, y, logits), "grad_norm": grad_norm})

    def test_step(self, data):
        x, y, logits, loss = self._step(data, self.val_carry, training=False)
        self._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=keras.ops.shape(x)[0])
        return self._vector_logs(self.compute_metrics(x, y, logits))


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer, matched by name (dropout layers have none)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
