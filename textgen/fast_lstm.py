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
   over all time steps; for dW, dU and dx, the fastest of equivalent forms on
   this CPU, timed once per shape (the best one differs 2-3x between CPUs),
4. evaluates all four gates with one sigmoid: tanh(x) = 2·sigmoid(2x) - 1, so
   the candidate-gate columns are pre-scaled by 2 (a cheap op on the weights,
   not the activations) and every gate derivative is simply s·(1 - s),
5. compiles both time loops with XLA, which fuses each step's elementwise
   ops (the rest of the train step stays ordinary TF graph),
6. optionally (`matmul_dtype="bfloat16"`) runs the products outside the loops
   (x·W, dx, dW, dU) in bfloat16 through TensorFlow's oneDNN MatMul, which
   uses AMX tiles or AVX-512 BF16 where the CPU has them (2-3.5x float32 on a
   Xeon with amx_bf16, 2x on an EPYC with avx512_bf16), while the loops, the
   state and the weights stay float32: XLA's loops run bfloat16 products
   without the tiles (2.3x slower than float32 on the same Xeon).

Weights are exactly those of `keras.layers.LSTM` (same names, shapes, layout
and gate order i, f, c, o), so checkpoints are interchangeable.

This module deliberately imports nothing else from textgen.
"""

import time

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
    """Run the LSTM recurrence forward, keeping what the backward pass needs.

    zx: (T, B, 4H) input pre-activations x·W + b (candidate columns doubled).
    h0, c0: (B, H). u: (H, 4H) recurrent kernel (candidate columns doubled).
    Returns hs (T, B, H), the final c (B, H), and for the backward pass the
    gate activations s (T, B, 4H), c_{t-1} (T, B, H) and tanh(c_t) (T, B, H).
    """
    steps = zx.shape[0] or tf.shape(zx)[0]  # static when known, for XLA
    ta = lambda: tf.TensorArray(zx.dtype, size=steps)

    def body(t, h, c, hs, ss, cs_prev, tcs):
        s = tf.sigmoid(zx[t] + tf.matmul(h, u))  # (B, 4H)
        i, f, g, o = _split_gates(s)
        c_new = f * c + i * g  # (B, H)
        tc = tf.tanh(c_new)
        h = o * tc  # (B, H)
        return t + 1, h, c_new, hs.write(t, h), ss.write(t, s), cs_prev.write(t, c), tcs.write(t, tc)

    _, _, c, hs, ss, cs_prev, tcs = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (tf.constant(0), h0, c0, ta(), ta(), ta(), ta()),
        parallel_iterations=1,
        maximum_iterations=steps,
    )
    return hs.stack(), c, ss.stack(), cs_prev.stack(), tcs.stack()


def _backward_loop(dhs, dc_last, ss, cs_prev, tcs, u):
    """Carry gradients back through time.

    dhs: (T, B, H) upstream gradient on every output h_t; dc_last: (B, H) on
    the final c. ss, cs_prev, tcs, u: as saved/used by `_forward_loop`.
    Returns dz (T, B, 4H) gradient on the (doubled) pre-activations, and
    dh0, dc0 (B, H) gradients on the initial state.
    """
    steps = dhs.shape[0] or tf.shape(dhs)[0]
    # An explicit transpose, once: matmul(..., transpose_b=True) on these
    # small per-step operands runs ~2.5x slower on CPU (oneDNN).
    u_t = tf.transpose(u)  # (4H, H)

    def body(t, dh, dc, dzs):
        s, c_prev, tc = ss[t], cs_prev[t], tcs[t]  # (B, 4H), (B, H), (B, H)
        i, f, g, o = _split_gates(s)
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
        (steps - 1, tf.zeros_like(dc_last), dc_last, tf.TensorArray(dhs.dtype, size=steps)),
        parallel_iterations=1,
        maximum_iterations=steps,
    )
    return dzs.stack(), dh0, dc0


# XLA-compiled twins of the loops: XLA fuses each step's elementwise ops and
# runs the small per-step matmuls faster than TF's op-by-op executor.
_forward_loop_xla = tf.function(_forward_loop, jit_compile=True, autograph=False)
_backward_loop_xla = tf.function(_backward_loop, jit_compile=True, autograph=False)
USE_XLA = True


_TIMED_FLOPS = 1e8  # below this (test-sized models) a product takes its first form, untimed


class _Product:
    """One product outside the time loops, in several forms that compute the same matrix.

    Which form is fastest differs between CPUs, so it is measured, not assumed: each
    form is timed once per (shapes, dtype), eagerly (also while a step is being traced),
    and the fastest is used from then on. Products under `_TIMED_FLOPS` (test-sized
    models) take the first form, untimed. Forms compiled alone by XLA are float32 only:
    XLA's CPU dot has no bfloat16 matrix-unit kernels (2.3x slower than float32 on an
    AMX Xeon), so bfloat16 products stay with TensorFlow's oneDNN MatMul.
    """

    def __init__(self, flops, forms, xla_forms=()):
        self.flops = flops  # (a_shape, b_shape) -> floating-point operations
        self.forms = list(forms) + [tf.function(f, jit_compile=True, autograph=False) for f in xla_forms]
        self.non_xla_forms = len(forms)  # the first ones: all that bfloat16 operands may use
        self.chosen = {}  # (a_shape, b_shape, dtype) -> index of the fastest form

    def __call__(self, a, b):
        return self.forms[self.choose(a, b)](a, b)

    def choose(self, a, b):
        """Index of the form to use for these operands (timing the forms the first time)."""
        shapes = (tuple(a.shape), tuple(b.shape))
        count = len(self.forms) if a.dtype == tf.float32 else self.non_xla_forms
        if count == 1 or None in shapes[0] + shapes[1] or self.flops(*shapes) < _TIMED_FLOPS:
            return 0
        key = shapes + (a.dtype.name,)
        if key not in self.chosen:
            with tf.init_scope():  # run eagerly even inside a tf.function being traced
                a0, b0 = tf.zeros(shapes[0], a.dtype), tf.zeros(shapes[1], b.dtype)
                seconds = [_best_seconds(lambda f=f: f(a0, b0)) for f in self.forms[:count]]
            self.chosen[key] = int(np.argmin(seconds))
        return self.chosen[key]


def _best_seconds(run, repeats=3):
    """Best wall time of `repeats` calls of `run` after one warm-up call."""
    run().numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run().numpy()
        best = min(best, time.perf_counter() - start)
    return best


def _a_t_b(a, b):
    """a^T · b."""
    return tf.matmul(a, b, transpose_a=True)


def _a_b_t(a, b):
    """a · b^T."""
    return tf.matmul(a, b, transpose_b=True)


# The weight gradients, e.g. dW = sum_t x_t^T · dz_t over all (T*B) rows: a (N, K), dz (N, 4H)
# -> (K, 4H), as a^T·dz or as (dz^T·a)^T. On a 2-core AVX-512 EPYC the second was ~1.7x faster;
# on a 2-core AVX2 EPYC 2-3x slower (TF 2.21), and they are a quarter of a step's arithmetic.
_weight_grad = _Product(lambda a, dz: 2 * a[0] * a[1] * dz[1],
                        [_a_t_b, lambda a, dz: tf.transpose(tf.matmul(dz, a, transpose_a=True))])
# The input gradient dx = dz · W^T: dz (N, 4H), W (K, 4H) -> (N, K). On the AVX-512 EPYC
# (oneDNN MatMul on) TensorFlow's MatMul ran it at 140-155 GFLOP/s and XLA's dot at 168-181
# (the loops' products and the others here were no faster under XLA), 2026-12-08.
_input_grad = _Product(lambda dz, w: 2 * dz[0] * dz[1] * w[0], [_a_b_t], xla_forms=[_a_b_t])


def _lstm_layer_with(matmul_dtype):
    """`_lstm_layer` whose products outside the loops run in `matmul_dtype` (None: the inputs' own)."""

    @tf.custom_gradient
    def lstm_layer(x, h0, c0, kernel, recurrent_kernel, bias):
        return _lstm_layer(x, h0, c0, kernel, recurrent_kernel, bias, matmul_dtype)

    return lstm_layer


def _lstm_layer(x, h0, c0, kernel, recurrent_kernel, bias, matmul_dtype):
    """LSTM over time-major inputs with pre-scaled weights (see `lstm_sequence`).

    x: (T, B, E); h0, c0: (B, H); kernel (E, 4H); recurrent_kernel (H, 4H);
    bias (4H,). Returns (hs (T, B, H), the final cell state c_T (B, H)) and
    the gradient function, as `tf.custom_gradient` wants.
    """
    # Gradients come from `grad` below: keep tapes from recording (and the
    # XLA loop from having to expose) the intermediates of the forward pass.
    x, h0, c0, kernel, recurrent_kernel, bias = map(tf.stop_gradient, (x, h0, c0, kernel, recurrent_kernel, bias))
    steps, batch = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in (0, 1))
    features, units = x.shape[-1], recurrent_kernel.shape[0]
    low = (lambda t: t) if matmul_dtype is None else (lambda t: tf.cast(t, matmul_dtype))  # a product's operands
    back = lambda t: tf.cast(t, x.dtype)  # its result, back in the layer's dtype (a no-op without matmul_dtype)
    x2d = low(tf.reshape(x, (-1, features)))  # (T*B, E)
    kernel_low = low(kernel)
    zx = tf.reshape(back(tf.matmul(x2d, kernel_low)) + bias, (steps, batch, 4 * units))  # (T, B, 4H)
    forward, backward = (_forward_loop_xla, _backward_loop_xla) if USE_XLA else (_forward_loop, _backward_loop)
    hs, c_last, ss, cs_prev, tcs = forward(zx, h0, c0, recurrent_kernel)

    def grad(dhs, dc_last):
        dhs = tf.zeros_like(hs) if dhs is None else dhs
        dc_last = tf.zeros_like(c0) if dc_last is None else dc_last
        dz, dh0, dc0 = backward(dhs, dc_last, ss, cs_prev, tcs, recurrent_kernel)
        dz2d = tf.reshape(dz, (-1, 4 * units))  # (T*B, 4H)
        dz_low = low(dz2d)
        # Weight gradients over all time steps at once, e.g. dU = sum_t h_{t-1}^T · dz_t.
        h_prev = low(tf.reshape(tf.concat([h0[None], hs[:-1]], axis=0), (-1, units)))  # (T*B, H)
        dx = tf.reshape(back(_input_grad(dz_low, kernel_low)), (steps, batch, features))
        dw, du = back(_weight_grad(x2d, dz_low)), back(_weight_grad(h_prev, dz_low))
        return dx, dh0, dc0, dw, du, tf.reduce_sum(dz2d, 0)

    return (hs, c_last), grad


_LSTM_LAYERS = {dtype: _lstm_layer_with(dtype) for dtype in (None, "bfloat16")}


def _gate_scale(units, dtype):
    """(4H,) column scale that doubles the candidate gate: tanh(x) = 2σ(2x) - 1."""
    scale = np.ones(4 * units, dtype=np.float32)
    scale[2 * units : 3 * units] = 2.0
    return tf.constant(scale, dtype=dtype)


def lstm_sequence(x, h0, c0, kernel, recurrent_kernel, bias, matmul_dtype=None):
    """Run an LSTM (Keras weight layout, gates i, f, c, o) over a batch.

    x: (B, T, E); h0, c0: (B, H); kernel (E, 4H); recurrent_kernel (H, 4H);
    bias (4H,) or None. Returns outputs (B, T, H), h_T (B, H), c_T (B, H).
    `matmul_dtype`: None, or "bfloat16" for the products outside the time loops.
    """
    units = recurrent_kernel.shape[0]
    scale = _gate_scale(units, x.dtype)
    if bias is None:
        bias = tf.zeros((4 * units,), x.dtype)
    x_tm = tf.transpose(x, (1, 0, 2))  # (T, B, E)
    layer = _LSTM_LAYERS[matmul_dtype]
    hs, c_last = layer(x_tm, h0, c0, kernel * scale, recurrent_kernel * scale, bias * scale)
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

    `matmul_dtype="bfloat16"` (the fast path only) runs the products outside the
    time loops in bfloat16: faster on CPUs with AMX tiles or AVX-512 BF16, not elsewhere.
    """

    def __init__(self, units, matmul_dtype=None, **kwargs):
        if matmul_dtype not in _LSTM_LAYERS:
            raise ValueError(f"matmul_dtype must be one of {sorted(map(str, _LSTM_LAYERS))}, not {matmul_dtype!r}")
        super().__init__(units, **kwargs)
        self.matmul_dtype = matmul_dtype

    def get_config(self):
        return {**super().get_config(), "matmul_dtype": self.matmul_dtype}

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
            self.matmul_dtype,
        )
        return h, outputs, [h, c]
