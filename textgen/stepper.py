"""A NumPy forward pass over a trained model's weights, for CPU decoding.

Why hand-written: one decode step of a 2x256 LSTM is ~1 MFLOP, less work than the
per-call overhead of a TensorFlow graph (tens of microseconds per call, more per op),
so on a CPU a handful of NumPy calls per layer is the fastest way to run it. It reads
the weights once, by layer name (`embedding`, `lstm_0`, ..., `logits`), and follows
Keras's LSTM exactly (gate order i, f, g, o; c' = f*c + i*tanh(g); h' = o*tanh(c')),
which tests check against the Keras model.

BLAS runs single-threaded inside every call: the products here are small (a batch of
32 is ~17 MFLOP a step), so waking BLAS worker threads costs more than it saves, and
on a busy machine (TensorFlow's threads, other processes) OpenBLAS's spinning workers
made a batch-32 step 10x slower in our measurements. `forward` limits BLAS to one
thread for its duration (threadpoolctl); a decode loop holds `single_threaded()` around
its steps instead, because entering the limit per step would cost ~15 us a token.

Two rewrites make a step cheap without changing its result:
- the first layer's input projection is folded into the embedding table
  (embedding @ kernel + bias, one row per token), so it costs a row lookup;
- every gate goes through one sigmoid, 1 / (1 + exp(-z)), computed in place on all four
  at once: the weight columns are pre-multiplied by -1 (i, f, o) and by -2 (g, since
  tanh(g) = 2 * sigmoid(2g) - 1), both exact in floating point. NumPy's exp is about
  twice as fast as its tanh, which is most of a step's non-matrix time at batch 32.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

BLAS_THREADS = 1
_THREADPOOLS = ThreadpoolController()


class LSTMStepper:
    """Run a stacked LSTM language model on NumPy arrays, carrying (h, c) per layer.

    States are a list [h_0, c_0, h_1, c_1, ...] of (batch, units) float32 arrays.
    """

    def __init__(self, embedding: np.ndarray, lstm: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 dense: tuple[np.ndarray, np.ndarray]):
        units = lstm[0][1].shape[0]
        scale = np.full(4 * units, -1.0, np.float32)  # columns i, f, o: exp(-z) in the sigmoid
        scale[2 * units : 3 * units] = -2.0  # g: tanh(g) = 2 * sigmoid(2g) - 1
        self.units = units
        kernel0, recurrent0, bias0 = (np.asarray(w, np.float32) for w in lstm[0])
        self.table = ((np.asarray(embedding, np.float32) @ kernel0 + bias0) * scale).astype(np.float32)  # (vocab, 4H)
        # ... so the first layer's input projection is a row lookup (embedding @ kernel + bias)
        self.recurrent = [np.ascontiguousarray(np.asarray(w[1], np.float32) * scale) for w in lstm]  # (H, 4H)
        self.kernels = [None] + [np.ascontiguousarray(np.asarray(w[0], np.float32) * scale) for w in lstm[1:]]
        self.biases = [None] + [np.asarray(w[2], np.float32) * scale for w in lstm[1:]]
        self.dense_kernel = np.ascontiguousarray(dense[0], np.float32)  # (H, vocab)
        self.dense_bias = np.asarray(dense[1], np.float32)

    @classmethod
    def from_model(cls, model) -> "LSTMStepper":
        """Snapshot the weights of a textgen Keras model (training or stateful view), by layer name."""
        layers = sum(1 for layer in model.layers if layer.name.startswith("lstm_"))
        lstm = [tuple(model.get_layer(f"lstm_{i}").get_weights()[:3]) for i in range(layers)]
        return cls(model.get_layer("embedding").get_weights()[0], lstm,
                   tuple(model.get_layer("logits").get_weights()))

    @property
    def layers(self) -> int:
        return len(self.recurrent)

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial (h, c) of every layer: 2 * layers arrays of (batch, units)."""
        return [np.zeros((batch, self.units), np.float32) for _ in range(2 * self.layers)]

    @staticmethod
    def single_threaded():
        """Context manager: BLAS at BLAS_THREADS threads (hold it around a loop of `step`s)."""
        return _THREADPOOLS.limit(limits=BLAS_THREADS, user_api="blas")

    def step(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per row: tokens (batch,) -> logits (batch, vocab) and the new states."""
        x = None
        new_states = []
        for i in range(self.layers):
            h, c = states[2 * i], states[2 * i + 1]
            if i == 0:
                z = self.table[tokens] + h @ self.recurrent[0]  # (batch, 4H)
            else:
                z = x @ self.kernels[i]
                z += h @ self.recurrent[i]
                z += self.biases[i]
            h, c = self._cell(z, c)
            new_states += [h, c]
            x = h  # (batch, H)
        return x @ self.dense_kernel + self.dense_bias, new_states  # (batch, vocab)

    def forward(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """A whole sequence, layer by layer: tokens (batch, time) -> logits (batch, time, vocab).

        Each layer's input projection is one matrix product over all time steps; only the
        recurrence itself loops over time.
        """
        with self.single_threaded():
            return self._forward(tokens, states)

    def _forward(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        tokens = np.asarray(tokens)
        batch, time = tokens.shape
        new_states = []
        x = None  # (batch, time, H) outputs of the layer below
        for i in range(self.layers):
            if i == 0:
                projected = self.table[tokens]  # (batch, time, 4H)
            else:
                projected = x @ self.kernels[i] + self.biases[i]
            h, c = states[2 * i], states[2 * i + 1]
            out = np.empty((batch, time, self.units), np.float32)
            for t in range(time):
                h, c = self._cell(projected[:, t] + h @ self.recurrent[i], c)
                out[:, t] = h
            new_states += [h, c]
            x = out
        return x @ self.dense_kernel + self.dense_bias, new_states  # (batch, time, vocab)

    def _cell(self, z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The LSTM update from pre-scaled pre-activations z (batch, 4H), which it overwrites."""
        H = self.units
        np.minimum(z, 80.0, out=z)  # exp(80) is finite in float32: no overflow warnings
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)  # sigmoid of every gate; the g block holds sigmoid(2g)
        g = z[:, 2 * H : 3 * H] * 2.0
        g -= 1.0  # tanh(g)
        g *= z[:, :H]  # i * tanh(g)
        c = z[:, H : 2 * H] * c
        c += g  # c' = f * c + i * tanh(g)
        h = np.tanh(c)
        h *= z[:, 3 * H :]  # h' = o * tanh(c')
        return h, c
