"""Structured dropout as TensorFlow functions (eager, ``tf.function`` and XLA).

The names and arguments match :mod:`structdrop_tutorial.numpy`, the readable reference; given
the same ``uniform`` noise every function here returns the same mask and output as NumPy.
Inputs are laid out ``(batch, *spatial, channels)`` (``"channels_last"``, the default, as in
Keras) or ``(batch, channels, *spatial)`` (``"channels_first"``).

What TensorFlow adds to the reference:

* **Graphs with unknown sizes.** Inside a ``tf.function`` whose ``input_signature`` leaves the
  batch and spatial sizes as ``None``, every function still works: sizes are read with
  ``tf.shape`` at run time, the block is clipped to the map at run time and DropBlock's gamma is
  computed with TensorFlow ops (:mod:`._graph_gamma`). Everything also compiles with
  ``jit_compile=True`` (XLA).
* **Tensor rates.** ``rate`` may be a Python number (checked, and 0 / 1 short-cut) or a scalar
  tensor or variable (clipped to [0, 1], a NaN rate counts as 0; rate 0 gives the input, rate 1
  zeros, never NaN for a finite input: a tensor rate multiplies by a zero mask, as any dropout
  does, so an infinite unit gives NaN there), so a schedule can change it between steps without
  retracing the graph. Anything else (a string, None, a list, a tensor with more than one
  entry) raises a TypeError that names ``rate``.
* **Seeds.** ``seed`` is ``None`` (fresh noise every call), an ``int`` (the same mask every
  call: reproducible, like ``tf.random.stateless_uniform``), a ``keras.random.SeedGenerator``
  (reproducible sequence of masks, advances on every call, also inside graphs) or a shape ``(2,)``
  integer tensor used as a stateless seed.
* ``inplace`` is accepted for API compatibility and ignored: TensorFlow tensors are immutable,
  so the input is never modified.

DropBlock without ``uniform`` draws its seeds sparsely by default (``sampler="auto"``, see
:mod:`._fast`): the seed positions are exactly an i.i.d. Bernoulli(gamma) process, as with one
uniform per position, but only the few seeds are drawn. In a graph outside XLA the mask is
then built as uint8 by a small cached ``jit_compile=True`` kernel and applied by another one
whose custom gradient keeps only that 1-byte mask for the backward pass
(``_fast.USE_XLA_KERNEL = False`` uses plain TensorFlow ops instead). ``sampler="dense"``
forces the reference path (one uniform per seed position, running-sum block expansion).
DropBlock itself lives in :mod:`.dropblock` (its public names are re-exported here) and the
helpers shared with it in :mod:`._common`.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from .._checks import (check_block_size, check_bool, check_data_format, check_fill, check_int,
                       check_n_spatial)
from ..shapes import drop_path_noise_shape
from ._common import (_as_dtype, _as_float, _channel_axis, _connected_zeros, _dims,
                      _draw_uniform, _factor_dtype, _given_uniform, _inverse_keep, _is_static,
                      _rate_tensor, _scaled, _spatial_axes, _static_rate, _threshold, _times,
                      _with_training)
from .dropblock import (SAMPLERS, dropblock, dropblock_keep_mask,  # noqa: F401 (re-exported)
                        expand_seeds)

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]


# --------------------------------------------------------------------------- Bernoulli
def bernoulli_compare(uniform, keep_prob):
    """Keep mask by comparison: 1.0 where ``uniform < keep_prob`` (float32)."""
    u = tf.convert_to_tensor(uniform)
    return tf.cast(u < _threshold(keep_prob, u.dtype) if isinstance(keep_prob, float)
                   else u < tf.cast(keep_prob, u.dtype), tf.float32)


def bernoulli_relu_sign(uniform, keep_prob):
    """The same Bernoulli mask as ``relu(sign(keep_prob - uniform))`` (float32).

    ``sign`` is +1 where ``uniform < keep_prob`` and -1 (or 0 on a tie) elsewhere; ``relu``
    turns both into 0. This is the trick of TF1-era code; the comparison is simpler.
    """
    u = tf.cast(tf.convert_to_tensor(uniform), tf.float64)
    return tf.cast(tf.nn.relu(tf.sign(tf.cast(keep_prob, tf.float64) - u)), tf.float32)


# --------------------------------------------------------------------------- dropout
def _masked_by_noise(x, rate, rate_s, shape, training, seed, uniform, scale=True):
    """``x`` times a keep mask of noise shape ``shape`` (dropped where ``uniform < rate``), scaled
    by ``1 / (1 - rate)`` when ``scale``; the shared body of :func:`dropout` and
    :func:`drop_path`. ``rate_s`` is the rate as a Python float, or None when it is a tensor."""
    def run():
        if rate_s == 0.0:
            return x
        if rate_s == 1.0:
            return _connected_zeros(x)
        u = _draw_uniform(shape, seed) if uniform is None else _given_uniform(uniform, shape)
        r = rate_s if rate_s is not None else _rate_tensor(rate)

        dtype = _factor_dtype(x.dtype)

        def factor():
            keep = u >= _threshold(r, u.dtype)
            return tf.cast(keep, dtype) * _as_dtype(_inverse_keep(r) if scale else 1.0, dtype)

        if _broadcasts(shape, x):
            return _times(x, _computed_once(factor, u, dtype))
        return _times(x, factor())

    return _with_training(training, run, x)


def _broadcasts(shape, x):
    """True unless the noise shape is statically x's own shape (a full-size mask)."""
    static = x.shape.as_list()
    return not all(_is_static(d) and s is not None and int(d) == s for d, s in zip(shape, static))


def _computed_once(fn, u, dtype):
    """``fn()`` (a small mask of ``dtype`` and u's shape, built from the noise ``u``),
    materialized before it is broadcast.

    Under XLA the mask's arithmetic, the random generator's included (philox is plain integer
    arithmetic in XLA), is cheap per element, so XLA fuses it into the broadcasting multiply and
    recomputes it for every unit of x: spatial dropout's forward pass measured 7 times its
    floor on the 2-core CPU. XLA does not fuse across a conditional, so the mask is built in
    the branch of a ``tf.cond`` whose predicate (``min(u) < 2``, true for any uniform noise,
    false only when ``u`` is empty) XLA cannot evaluate at compile time. Outside XLA the
    conditional costs one small op. The result equals ``fn()`` exactly.
    """
    return tf.cond(tf.reduce_min(u) < 2.0, fn, lambda: tf.zeros_like(u, dtype=dtype))


def dropout(x, rate, noise_shape=None, *, training=True, seed=None, uniform=None, inplace=False):
    """Inverted dropout with a Keras-style noise shape.

    Args:
        x: float tensor of any shape whose rank is known (in a graph, sizes may be unknown).
        rate: probability of dropping a unit (or a whole slice), in [0, 1]; a Python number or
            a scalar tensor/variable.
        noise_shape: shape of the mask, broadcast against ``x``; ``None`` entries take x's size
            (also unknown sizes in a graph). ``None`` means x's shape (i.i.d. dropout).
        training: when False, returns ``x`` unchanged; may be a boolean tensor.
        seed: None, an int, a ``keras.random.SeedGenerator`` or a (2,) int tensor.
        uniform: optional U[0, 1) noise of shape ``noise_shape``; dropped where ``uniform < rate``.
        inplace: ignored (tensors are immutable).

    Returns:
        ``x * mask / (1 - rate)``: same shape and dtype as ``x``.
    """
    rate_s = _static_rate(rate)
    x = _as_float(x)
    dims = _dims(x)
    if noise_shape is None:
        shape = dims
    else:
        noise_shape = list(noise_shape)
        static = x.shape.as_list()
        if len(noise_shape) != len(static):
            raise ValueError(f"noise_shape must have x's rank {len(static)}, got {tuple(noise_shape)}")
        shape = []
        for a, s in enumerate(noise_shape):
            if s is None:
                shape.append(dims[a])
                continue
            shape.append(_noise_entry(s, a, dims, static, noise_shape))

    return _masked_by_noise(x, rate, rate_s, shape, training, seed, uniform)


def _noise_entry(s, axis, dims, static, noise_shape):
    """One checked ``noise_shape`` entry (not None): 1 or x's size on ``axis``. A float or a bool
    is an error, as in NumPy and PyTorch, not truncated; an int tensor is read where its value is
    known when traced. Where x's size or the entry is known only at run time, a graph checks it
    then, and the noise takes x's size (so under XLA, which drops the check, the output keeps
    x's shape)."""
    wrong = (f"noise_shape must have each entry 1 or the size of x on that axis "
             f"{tuple(static)}, got {tuple(noise_shape)}")
    if isinstance(s, (tf.Tensor, tf.Variable)):
        if not s.dtype.is_integer or s.shape.rank != 0:
            raise TypeError(f"noise_shape entries must be None, ints or scalar int tensors, "
                            f"got {s!r}")
        value = tf.get_static_value(s)
        if value is None:  # symbolic: 1 or x's size, checked at run time
            s = tf.cast(s, tf.int32)
            ok = tf.logical_or(tf.equal(s, 1), tf.equal(s, tf.cast(dims[axis], tf.int32)))
            with tf.control_dependencies([tf.debugging.Assert(ok, [wrong, s])]):
                return tf.identity(s)
        s = int(value)
    else:
        s = check_int(s, "noise_shape entries")
    if s == 1:
        return 1
    if static[axis] is not None:
        if s != static[axis]:
            raise ValueError(wrong)
        return s
    check = tf.debugging.assert_equal(tf.cast(dims[axis], tf.int32), s, message=wrong)
    with tf.control_dependencies([check]):
        return tf.identity(dims[axis])


def spatial_dropout(x, rate, data_format="channels_last", *, training=True, seed=None,
                    uniform=None, inplace=False):
    """Spatial dropout (Tompson et al. 2015, arXiv:1411.4280): whole channels are dropped.

    ``x`` has rank 3, 4 or 5: ``(batch, *spatial, channels)`` or ``(batch, channels, *spatial)``.
    One draw per (sample, channel): the mask has shape ``(batch, 1, .., 1, channels)`` (or the
    channels-first equivalent) and is broadcast over the spatial axes; the values of ``x`` are
    never looked at.
    """
    check_data_format(data_format)
    _static_rate(rate)
    x = _as_float(x)
    rank = check_n_spatial(x.shape.rank) + 2
    ch = _channel_axis(rank, data_format)
    shape = [None if a in (0, ch) else 1 for a in range(rank)]
    return dropout(x, rate, shape, training=training, seed=seed, uniform=uniform)


# --------------------------------------------------------------------------- the family
def cutout(x, size, data_format="channels_last", *, fill=0.0, training=True, seed=None,
           uniform=None):
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one patch per sample set to ``fill``.

    The patch's centre is uniform over the whole map, so the patch may hang over the border and
    is clipped there, as in the paper; it covers ``c - size // 2 .. c - size // 2 + size - 1``
    per axis, in every channel. No rescaling (cutout is data augmentation). ``fill`` is a
    finite Python or NumPy number. ``uniform`` has shape ``(batch, n_spatial)``; the centre is
    ``floor(uniform * map)``.
    """
    check_data_format(data_format)
    x = _as_float(x)
    n_spatial = check_n_spatial(x.shape.rank)
    size = check_block_size(size, n_spatial, "size")
    fill = check_fill(fill)

    def run():
        rank = x.shape.rank
        dims = _dims(x)
        shape = [dims[0], n_spatial]
        if uniform is None:
            u = _draw_uniform(shape, seed, tf.float64)
        else:
            u = _given_uniform(uniform, shape)
        inside = None
        for k, (axis, s) in enumerate(zip(_spatial_axes(rank, data_format), size)):
            n = dims[axis]
            nf = tf.cast(n, u.dtype)
            centre = tf.cast(tf.floor(u[:, k] * nf), tf.int32)
            if uniform is None:
                centre = tf.minimum(centre, tf.cast(n, tf.int32) - 1)
            start = centre - s // 2
            pos = tf.range(n)
            along = (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + s)
            if _is_static(n):
                bshape = [-1] + [1] * (rank - 1)
                bshape[axis] = n
            else:  # every size given (the batch's too, static or not): no -1 to infer
                bshape = tf.stack([tf.cast(dims[0] if a == 0 else (n if a == axis else 1),
                                           tf.int32) for a in range(rank)])
            along = tf.reshape(along, bshape)
            inside = along if inside is None else inside & along
        return tf.where(inside, _as_dtype(fill, x.dtype), x)

    return _with_training(training, run, x)


def drop_path(x, rate, *, mode="sample", batch_axis=0, training=True, seed=None, uniform=None,
              scale=True):
    """Stochastic depth / DropPath (Huang et al. 2016, arXiv:1603.09382) for a residual branch.

    ``mode="sample"`` drops the whole branch of each sample independently (noise shape 1 on
    every axis but ``batch_axis``); ``mode="batch"`` drops it for the whole batch at once.
    ``scale=True`` divides survivors by ``1 - rate`` (inverted); with ``scale=False`` the caller
    multiplies by ``1 - rate`` at inference instead, never both.
    """
    scale = check_bool(scale, "scale")
    rate_s = _static_rate(rate)
    x = _as_float(x)
    if x.shape.rank is None:
        raise ValueError("x must have a known rank with at least one axis (the batch)")
    shape = list(drop_path_noise_shape(_dims(x), mode, batch_axis))

    return _masked_by_noise(x, rate, rate_s, shape, training, seed, uniform, scale)


def dropconnect_dense(x, kernel, bias=None, rate=0.5, *, training=True, seed=None, uniform=None):
    """A dense layer with DropConnect (Wan et al. 2013): the Bernoulli mask falls on the weights.

    ``x`` is ``(batch, in)`` (or ``(..., in)``), ``kernel`` is ``(in, out)``. One weight mask is
    drawn per call (shared by the batch; the paper draws one per example) and survivors are
    scaled by ``1 / (1 - rate)``, so inference is the plain layer. The bias is never dropped
    (the paper masks it too). ``uniform`` has the kernel's shape.
    """
    rate_s = _static_rate(rate)
    x = _as_float(x)
    kernel = _as_float(kernel, "kernel")
    if x.shape.rank == 0:
        raise ValueError("x must have at least one axis (..., in), got a scalar")
    if kernel.shape.rank != 2 or (x.shape[-1] is not None and kernel.shape[0] is not None
                                  and x.shape[-1] != kernel.shape[0]):
        raise ValueError(f"kernel must have shape (x.shape[-1], units) = ({x.shape[-1]}, units), "
                         f"got {tuple(kernel.shape.as_list())}")
    if kernel.dtype != x.dtype:
        raise ValueError(f"kernel must have x's dtype {x.dtype.name}, got {kernel.dtype.name}")
    if bias is not None:
        bias_shape = (tuple(bias.shape.as_list()) if isinstance(bias, (tf.Tensor, tf.Variable))
                      else tuple(np.shape(bias)))
        units = kernel.shape[1]
        if len(bias_shape) != 1 or (None not in (units, bias_shape[0]) and bias_shape[0] != units):
            raise ValueError(f"bias must have shape (units,) = ({units},), got {bias_shape}")

    def masked():
        if rate_s == 0.0:
            return kernel
        if rate_s == 1.0:
            return _connected_zeros(kernel)
        dims = _dims(kernel, "kernel")
        u = _draw_uniform(dims, seed) if uniform is None else _given_uniform(uniform, dims)
        r = rate_s if rate_s is not None else _rate_tensor(rate)
        return _scaled(kernel, u >= _threshold(r, u.dtype), _inverse_keep(r))

    k = _with_training(training, masked, kernel)
    out = tf.matmul(x, k) if x.shape.rank == 2 else tf.tensordot(x, k, axes=1)
    if bias is not None:
        out = out + tf.cast(bias, out.dtype)
    return out
