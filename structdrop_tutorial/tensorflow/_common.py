"""Helpers shared by the TensorFlow functions (:mod:`.functional`, :mod:`.dropblock`): input
checks, sizes that may be unknown in a graph, rates that may be tensors, seeds and noise."""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from .._checks import check_rate, check_seed_int

#: The stateless generator used everywhere. Its 32-bit words agree eagerly, in graphs and under
#: XLA, but ``tf.random.stateless_uniform``'s floats do not (see :func:`stateless_uniform`).
RNG_ALG = "philox"


def _as_float(x, name="x"):
    """``x`` as a float tensor; TypeError for integer (or bool, complex) inputs."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype.name}")
    return x


def _dims(x, name: str = "x"):
    """x's shape as a list: Python ints where static, scalar int32 tensors where not. The rank
    must be known (a ValueError naming ``name`` otherwise: masks are built axis by axis)."""
    if x.shape.rank is None:
        raise ValueError(f"{name} must have a known rank; in a tf.function give the input "
                         f"signature a shape such as [None, None, None, 3], not None")
    static = x.shape.as_list()
    if all(s is not None for s in static):
        return static
    dynamic = tf.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def _is_static(v):
    return isinstance(v, (numbers.Integral, np.integer))


def _shape_arg(dims):
    """A shape for tf ops: a list of ints if all static, else an int32 vector."""
    if all(_is_static(d) for d in dims):
        return [int(d) for d in dims]
    return tf.stack([tf.cast(d, tf.int32) for d in dims])


def _static_rate(rate, name="rate"):
    """A checked Python float for a number (or a 0-d NumPy array); None for a scalar real tensor
    or variable (a dynamic rate); TypeError naming ``name`` for anything else (a string, None,
    a bool, a list, a tensor with more than one entry or a non-real dtype)."""
    if isinstance(rate, np.ndarray) and rate.shape == ():
        rate = rate.item()
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        return check_rate(rate, name)
    dtype, shape = getattr(rate, "dtype", None), getattr(rate, "shape", None)
    if (tf.is_tensor(rate) or isinstance(rate, tf.Variable) or hasattr(rate, "assign")) \
            and dtype is not None and shape is not None:
        dtype = tf.as_dtype(dtype)
        rank = tf.TensorShape(shape).rank
        if (dtype.is_floating or dtype.is_integer) and rank in (0, None):
            return None
    raise TypeError(f"{name} must be a real number in [0, 1] or a scalar real tensor or "
                    f"variable, got {rate!r}")


def _rate_tensor(rate):
    """A dynamic rate as a float64 scalar, clipped to [0, 1]; NaN counts as 0 (no dropout)."""
    r = tf.cast(rate, tf.float64)
    return tf.where(tf.math.is_nan(r), tf.zeros_like(r), tf.clip_by_value(r, 0.0, 1.0))


def _connected_zeros(x):
    """Zeros shaped like ``x`` whose gradient with respect to ``x`` is zero (not None), like the
    output of any other rate: a tape or an optimizer sees the same graph at rate 1. Never NaN,
    even where ``x`` is infinite."""
    return tf.where(tf.zeros_like(x, dtype=tf.bool), x, tf.zeros_like(x))


def _inverse_keep(rate):
    """``1 / (1 - rate)`` in float64, 0 at rate 1 (so rate 1 gives zeros, never inf or NaN)."""
    if isinstance(rate, float):
        return 1.0 / (1.0 - rate) if rate < 1.0 else 0.0
    r = _rate_tensor(rate)
    return tf.where(r < 1.0, 1.0 / tf.maximum(1.0 - r, 1e-300), tf.zeros_like(r))


def seed_tensor(seed):
    """Turn a ``seed`` argument into a shape ``(2,)`` int64 seed for stateless random ops.

    ``None`` draws a fresh seed from TensorFlow's global generator (stateful, so every call of a
    graph gets new noise), an ``int`` is used as is (the same noise on every call), a
    ``keras.random.SeedGenerator`` advances its state (a reproducible sequence) and an integer
    tensor of shape ``(2,)`` is taken as the stateless seed.
    """
    if seed is None:
        return tf.random.uniform([2], minval=0, maxval=2**31 - 1, dtype=tf.int64)
    if isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool):
        return tf.constant([check_seed_int(seed, "a keras.random.SeedGenerator"), 0], tf.int64)
    if hasattr(seed, "next") and hasattr(seed, "state"):  # keras.random.SeedGenerator
        return tf.cast(tf.convert_to_tensor(seed.next()), tf.int64)
    if isinstance(seed, (tf.Tensor, tf.Variable, np.ndarray)):
        s = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        if s.shape.rank != 1 or (s.shape[0] is not None and s.shape[0] != 2):
            raise ValueError(f"seed tensor must have shape (2,), got {s.shape}")
        return s
    raise TypeError(f"seed must be None, an int, a keras.random.SeedGenerator or a shape (2,) "
                    f"integer tensor, got {type(seed).__name__}")


def stateless_uniform(shape, seed, dtype=tf.float32):
    """``tf.random.stateless_uniform(shape, seed, dtype=dtype, alg="philox")`` for float32 or
    float64, bit for bit as TensorFlow's kernels give it, and the same under XLA.

    XLA draws the same philox words but makes a float32 from a word's high 23 bits where
    TensorFlow's kernels take its low 23 (float64: the low 20 bits of one word and all of the
    next), so ``jit_compile=True`` gave other numbers wherever XLA did not constant-fold the
    draw. The words (full-range uint32) agree, so the floats are made from them here.
    """
    def words(extra):
        if isinstance(shape, list):
            s = shape + extra
        else:
            s = tf.concat([shape, tf.constant(extra, shape.dtype)], 0) if extra else shape
        return tf.random.stateless_uniform(s, seed=seed, minval=None, maxval=None,
                                           dtype=tf.uint32, alg=RNG_ALG)
    if dtype == tf.float64:
        w = tf.cast(words([2]), tf.uint64)
        hi = tf.bitwise.bitwise_and(w[..., 0], tf.constant(0xFFFFF, tf.uint64))
        man = tf.bitwise.bitwise_or(tf.bitwise.left_shift(hi, tf.constant(32, tf.uint64)),
                                    w[..., 1])
        return tf.cast(man, tf.float64) * 2.0 ** -52
    if dtype != tf.float32:
        raise ValueError(f"stateless_uniform draws float32 or float64, not {dtype.name}")
    man = tf.bitwise.bitwise_and(words([]), tf.constant(0x7FFFFF, tf.uint32))
    return tf.cast(man, tf.float32) * 2.0 ** -23


def _draw_uniform(dims, seed, dtype=tf.float32):
    # An explicit algorithm: XLA's "auto_select" generator fuses into the consumer and is
    # recomputed for every element of a broadcast (2-3x slower spatial dropout under XLA on a CPU).
    return stateless_uniform(_shape_arg(dims), seed_tensor(seed), dtype)


def _given_uniform(uniform, dims, name="uniform"):
    """``uniform`` as a float tensor of shape ``dims``: checked when traced wherever both sizes
    are static, and at run time where one is not (a graph with an unknown batch size), so that
    a uniform of another size never broadcasts into an output of the wrong shape."""
    u = tf.convert_to_tensor(uniform)
    if not u.dtype.is_floating:
        u = tf.cast(u, tf.float64)
    got = u.shape.as_list()
    want = [int(d) if _is_static(d) else None for d in dims]
    if len(got) != len(want) or any(g is not None and w is not None and g != w
                                    for g, w in zip(got, want)):
        raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(got)}")
    if None not in got and None not in want:
        return u
    return _checked_shape(u, dims, f"{name} must have the shape of the noise, {tuple(want)} "
                                   "with None known only at run time")


def _checked_shape(t, dims, message):
    """``t`` once its run-time shape equals ``dims`` (ints and scalar int32 tensors): an
    assertion in a graph; under XLA, which drops assertions, the reshape still fails when the
    sizes differ in number."""
    want = _shape_arg(dims)
    check = tf.debugging.assert_equal(tf.shape(t, out_type=tf.int32), want, message=message)
    with tf.control_dependencies([check]):
        return tf.reshape(t, want)


def _threshold(value, dtype):
    """A probability compared with a uniform of ``dtype`` (as NumPy compares with a Python float)."""
    if isinstance(value, float):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def _as_dtype(value, dtype):
    """A Python number straight to ``dtype`` (``tf.cast`` would round it through float32 first)."""
    if isinstance(value, (numbers.Real, np.floating)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def _factor_dtype(dtype):
    """The dtype a mask times its scale is formed in: float32 for float16 and bfloat16 inputs
    (so the scale is not rounded to 16 bits before the multiply), else the input's dtype."""
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _times(x, mask):
    """``x * mask`` in x's dtype, the mask out of autograd; a float32 mask of a 16-bit ``x``
    multiplies in float32 and the product is rounded once (its gradient likewise)."""
    mask = tf.stop_gradient(mask)
    if mask.dtype == x.dtype:
        return x * mask
    return tf.cast(tf.cast(x, mask.dtype) * mask, x.dtype)


def _scaled(x, keep, scale):
    """``x * (keep * scale)`` in x's dtype, the mask out of autograd.

    As ``keep`` is 0 or 1, ``x * (keep * s)`` equals NumPy's ``(x * keep) * s`` bit for bit,
    and the forward and backward passes each cost one multiply by the ready mask.
    """
    dtype = _factor_dtype(x.dtype)
    return _times(x, tf.cast(keep, dtype) * _as_dtype(scale, dtype))


def _with_training(training, run, x):
    """``run()`` when training, else ``x``; a tensor ``training`` becomes a ``tf.cond``."""
    if isinstance(training, (tf.Tensor, tf.Variable)):
        return tf.cond(tf.cast(training, tf.bool), run, lambda: tf.identity(x))
    if not training:
        return x
    return run()


def _spatial_axes(rank, data_format):
    return tuple(range(2, rank)) if data_format == "channels_first" else tuple(range(1, rank - 1))


def _channel_axis(rank, data_format):
    return 1 if data_format == "channels_first" else rank - 1
