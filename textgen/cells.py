"""The recurrent cells a model can use, and the one definition of each cell's per-layer state.

Everything that carries state between calls (the Keras model, the NumPy stepper, the
training carry and so the resume state, evaluate, serve, inspect) asks this module what a
layer's state is, instead of assuming LSTM's (h, c):

    lstm: (h, c)   keras.layers.LSTM (textgen.fast_lstm.FastLSTM on CPU), gates i, f, g, o
    gru:  (h,)     keras.layers.GRU with reset_after=True, gates z, r, candidate
    rnn:  (h,)     keras.layers.SimpleRNN, no gates

States of a stacked model are flat lists, layer by layer: [h_0, c_0, h_1, c_1, ...] for
an LSTM, [h_0, h_1, ...] for the others. Pure Python: config.py imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    """One recurrent cell type: its state, its weight layout and the gates it has."""

    name: str
    states: tuple[str, ...]  # per-layer carried state, in Keras' initial_state order
    blocks: int  # column blocks of the kernels (LSTM: i, f, g, o)
    gates: tuple[str, ...]  # gates `textgen inspect` reports (none for a SimpleRNN)
    recurrent_bias: bool = False  # GRU with reset_after: a second bias for h @ U

    def layer_name(self, index: int) -> str:
        """The Keras layer name of layer `index` (lstm_0, gru_1, ...); weights move by it."""
        return f"{self.name}_{index}"

    def state_names(self, layers: int) -> list[str]:
        """Names of a stacked model's states in their flat order: h_0, c_0, h_1, c_1, ..."""
        return [f"{state}_{i}" for i in range(layers) for state in self.states]

    def layer_parameters(self, inputs: int, units: int) -> int:
        """Numbers in one layer: kernel (in, blocks*u), recurrent kernel (u, blocks*u), biases."""
        biases = (2 if self.recurrent_bias else 1) * self.blocks * units
        return self.blocks * units * (inputs + units) + biases


CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", ("h", "c"), 4, ("input", "forget", "output")),
    "gru": Cell("gru", ("h",), 3, ("update", "reset"), recurrent_bias=True),
    "rnn": Cell("rnn", ("h",), 1, ()),
}
CELL_NAMES = tuple(CELLS)


def cell_of(name: str) -> Cell:
    """The Cell called `name` (a validated ModelConfig only holds known names)."""
    return CELLS[name]
