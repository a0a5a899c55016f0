"""A NumPy forward pass over a trained model's weights, for CPU decoding (LSTM, GRU, SimpleRNN).

Why hand-written: one decode step of a 2x256 LSTM is ~1 MFLOP, less work than the
per-call overhead of a TensorFlow graph (tens of microseconds per call, more per op),
so on a CPU a handful of NumPy calls per layer is the fastest way to run it. It reads
the weights once, by layer name (`embedding`, `lstm_0`, ..., `logits`), and follows
Keras's cells exactly, which tests check against the Keras model for each cell:
- LSTM: gate order i, f, g, o; c' = f*c + i*tanh(g); h' = o*tanh(c');
- GRU (reset_after=True): gates z, r, candidate; n = tanh(x_n + r*(h U_n + b_n));
  h' = z*h + (1-z)*n;
- SimpleRNN: h' = tanh(x W + b + h U).
What each layer carries (LSTM: h, c; the others: h) comes from textgen.cells.

BLAS threads: the products here are small (a batch of 32 is ~17 MFLOP a step), so
`trace` runs BLAS single-threaded (threadpoolctl), and `forward` and a decode loop hold a
`textgen.blas.DecodeThreads` around their steps, which gives big batches (inspect's
thousands of rows, 32+ samples) the cores other processes leave free (see textgen.blas for
the measurements). Both are entered once per loop, not per step: entering a limit costs
~15 us. A product of 2 to FEW_ROWS rows is
done one row at a time (`_times`) where a one-time probe finds that faster: OpenBLAS's
matrix-matrix kernel is 4-8x slower per row there than its matrix-vector one on an AVX2 EPYC,
and faster on an AVX-512 Xeon.

Two rewrites make a step cheap without changing its result (the first for every cell,
the second for the LSTM, the default):
- the first layer's input projection is folded into the embedding table
  (embedding @ kernel + bias, one row per token), so it costs a row lookup;
- every gate goes through one sigmoid, 1 / (1 + exp(-z)), computed in place on all four
  at once: the weight columns are pre-multiplied by -1 (i, f, o) and by -2 (g, since
  tanh(g) = 2 * sigmoid(2g) - 1), both exact in floating point. NumPy's exp is about
  twice as fast as its tanh, which is most of a step's non-matrix time at batch 32.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from textgen.blas import DecodeThreads, single_threaded
from textgen.cells import CELLS, Cell, cell_of

# (rows, 256) @ (256, 1024), one OpenBLAS thread. AVX2 EPYC: 1 row 18 us, 2 rows 90, 3 rows
# 139, 4 rows 80, 8 rows 105, so one product per row wins up to 4 rows. AVX-512 Xeon: 1 row
# 23 us, 2 rows 29, 3 rows 51, so there the matrix kernel wins. Hence a one-time probe.
FEW_ROWS = 4


@functools.cache
def _rows_one_by_one() -> bool:
    """Whether this machine's BLAS multiplies 3 rows faster one at a time (measured once, ~10 ms)."""
    rng = np.random.default_rng(0)
    x = rng.random((3, 256), np.float32)
    w = rng.random((256, 1024), np.float32)

    def best_of(product) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        return min(times)

    with single_threaded():
        return best_of(lambda: [x[r] @ w for r in range(3)]) < best_of(lambda: x @ w)


def _times(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w for w (n, m); an x of 2 to FEW_ROWS rows goes one row at a time where that is faster."""
    if x.ndim != 2 or not 1 < len(x) <= FEW_ROWS or not _rows_one_by_one():
        return x @ w
    out = np.empty((len(x), w.shape[1]), np.result_type(x, w))  # (rows, m)
    for row in range(len(x)):
        np.matmul(x[row], w, out=out[row])
    return out


class Stepper:
    """Run a stacked recurrent language model on NumPy arrays, carrying every layer's state.

    States are a flat list of (batch, units) float32 arrays, layer by layer, in the order
    textgen.cells gives (LSTM: [h_0, c_0, h_1, c_1, ...]; GRU, SimpleRNN: [h_0, h_1, ...]).
    A subclass per cell says how its weights are prepared and how one step updates a layer;
    `Stepper.from_model` picks the subclass from the model's layer names.
    """

    cell: Cell  # set by each subclass

    def __init__(self, embedding: np.ndarray, layers: list[tuple[np.ndarray, ...]],
                 dense: tuple[np.ndarray, np.ndarray]):
        prepared = [self._prepare(*(np.asarray(w, np.float32) for w in weights)) for weights in layers]
        kernel0, _, bias0 = prepared[0]
        self.units = prepared[0][1].shape[0]
        # the first layer's input projection becomes a row lookup (embedding @ kernel + bias)
        self.table = (np.asarray(embedding, np.float32) @ kernel0 + bias0).astype(np.float32)  # (vocab, blocks*H)
        self.recurrent = [np.ascontiguousarray(p[1]) for p in prepared]  # (H, blocks*H)
        self.kernels = [None] + [np.ascontiguousarray(p[0]) for p in prepared[1:]]
        self.biases = [None] + [p[2] for p in prepared[1:]]
        self.dense_kernel = np.ascontiguousarray(dense[0], np.float32)  # (H, vocab)
        self.dense_bias = np.asarray(dense[1], np.float32)

    @classmethod
    def from_model(cls, model) -> "Stepper":
        """Snapshot the weights of a textgen Keras model (training or stateful view), by layer name."""
        names = {layer.name for layer in model.layers}
        cell = next(c for c in CELLS.values() if c.layer_name(0) in names)
        stepper = _STEPPERS[cell.name]
        layers = sum(1 for i in range(len(names)) if cell.layer_name(i) in names)
        weights = [tuple(model.get_layer(cell.layer_name(i)).get_weights()) for i in range(layers)]
        return stepper(model.get_layer("embedding").get_weights()[0], weights,
                       tuple(model.get_layer("logits").get_weights()))

    @property
    def layers(self) -> int:
        return len(self.recurrent)

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial states of every layer: layers * len(cell.states) arrays of (batch, units)."""
        return [np.zeros((batch, self.units), np.float32) for _ in self.cell.state_names(self.layers)]

    @staticmethod
    def decode_threads() -> DecodeThreads:
        """Context manager to hold around a loop of `step`s; call its `pace(batch)` before each."""
        return DecodeThreads()

    def step(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per row: tokens (batch,) -> logits (batch, vocab) and the new states."""
        x = None
        new_states = []
        for i in range(self.layers):
            x, layer = self._recur(i, self._project(i, x, tokens), self._layer(states, i))  # x: (batch, H)
            new_states += layer
        return _times(x, self.dense_kernel) + self.dense_bias, new_states  # (batch, vocab)

    def forward(self, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """A whole sequence, layer by layer: tokens (batch, time) -> logits (batch, time, vocab).

        Each layer's input projection is one matrix product over all time steps; only the
        recurrence itself loops over time.
        """
        with DecodeThreads() as threads:
            return self._forward(tokens, states, threads)

    def _forward(self, tokens: np.ndarray, states: list[np.ndarray],
                 threads: DecodeThreads) -> tuple[np.ndarray, list[np.ndarray]]:
        tokens = np.asarray(tokens)
        batch, time = tokens.shape
        new_states = []
        x = None  # (batch, time, H) outputs of the layer below
        for i in range(self.layers):
            threads.pace(batch)
            projected = self._project(i, x, tokens)  # (batch, time, blocks*H)
            layer = self._layer(states, i)
            out = np.empty((batch, time, self.units), np.float32)
            for t in range(time):
                threads.pace(batch)
                out[:, t], layer = self._recur(i, projected[:, t], layer)
            new_states += layer
            x = out
        return x @ self.dense_kernel + self.dense_bias, new_states  # (batch, time, vocab)

    def trace(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Every layer's states and gates after each token of one sequence, from a zero state.

        tokens (time,) -> one dict per layer: each state name of the cell ("h", "c") and each
        gate of `cell.gates` -> (time, units) float32. For `textgen inspect`.
        """
        tokens = np.asarray(tokens)[None, :]  # (1, time)
        time, x, found = tokens.shape[1], None, []
        states = self.zero_states(1)
        with single_threaded():
            for i in range(self.layers):
                projected = self._project(i, x, tokens)[0]  # (time, blocks*H)
                layer = self._layer(states, i)
                seen = {name: np.empty((time, self.units), np.float32) for name in self.cell.states}
                for t in range(time):
                    _, layer = self._recur(i, projected[None, t], layer)
                    for name, value in zip(self.cell.states, layer):
                        seen[name][t] = value[0]
                h_before = np.concatenate([np.zeros((1, self.units), np.float32), seen["h"][:-1]])  # (time, H)
                seen.update(self._gates(i, projected, h_before))
                found.append(seen)
                x = seen["h"][None]  # (1, time, H)
        return found

    def _project(self, i: int, x: np.ndarray | None, tokens: np.ndarray) -> np.ndarray:
        """Layer i's input projection x W + b (a fresh array): a table lookup for layer 0."""
        return self.table[tokens] if i == 0 else _times(x, self.kernels[i]) + self.biases[i]

    def _layer(self, states: list[np.ndarray], i: int) -> list[np.ndarray]:
        """Layer i's states out of the flat list."""
        n = len(self.cell.states)
        return states[n * i : n * (i + 1)]

    def _prepare(self, kernel, recurrent, bias) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kernel, recurrent kernel, input bias) as `_recur` uses them (default: as Keras has them)."""
        return kernel, recurrent, bias

    def _recur(self, i: int, xz: np.ndarray, layer: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step of layer i from its input projection xz (batch, blocks*H): (h', new states)."""
        raise NotImplementedError

    def _gates(self, i: int, xz: np.ndarray, h_before: np.ndarray) -> dict[str, np.ndarray]:
        """Gate activations of layer i over a sequence, from its inputs xz and previous outputs."""
        return {}


class LSTMStepper(Stepper):
    """The LSTM, with the one-sigmoid rewrite of the module docstring."""

    cell = cell_of("lstm")

    def _prepare(self, kernel, recurrent, bias):
        units = recurrent.shape[0]
        scale = np.full(4 * units, -1.0, np.float32)  # columns i, f, o: exp(-z) in the sigmoid
        scale[2 * units : 3 * units] = -2.0  # g: tanh(g) = 2 * sigmoid(2g) - 1
        return kernel * scale, recurrent * scale, bias * scale

    def _recur(self, i, xz, layer):
        h, c = layer
        z = xz + _times(h, self.recurrent[i])  # (batch, 4H)
        h, c = self._cell(z, c)
        return h, [h, c]

    def _gates(self, i, xz, h_before):
        z = self._sigmoids(xz + h_before @ self.recurrent[i])  # (time, 4H), scaled: i, f, o are gates
        H = self.units
        return {"input": z[:, :H], "forget": z[:, H : 2 * H], "output": z[:, 3 * H :]}

    @staticmethod
    def _sigmoids(z: np.ndarray) -> np.ndarray:
        """1 / (1 + exp(z)) in place on pre-scaled pre-activations: every gate's sigmoid."""
        # exp overflows to inf for z > 88, and 1 / (1 + inf) = 0 is the right limit, so the
        # warning is silenced rather than z capped (a capping pass cost 8 us of ~35 at batch 32).
        with np.errstate(over="ignore"):
            np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)  # the g block holds sigmoid(2g)
        return z

    def _cell(self, z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The LSTM update from pre-scaled pre-activations z (batch, 4H), which it overwrites."""
        H = self.units
        z = self._sigmoids(z)
        g = z[:, 2 * H : 3 * H] * 2.0
        g -= 1.0  # tanh(g)
        g *= z[:, :H]  # i * tanh(g)
        c = z[:, H : 2 * H] * c
        c += g  # c' = f * c + i * tanh(g)
        h = np.tanh(c)
        h *= z[:, 3 * H :]  # h' = o * tanh(c')
        return h, c


class GRUStepper(Stepper):
    """Keras' GRU with reset_after=True: bias (2, 3H) is an input bias and a recurrent one."""

    cell = cell_of("gru")

    def __init__(self, embedding, layers, dense):
        super().__init__(embedding, layers, dense)
        self.recurrent_biases = [np.asarray(w[2], np.float32)[1] for w in layers]  # (3H,)

    def _prepare(self, kernel, recurrent, bias):
        return kernel, recurrent, bias[0]

    def _recur(self, i, xz, layer):
        (h,) = layer
        H = self.units
        hz = _times(h, self.recurrent[i]) + self.recurrent_biases[i]  # (batch, 3H): z, r, candidate
        z = _sigmoid(xz[:, :H] + hz[:, :H])
        r = _sigmoid(xz[:, H : 2 * H] + hz[:, H : 2 * H])
        candidate = np.tanh(xz[:, 2 * H :] + r * hz[:, 2 * H :])
        h = z * h + (1.0 - z) * candidate
        return h, [h]

    def _gates(self, i, xz, h_before):
        H = self.units
        gates = _sigmoid(xz[:, : 2 * H] + h_before @ self.recurrent[i][:, : 2 * H] + self.recurrent_biases[i][: 2 * H])
        return {"update": gates[:, :H], "reset": gates[:, H:]}


class RNNStepper(Stepper):
    """Keras' SimpleRNN: h' = tanh(x W + b + h U)."""

    cell = cell_of("rnn")

    def _recur(self, i, xz, layer):
        h = np.tanh(xz + _times(layer[0], self.recurrent[i]))
        return h, [h]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-z) = inf gives 1 / (1 + inf) = 0, the right limit
        return 1.0 / (1.0 + np.exp(-z))


_STEPPERS = {"lstm": LSTMStepper, "gru": GRUStepper, "rnn": RNNStepper}
