"""Structured dropout in NumPy: the readable reference implementation.

``from structdrop_tutorial import numpy as sd`` gives the same names as the TensorFlow and PyTorch
modules. Inputs are float arrays laid out as ``(batch, *spatial, channels)`` (``"channels_last"``,
the default here as in Keras) or ``(batch, channels, *spatial)`` (``"channels_first"``).

Conventions shared by all three frameworks:

* A unit is dropped where its uniform draw is *below* the probability (``u < rate`` for
  dropout, ``u < gamma`` for a DropBlock seed). Passing ``uniform=`` makes every function
  deterministic, so the three frameworks can be compared on the same noise.
* ``training=False`` or ``rate == 0`` returns the input unchanged; ``rate == 1`` returns zeros.
* Survivors are scaled so that the expected output equals the input (inverted dropout).
* The input is never modified unless ``inplace=True``.
"""
from __future__ import annotations


import math
import numbers

import numpy as np

from ._checks import (SEEDS, check_block_size, check_choice, check_data_format,
                      check_dense_shapes, check_dropblock_options, check_float_dtype_name,
                      check_bool, check_fill, check_gamma, check_int, check_n_spatial,
                      check_rate, check_seed_int)
from . import _sparse_seeds
from .gamma import _check_gamma, clip_block, resolve_gamma
from .shapes import (drop_path_noise_shape, noise_shape as _noise_shape, seed_grid_shape,
                     spatial_axes)

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]


# --------------------------------------------------------------------------- helpers
def _as_float_array(x, name="x"):
    x = np.asarray(x)
    check_float_dtype_name(x.dtype.name, name)
    return x


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, float, str)):  # numpy would take a bool; a float or str fails
        raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        seed = check_seed_int(seed, "a numpy.random.Generator")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None, a non-negative int or a numpy.random.Generator, "
                        f"got {seed!r}") from None


def _uniform(shape, seed, uniform, name="uniform"):
    """The noise array: ``uniform`` checked against ``shape``, or fresh U[0, 1) draws."""
    if uniform is None:
        return _rng(seed).random(shape)
    uniform = np.asarray(uniform)
    if uniform.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {uniform.shape}")
    return uniform


def _scaled(x, keep, scale, inplace):
    """``x * keep * scale`` in x's dtype, written into x when ``inplace``. For 16-bit floats
    (float16, and ml_dtypes' bfloat16) the product is formed in float32 and rounded once (the
    scale is not rounded to 16 bits first), as in PyTorch and TensorFlow."""
    out = x if inplace else np.empty_like(x)
    if x.dtype.itemsize == 2:
        out[...] = x.astype(np.float32) * (keep * np.float32(scale))
        return out
    if keep.size < x.size:
        # A broadcast mask (spatial dropout, drop path) is small: fold the scale into it, so the
        # big array is read and written once. keep * scale is 0 or scale exactly, so the result
        # is bit-identical to multiplying by keep and then by scale.
        _multiply_broadcast(x, keep.astype(x.dtype) * x.dtype.type(scale), out)
        return out
    np.multiply(x, keep, out=out)
    out *= x.dtype.type(scale)
    return out


#: Innermost run, in elements, that :func:`_multiply_broadcast` aims for.
INNER_RUN = 4096


def _multiply_broadcast(x, factor, out):
    """``out[...] = x * factor`` for a ``factor`` broadcast over some axes of ``x``.

    NumPy runs its inner loop along the last axis. When the factor varies along that axis
    (channels_last: one value per channel) but is broadcast over the axes before it, the inner
    loop is only ``channels`` long and its per-call overhead dominates for small channel counts
    (64 channels: 1.3 times the cost of a full-size ``x * mask``). Tiling the factor ``k`` times
    along the preceding broadcast axes turns this into a loop of ``k * channels`` over a view of
    ``x``; the values and their order are unchanged, so the result is bit-identical.
    """
    c = x.shape[-1]
    lead = x.ndim - 1
    while lead > 0 and factor.shape[lead - 1] == 1 and x.shape[lead - 1] > 1:
        lead -= 1  # axes lead .. ndim-2 are broadcast (size 1 in factor)
    run = math.prod(x.shape[lead:-1])
    if (factor.shape[-1] != c or run <= 1 or c >= INNER_RUN or not x.flags.c_contiguous
            or not out.flags.c_contiguous):
        np.multiply(x, factor, out=out)
        return
    k = max(d for d in range(1, min(run, INNER_RUN // c) + 1) if run % d == 0)
    head = x.shape[:lead]
    fold = head + (run // k, k * c)
    tiled = np.tile(factor.reshape(factor.shape[:lead] + (1, c)), (1,) * lead + (1, k))
    np.multiply(x.reshape(fold), tiled, out=out.reshape(fold))


def _zeros(x, inplace):
    if inplace:
        x[...] = 0
        return x
    return np.zeros_like(x)


def bernoulli_compare(uniform, keep_prob):
    """Keep mask by comparison: a unit is kept where ``uniform < keep_prob``."""
    return (np.asarray(uniform) < keep_prob).astype(np.float32)


def bernoulli_relu_sign(uniform, keep_prob):
    """The same Bernoulli mask as ``relu(sign(keep_prob - uniform))``.

    ``sign`` is +1 where ``uniform < keep_prob`` and -1 (or 0 on a tie) elsewhere; ``relu``
    turns -1 and 0 into 0. For continuous uniforms the tie has probability zero, so this equals
    :func:`bernoulli_compare`.
    """
    return np.maximum(np.sign(keep_prob - np.asarray(uniform, dtype=np.float64)), 0).astype(np.float32)


# --------------------------------------------------------------------------- dropout
def dropout(x, rate, noise_shape=None, *, training=True, seed=None, uniform=None, inplace=False):
    """Inverted dropout with a Keras-style noise shape.

    Args:
        x: float array of any shape.
        rate: probability of dropping a unit (or a whole slice), in [0, 1].
        noise_shape: shape of the mask, broadcast against ``x``; ``None`` entries take x's size.
            ``None`` means ``x.shape`` (i.i.d. dropout).
        training: when False, returns ``x`` unchanged.
        seed: None, an int or a ``numpy.random.Generator``.
        uniform: optional U[0, 1) noise of shape ``noise_shape``; a unit is dropped where
            ``uniform < rate``.
        inplace: write the result into ``x``.

    Returns:
        ``x * mask / (1 - rate)``, same shape and dtype as ``x``.
    """
    rate = check_rate(rate)
    x = _as_float_array(x)
    if noise_shape is None:
        shape = x.shape
    else:
        shape = tuple(x.shape[a] if s is None else check_int(s, "noise_shape entries")
                      for a, s in enumerate(noise_shape))
        if len(shape) != x.ndim or any(s not in (1, n) for s, n in zip(shape, x.shape)):
            raise ValueError(f"noise_shape must have x's rank {x.ndim} with each entry 1 or the "
                             f"size of x on that axis {x.shape}, got {tuple(noise_shape)}")
    inplace = check_bool(inplace, "inplace")
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return _zeros(x, inplace)
    keep = _uniform(shape, seed, uniform) >= rate
    return _scaled(x, keep, 1.0 / (1.0 - rate), inplace)


def spatial_dropout(x, rate, data_format="channels_last", *, training=True, seed=None,
                    uniform=None, inplace=False):
    """Spatial dropout (Tompson et al. 2015): whole channels of each sample are dropped.

    ``x`` has rank 3, 4 or 5: ``(batch, *spatial, channels)`` or ``(batch, channels, *spatial)``.
    The mask has shape ``noise_shape("spatial", x.shape, data_format)``, i.e. one draw per
    (sample, channel); the values of ``x`` are never looked at.
    """
    check_data_format(data_format)
    x = _as_float_array(x)
    check_n_spatial(x.ndim)
    return dropout(x, rate, _noise_shape("spatial", x.shape, data_format), training=training,
                   seed=seed, uniform=uniform, inplace=inplace)


# --------------------------------------------------------------------------- DropBlock
def _window_or(a, axis, b):
    """OR over every window of ``b`` consecutive entries along ``axis`` (length n -> n - b + 1).

    Windows are doubled (1, 2, 4, ...) and finished with one overlapping step, so a block of 7
    costs 3 ORs rather than 6. This is a max pool with stride 1 on boolean data.
    """
    def take(arr, start, stop):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, stop)
        return arr[tuple(index)]

    width = 1
    while 2 * width <= b:
        n = a.shape[axis]
        a = take(a, 0, n - width) | take(a, width, n)
        width *= 2
    if width < b:
        n, shift = a.shape[axis], b - width
        a = take(a, 0, n - shift) | take(a, shift, n)
    return a


def dropblock_keep_mask(uniform, gamma, block_size, data_format="channels_last", seeds="valid"):
    """The deterministic core of DropBlock: seeds from noise, blocks from seeds.

    Args:
        uniform: one U[0, 1) draw per seed position, shaped like the input but with each
            spatial axis ``map - block + 1`` long (``seeds="valid"``) or ``map + block - 1``
            (``seeds="padded"``); batch or channel axes of size 1 share the mask.
        gamma: seed probability; a seed is where ``uniform < gamma``.
        block_size: int or one int per spatial axis, already clipped to the map.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        seeds: ``"valid"`` (seed position ``s`` drops units ``s .. s + b - 1``) or ``"padded"``
            (seed position ``s`` drops units ``s - b + 1 .. s``, clipped to the map).

    Returns:
        Boolean keep mask (True = kept) with the map's full spatial size and uniform's
        batch and channel sizes.
    """
    check_choice(seeds, "seeds", SEEDS)
    check_data_format(data_format)
    uniform = np.asarray(uniform)
    n_spatial = check_n_spatial(uniform.ndim, "uniform")
    block = check_block_size(block_size, n_spatial)
    if not isinstance(gamma, np.ndarray):  # a number (arrays broadcast against uniform)
        gamma = _check_gamma(gamma)
    dropped = uniform < gamma
    for axis, b in zip(spatial_axes(uniform.ndim, data_format), block):
        if seeds == "valid":
            pad = [(0, 0)] * uniform.ndim
            pad[axis] = (b - 1, b - 1)
            dropped = np.pad(dropped, pad)
        elif uniform.shape[axis] - b + 1 < b:
            raise ValueError(f"block_size {block_size} does not fit a map of "
                             f"{uniform.shape[axis] - b + 1} from a padded seed grid")
        dropped = _window_or(dropped, axis, b)
    return ~dropped


def _batch_scale(keep):
    kept = np.count_nonzero(keep)
    return keep.size / kept if kept else 0.0


def dropblock(x, rate, block_size, data_format="channels_last", *, gamma="exact", seeds="valid",
              share=(), normalize="batch", training=True, seed=None, uniform=None, inplace=False):
    """DropBlock (Ghiasi et al. 2018) over 1, 2 or 3 spatial axes.

    Args:
        x: float array of rank 3, 4 or 5.
        rate: target fraction of dropped units, in [0, 1].
        block_size: int or one int per spatial axis; clipped to the map per axis. Even sizes
            are fine: blocks are indexed by their first unit, so no centre is needed.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        gamma: ``"exact"`` (the expected drop fraction equals ``rate``), ``"paper"`` (the
            paper's formula, which falls short of ``rate`` when blocks overlap) or a number.
        seeds: ``"valid"`` (paper: blocks lie inside the map) or ``"padded"`` (every unit
            is dropped with the same probability).
        share: ``()`` for one mask per (sample, channel) as in the paper, or any of
            ``"channels"`` (one mask per sample) and ``"batch"`` (one mask for the batch).
        normalize: ``"batch"`` scales by ``mask.size / mask.sum()`` (the paper; an all-dropped
            mask gives zeros) or ``"rate"`` scales by ``1 / (1 - rate)``.
        training, seed, uniform, inplace: as in :func:`dropout`; ``uniform`` has the shape
            given by :func:`structdrop_tutorial.shapes.seed_grid_shape`. Without ``uniform``,
            sparse masks (``gamma * block area <= 1``, the usual case) take a fast path with
            the same distribution: only the seeds are drawn (geometric gaps of a Bernoulli
            process) and their blocks are written by index (see ``_sparse_seeds``).

    Returns:
        Array of x's shape and dtype.
    """
    rate = check_rate(rate)
    share = check_dropblock_options(data_format, seeds, normalize, share)
    x = _as_float_array(x)
    n_spatial = check_n_spatial(x.ndim)
    axes = spatial_axes(x.ndim, data_format)
    spatial = tuple(x.shape[a] for a in axes)
    check_block_size(block_size, n_spatial)
    check_gamma(gamma)  # before the shortcuts below, as in the other two frameworks
    inplace = check_bool(inplace, "inplace")
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return _zeros(x, inplace)
    if 0 in spatial:
        return x if inplace else x.copy()
    block = clip_block(block_size, spatial)
    g = resolve_gamma(gamma, rate, block, spatial, seeds)
    grid = seed_grid_shape(x.shape, block, data_format, seeds, share)
    if uniform is None and _sparse_seeds.use_sparse(g, block):
        # Fast path, same distribution: draw only the (rare) seeds, paint their blocks.
        keep = _sparse_seeds.sparse_keep_mask(x.shape, g, block, data_format, seeds, grid,
                                              _rng(seed))
    else:
        # Reference path: one uniform per seed position, then OR over block windows.
        u = _uniform(grid, seed, uniform)
        keep = dropblock_keep_mask(u, g, block, data_format, seeds)
    scale = _batch_scale(keep) if normalize == "batch" else 1.0 / (1.0 - rate)
    return _scaled(x, keep, scale, inplace)


# --------------------------------------------------------------------------- the family
def cutout(x, size, data_format="channels_last", *, fill=0.0, training=True, seed=None,
           uniform=None):
    """Cutout (DeVries & Taylor 2017): one patch per sample set to ``fill`` in every channel.

    The patch's centre is uniform over the whole map (so the patch may hang over the border
    and is clipped there, as in the paper); the patch covers ``c - size // 2`` to
    ``c - size // 2 + size - 1`` per axis. No rescaling: cutout is data augmentation.
    ``fill`` is a finite Python or NumPy number. ``uniform`` has shape (batch, n_spatial); the
    centre is ``floor(uniform * map)``.
    """
    check_data_format(data_format)
    x = _as_float_array(x)
    n_spatial = check_n_spatial(x.ndim)
    size = check_block_size(size, n_spatial, "size")
    fill = check_fill(fill)
    if not training:
        return x
    axes = spatial_axes(x.ndim, data_format)
    u = _uniform((x.shape[0], n_spatial), seed, uniform)
    inside = np.ones((x.shape[0],) + (1,) * (x.ndim - 1), dtype=bool)
    for k, (axis, s) in enumerate(zip(axes, size)):
        n = x.shape[axis]
        start = np.floor(u[:, k] * n).astype(np.int64) - s // 2
        pos = np.arange(n)
        along = (pos >= start[:, None]) & (pos < start[:, None] + s)  # (batch, n)
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[axis] = n
        inside = inside & along.reshape(shape)
    return np.where(inside, x.dtype.type(fill), x)


def drop_path(x, rate, *, mode="sample", batch_axis=0, training=True, seed=None, uniform=None,
              scale=True):
    """Stochastic depth / DropPath (Huang et al. 2016) for a residual branch's output.

    ``mode="sample"`` drops the whole branch for each sample independently (noise shape 1 on
    every axis but ``batch_axis``; this is Keras's ``noise_shape=(None, 1, 1, 1)`` and
    EfficientNet's ``drop_connect_rate``); ``mode="batch"`` drops it for the whole batch at once.
    ``scale=True`` divides survivors by ``1 - rate`` (inverted); with ``scale=False`` the
    caller must multiply by ``1 - rate`` at inference, never both.
    """
    scale = check_bool(scale, "scale")
    rate = check_rate(rate)
    x = _as_float_array(x)
    shape = drop_path_noise_shape(x.shape, mode, batch_axis)
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return np.zeros_like(x)
    keep = _uniform(shape, seed, uniform) >= rate
    return _scaled(x, keep, 1.0 / (1.0 - rate) if scale else 1.0, False)


def dropconnect_dense(x, kernel, bias=None, rate=0.5, *, training=True, seed=None, uniform=None):
    """A dense layer with DropConnect (Wan et al. 2013): the mask falls on the weights.

    ``x`` is (batch, in), ``kernel`` is (in, out). One weight mask is drawn per call (shared by
    the batch; the paper draws one per example) and survivors are scaled by ``1 / (1 - rate)``,
    so inference is the plain layer. The bias is never dropped (the paper masks it too).
    ``uniform`` has the kernel's shape.
    """
    rate = check_rate(rate)
    x = _as_float_array(x)
    kernel = _as_float_array(kernel, "kernel")
    check_dense_shapes(x.shape, kernel.shape, None if bias is None else np.shape(bias))
    if training and rate > 0.0:
        if rate == 1.0:
            kernel = np.zeros_like(kernel)
        else:
            keep = _uniform(kernel.shape, seed, uniform) >= rate
            kernel = _scaled(kernel, keep, 1.0 / (1.0 - rate), False)
    out = x @ kernel
    dtype = np.result_type(x.dtype, kernel.dtype)
    if out.dtype != dtype:  # NumPy multiplies ml_dtypes' bfloat16 matrices into float32
        out = out.astype(dtype)
    return out if bias is None else out + bias
