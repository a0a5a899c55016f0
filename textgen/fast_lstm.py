"""FastLSTM: a drop-in `keras.layers.LSTM` with a faster CPU training path.

On GPU, Keras' LSTM already runs cuDNN and we leave it alone. On CPU it falls
back to a generic RNN loop that does an input matmul, a recurrent matmul and a
dozen small ops per time step, in both directions, and accumulates the weight
gradients one time step at a time. This layer instead

1. hoists the input projection x·W + b out of the time loop as one big matmul
   over all (time, batch) rows,
2. runs only h·U and the fused gate math inside the loop,
3. uses a hand-written backward pass (`tf.custom_gradient`) whose loop only
   carries dh and dc back in time; dW, dU and db are then one big matmul each
   over all time steps,
4. evaluates all four gates with one sigmoid: tanh(x) = 2·sigmoid(2x) - 1, so
   the candidate-gate columns are pre-scaled by 2 (a cheap op on the weights,
   not the activations) and every gate derivative is simply s·(1 - s).

Weights are exactly those of `keras.layers.LSTM` (same names, shapes, layout
and gate order i, f, c, o), so checkpoints are interchangeable.

This module deliberately imports nothing else from textgen.
"""

import keras
import numpy as np
import tensorflow as tf


# ----------------------------------------------------------------------------
# The recurrence, on time-major pre-activations, with a hand-written gradient.


def _split_gates(s):
    """Split fused gate activations (..., 4H) into i, f, g, o with g in tanh range."""
    i, f, g2, o = tf.split(s, 4, axis=-1)
    return i, f, 2.0 * g2 - 1.0, o


def _forward_loop(zx, h0, c0, u):
    """Run the LSTM recurrence forward.

    zx: (T, B, 4H) input pre-activations x·W + b (candidate columns doubled).
    h0, c0: (B, H). u: (H, 4H) recurrent kernel (candidate columns doubled).
    Returns hs (T, B, H), cs (T, B, H), s (T, B, 4H) sigmoid gate activations.
    """
    steps = tf.shape(zx)[0]
    ta = lambda: tf.TensorArray(zx.dtype, size=steps, clear_after_read=False)

    def body(t, h, c, hs, cs, ss):
        s = tf.sigmoid(zx[t] + tf.matmul(h, u))  # (B, 4H)
        i, f, g, o = _split_gates(s)
        c = f * c + i * g  # (B, H)
        h = o * tf.tanh(c)  # (B, H)
        return t + 1, h, c, hs.write(t, h), cs.write(t, c), ss.write(t, s)

    _, _, _, hs, cs, ss = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (tf.constant(0), h0, c0, ta(), ta(), ta()),
        parallel_iterations=1,
    )
    return hs.stack(), cs.stack(), ss.stack()


def _backward_loop(dhs, dh_last, dc_last, c0, cs, ss, u):
    """Carry gradients back through time.

    dhs: (T, B, H) upstream gradient on every output h_t.
    dh_last, dc_last: (B, H) upstream gradient on the final state.
    Returns dz (T, B, 4H) gradient on the (doubled) pre-activations, and
    dh0, dc0 (B, H) gradients on the initial state.
    """
    steps = tf.shape(dhs)[0]
    dzs = tf.TensorArray(dhs.dtype, size=steps)
    # An explicit transpose, once: matmul(..., transpose_b=True) on these
    # small per-step operands runs ~2.5x slower on CPU (oneDNN).
    u_t = tf.transpose(u)  # (4H, H)

    def body(t, dh, dc, dzs):
        s, c = ss[t], cs[t]  # (B, 4H), (B, H)
        c_prev = tf.cond(t > 0, lambda: cs[t - 1], lambda: c0)
        i, f, g, o = _split_gates(s)
        tc = tf.tanh(c)
        dh = dh + dhs[t]
        dc = dc + dh * o * (1.0 - tc * tc)
        # d/ds of the fused activations; the candidate gate g = 2·s - 1.
        ds = tf.concat([dc * g, dc * c_prev, 2.0 * dc * i, dh * tc], axis=-1)
        dz = ds * s * (1.0 - s)  # (B, 4H)
        dh = tf.matmul(dz, u_t)  # (B, H)
        return t - 1, dh, dc * f, dzs.write(t, dz)

    _, dh0, dc0, dzs = tf.while_loop(
        lambda t, *_: t >= 0,
        body,
        (steps - 1, dh_last, dc_last, dzs),
        parallel_iterations=1,
    )
    return dzs.stack(), dh0, dc0


@tf.custom_gradient
def _lstm_recurrence(zx, h0, c0, u):
    """LSTM over time-major pre-activations; see `_forward_loop` for shapes.

    Returns hs (T, B, H) and the final cell state c_T (B, H).
    """
    hs, cs, ss = _forward_loop(zx, h0, c0, u)

    def grad(dhs, dc_last):
        dhs = tf.zeros_like(hs) if dhs is None else dhs
        dc_last = tf.zeros_like(c0) if dc_last is None else dc_last
        dz, dh0, dc0 = _backward_loop(dhs, tf.zeros_like(h0), dc_last, c0, cs, ss, u)
        # dU over all time steps at once: sum_t h_{t-1}^T · dz_t.
        h_prev = tf.concat([h0[None], hs[:-1]], axis=0)  # (T, B, H)
        units = tf.shape(h0)[-1]
        h_prev = tf.transpose(tf.reshape(h_prev, (-1, units)))  # (H, T*B)
        du = tf.matmul(h_prev, tf.reshape(dz, (-1, 4 * units)))  # (H, 4H)
        return dz, dh0, dc0, du

    return (hs, cs[-1]), grad


def _gate_scale(units, dtype):
    """(4H,) column scale that doubles the candidate gate: tanh(x) = 2σ(2x) - 1."""
    scale = np.ones(4 * units, dtype=np.float32)
    scale[2 * units : 3 * units] = 2.0
    return tf.constant(scale, dtype=dtype)


def lstm_sequence(x, h0, c0, kernel, recurrent_kernel, bias):
    """Run an LSTM (Keras weight layout, gates i, f, c, o) over a batch.

    x: (B, T, E); h0, c0: (B, H); kernel (E, 4H); recurrent_kernel (H, 4H);
    bias (4H,) or None. Returns outputs (B, T, H), h_T (B, H), c_T (B, H).
    """
    units = recurrent_kernel.shape[0]
    scale = _gate_scale(units, x.dtype)
    x_tm = tf.transpose(x, (1, 0, 2))  # (T, B, E)
    zx = tf.tensordot(x_tm, kernel * scale, axes=1)  # (T, B, 4H)
    if bias is not None:
        zx = zx + bias * scale
    hs, c_last = _lstm_recurrence(zx, h0, c0, recurrent_kernel * scale)
    return tf.transpose(hs, (1, 0, 2)), hs[-1], c_last


# ----------------------------------------------------------------------------
# The Keras layer.


@keras.saving.register_keras_serializable(package="textgen")
class FastLSTM(keras.layers.LSTM):
    """`keras.layers.LSTM` with a faster training path on CPU (TensorFlow backend).

    Same constructor, weights and outputs as `keras.layers.LSTM`. The fast
    path is used when running the TensorFlow backend without a GPU, with the
    default tanh/sigmoid activations, no mask, no `go_backwards` and no
    `recurrent_dropout`; anything else (including cuDNN on GPU) defers to the
    parent implementation, so behavior is never different, only speed.
    """

    def _fast_path_ok(self, mask):
        """Whether this call can use the CPU fast path."""
        cell = self.cell
        return (
            keras.backend.backend() == "tensorflow"
            and not tf.config.list_logical_devices("GPU")
            and mask is None
            and not self.go_backwards
            and not cell.recurrent_dropout
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        """Return (last_output, outputs, [h, c]) as `keras.layers.RNN` expects."""
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if not self._fast_path_ok(mask):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if training and self.dropout:
            # One input mask per sequence, shared over time (as the cell does).
            sequences = sequences * self.cell.get_dropout_mask(sequences[:, 0, :])[:, None, :]
        # Read the weights as tensors in the compute dtype (mixed precision).
        weight = lambda v: tf.cast(tf.convert_to_tensor(v), sequences.dtype)
        cell = self.cell
        outputs, h, c = lstm_sequence(
            sequences,
            initial_state[0],
            initial_state[1],
            weight(cell.kernel),
            weight(cell.recurrent_kernel),
            weight(cell.bias) if cell.use_bias else None,
        )
        return h, outputs, [h, c]
