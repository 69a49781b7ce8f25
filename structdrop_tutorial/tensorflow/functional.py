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
  tensor or variable (clipped to [0, 1]; rate 0 gives the input, rate 1 zeros, never NaN), so a
  schedule can change it between steps without retracing the graph.
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
"""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from .._checks import (NORMALIZE, SEEDS, check_block_size, check_choice, check_data_format,
                       check_n_spatial, check_rate, check_share)
from ..gamma import resolve_gamma
from ..shapes import drop_path_noise_shape
from . import _graph_gamma

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]

SAMPLERS = ("auto", "dense", "sparse")
#: The stateless generator used everywhere (the same numbers eagerly, in graphs and under XLA).
RNG_ALG = "philox"


# --------------------------------------------------------------------------- helpers
def _as_float(x, name="x"):
    """``x`` as a float tensor; TypeError for integer (or bool, complex) inputs."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype.name}")
    return x


def _dims(x):
    """x's shape as a list: Python ints where static, scalar int32 tensors where not."""
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
    """A checked Python float for a number; None for a tensor or variable (dynamic rate)."""
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        return check_rate(rate, name)
    if isinstance(rate, bool):
        check_rate(rate, name)  # raises TypeError
    return None


def _rate_tensor(rate):
    return tf.clip_by_value(tf.cast(rate, tf.float64), 0.0, 1.0)


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
        return tf.constant([int(seed), 0], tf.int64)
    if hasattr(seed, "next") and hasattr(seed, "state"):  # keras.random.SeedGenerator
        return tf.cast(tf.convert_to_tensor(seed.next()), tf.int64)
    if isinstance(seed, (tf.Tensor, tf.Variable, np.ndarray)):
        s = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        if s.shape.rank != 1 or (s.shape[0] is not None and s.shape[0] != 2):
            raise ValueError(f"seed tensor must have shape (2,), got {s.shape}")
        return s
    raise TypeError(f"seed must be None, an int, a keras.random.SeedGenerator or a shape (2,) "
                    f"integer tensor, got {type(seed).__name__}")


def sub_seed(seed_t, k):
    """The ``k``-th independent stateless seed derived from ``seed_t`` (``k = 0``: itself)."""
    if k == 0:
        return seed_t
    return tf.random.experimental.stateless_fold_in(seed_t, k)


def _draw_uniform(dims, seed, dtype=tf.float32):
    # An explicit algorithm: XLA's "auto_select" generator fuses into the consumer and is
    # recomputed for every element of a broadcast (2-3x slower spatial dropout under XLA on a CPU).
    return tf.random.stateless_uniform(_shape_arg(dims), seed=seed_tensor(seed), dtype=dtype,
                                       alg=RNG_ALG)


def _given_uniform(uniform, dims, name="uniform"):
    """``uniform`` as a float tensor, checked against ``dims`` wherever both are static."""
    u = tf.convert_to_tensor(uniform)
    if not u.dtype.is_floating:
        u = tf.cast(u, tf.float64)
    got = u.shape.as_list()
    want = [int(d) if _is_static(d) else None for d in dims]
    if len(got) != len(want) or any(g is not None and w is not None and g != w
                                    for g, w in zip(got, want)):
        raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(got)}")
    return u


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


def _scaled(x, keep, scale):
    """``x * (keep * scale)`` in x's dtype, the mask out of autograd.

    As ``keep`` is 0 or 1, ``x * (keep * s)`` equals NumPy's ``(x * keep) * s`` bit for bit,
    and the forward and backward passes each cost one multiply by the ready mask.
    """
    mask = tf.cast(keep, x.dtype) * _as_dtype(scale, x.dtype)
    return x * tf.stop_gradient(mask)


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
            return tf.zeros_like(x)
        u = _draw_uniform(shape, seed) if uniform is None else _given_uniform(uniform, shape)
        r = rate_s if rate_s is not None else _rate_tensor(rate)

        def factor():
            keep = u >= _threshold(r, u.dtype)
            return tf.cast(keep, x.dtype) * _as_dtype(_inverse_keep(r) if scale else 1.0, x.dtype)

        if _broadcasts(shape, x):
            return x * tf.stop_gradient(_computed_once(factor, u, x.dtype))
        return x * tf.stop_gradient(factor())

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
        x: float tensor of any shape.
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
            s = int(s)
            if s != 1 and static[a] is not None and s != static[a]:
                raise ValueError(f"noise_shape must have each entry 1 or the size of x on that "
                                 f"axis {tuple(static)}, got {tuple(noise_shape)}")
            shape.append(s)

    return _masked_by_noise(x, rate, rate_s, shape, training, seed, uniform)


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


# --------------------------------------------------------------------------- DropBlock
def _window_count(ind, axis, out_len, b, seeds):
    """Per output unit along ``axis``: how many seeds of the int32 indicator ``ind`` cover it.

    ``valid``: seed ``s`` covers ``s .. s + b - 1`` (output ``g + b - 1`` long for a grid of
    ``g``); ``padded``: seed ``s`` covers ``s - b + 1 .. s`` clipped (output ``g - b + 1``).
    Uses a running sum and two gathers, so ``b``, the grid and the output may all have sizes
    known only at run time.
    """
    rank = ind.shape.rank
    c = tf.cumsum(ind, axis=axis)
    pad = [[0, 0]] * rank
    pad[axis] = [1, 0]
    c = tf.pad(c, pad)  # c[k] = number of seeds before k
    g = tf.shape(ind)[axis]
    i = tf.range(out_len)
    if seeds == "valid":
        hi, lo = tf.minimum(i + 1, g), tf.maximum(i - b + 1, 0)
    else:
        hi, lo = i + b, i
    return tf.gather(c, hi, axis=axis) - tf.gather(c, lo, axis=axis)


def expand_seeds(dropped_seeds, block, data_format, seeds, out_sizes=None):
    """Dropped units from a boolean seed grid (True = seed): the dense OR over block windows.

    ``block`` holds one entry per spatial axis (int or scalar tensor, already clipped);
    ``out_sizes`` the map's sizes (computed from the grid when None). Returns a bool tensor.
    """
    rank = dropped_seeds.shape.rank
    dims = _dims(dropped_seeds)
    out = dropped_seeds
    for k, axis in enumerate(_spatial_axes(rank, data_format)):
        b = block[k]
        if out_sizes is not None:
            n = out_sizes[k]
        else:
            n = dims[axis] + b - 1 if seeds == "valid" else dims[axis] - b + 1
        out = _window_count(tf.cast(out, tf.int32), axis, n, b, seeds) > 0
    return out


def dropblock_keep_mask(uniform, gamma, block_size, data_format="channels_last", seeds="valid"):
    """The deterministic core of DropBlock: seeds from noise, blocks from seeds.

    Args:
        uniform: one U[0, 1) draw per seed position: shaped like the input but with each
            spatial axis ``map - block + 1`` long (``seeds="valid"``) or ``map + block - 1``
            (``seeds="padded"``); batch or channel axes of size 1 share the mask.
        gamma: seed probability (number or scalar tensor); a seed is where ``uniform < gamma``.
        block_size: int or one int per spatial axis, already clipped to the map.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        seeds: ``"valid"`` (seed ``s`` drops units ``s .. s + b - 1``) or ``"padded"``
            (seed ``s`` drops units ``s - b + 1 .. s``, clipped to the map).

    Returns:
        Boolean keep mask (True = kept) with the map's spatial sizes and uniform's batch and
        channel sizes.
    """
    check_choice(seeds, "seeds", SEEDS)
    check_data_format(data_format)
    u = tf.convert_to_tensor(uniform)
    n_spatial = check_n_spatial(u.shape.rank, "uniform")
    block = check_block_size(block_size, n_spatial)
    if seeds == "padded":
        static = u.shape.as_list()
        for axis, b in zip(_spatial_axes(u.shape.rank, data_format), block):
            if static[axis] is not None and static[axis] - b + 1 < b:
                raise ValueError(f"block_size {block_size} does not fit a map of "
                                 f"{static[axis] - b + 1} from a padded seed grid")
    g = float(gamma) if isinstance(gamma, numbers.Real) else gamma
    dropped = u < _threshold(g, u.dtype)
    return tf.logical_not(expand_seeds(dropped, block, data_format, seeds))


def _dropblock_geometry(x, block_size, data_format, seeds, share):
    """Static/dynamic sizes DropBlock needs: spatial sizes, clipped block, grid and mask shapes."""
    rank = x.shape.rank
    dims = _dims(x)
    axes = _spatial_axes(rank, data_format)
    ch = _channel_axis(rank, data_format)
    requested = check_block_size(block_size, len(axes))
    spatial = [dims[a] for a in axes]
    block = []
    for b, n in zip(requested, spatial):
        block.append(max(1, min(b, n)) if _is_static(n) else tf.maximum(tf.minimum(n, b), 1))
    grid, mask = list(dims), list(dims)
    for a, b, n in zip(axes, block, spatial):
        grid[a] = n - b + 1 if seeds == "valid" else n + b - 1
    if "channels" in share:
        grid[ch] = mask[ch] = 1
    if "batch" in share:
        grid[0] = mask[0] = 1
    return requested, spatial, block, grid, mask


def _resolve_gamma(gamma, rate_s, rate, requested, spatial, block, seeds):
    """Gamma as a Python float where everything is static (exactly NumPy's), else a tensor."""
    if not isinstance(gamma, str):
        if isinstance(gamma, numbers.Real):
            return resolve_gamma(float(gamma), 0.0, (1,), (1,))  # checked, as given
        return tf.cast(gamma, tf.float64)
    check_choice(gamma, "gamma", ("exact", "paper"))
    if rate_s is not None and all(_is_static(n) for n in spatial):
        return resolve_gamma(gamma, rate_s, block, spatial, seeds)
    r = rate_s if rate_s is not None else _rate_tensor(rate)
    if gamma == "exact":
        return _graph_gamma.exact_gamma(r, requested, spatial, seeds)
    return _graph_gamma.paper_gamma(r, requested, spatial)


def _mask_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


# Words summed per group by _count_kept: each byte lane of a group's sum stays below 256.
_LANE_GROUP = 255


def _count_kept(mask01):
    """Exact number of ones in a 0/1 mask, as float64.

    The mask is taken as bytes (uint8) and read eight at a time as int64 words; words are
    summed in groups of 255, so each byte of a group's sum counts the ones of one byte lane
    without carrying into the next, and the lanes are then added up. Integer arithmetic makes
    the count exact at any size; on the 2-core CPU it measured 2 ms for 6.4 million units, where
    per-map float sums over the spatial axes took 7 ms under XLA and 15 ms in a plain graph.
    """
    flat = tf.reshape(tf.cast(mask01, tf.uint8), [-1])
    step = 8 * _LANE_GROUP
    n_full = tf.size(flat) // step * step
    words = tf.bitcast(tf.reshape(flat[:n_full], [-1, _LANE_GROUP, 8]), tf.int64)
    lanes = tf.reduce_sum(words, axis=1)
    total = tf.reduce_sum(tf.cast(tf.reshape(tf.bitcast(lanes, tf.uint8), [-1]), tf.int64))
    total += tf.math.count_nonzero(flat[n_full:], dtype=tf.int64)
    return tf.cast(total, tf.float64)


def _batch_scale(mask01):
    """``mask.size / count(mask)`` in float64; 0 when everything is dropped (never inf or NaN)."""
    kept = _count_kept(mask01)
    size = tf.cast(tf.size(mask01, out_type=tf.int64), tf.float64)
    return tf.where(kept > 0, size / tf.maximum(kept, 1.0), tf.zeros_like(kept))


def dropblock(x, rate, block_size, data_format="channels_last", *, gamma="exact", seeds="valid",
              share=(), normalize="batch", training=True, seed=None, uniform=None, inplace=False,
              sampler="auto"):
    """DropBlock (Ghiasi, Lin, Le 2018, arXiv:1810.12890) over 1, 2 or 3 spatial axes.

    Args:
        x: float tensor of rank 3, 4 or 5; batch and spatial sizes may be unknown in a graph.
        rate: target fraction of dropped units, in [0, 1] (number or scalar tensor/variable).
        block_size: int or one int per spatial axis; clipped to the map per axis (at run time
            when the map size is unknown). Even sizes are fine: a block is indexed by its first
            unit, so it needs no centre.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        gamma: ``"exact"`` (expected drop fraction equals ``rate``), ``"paper"`` (the paper's
            formula, capped at 1) or a number.
        seeds: ``"valid"`` (paper: blocks lie inside the map) or ``"padded"`` (every unit is
            dropped with the same probability).
        share: ``()`` (one mask per sample and channel, as in the paper), ``"channels"``,
            ``"batch"`` or both.
        normalize: ``"batch"`` scales by ``mask.size / mask.sum()`` (the paper; an all-dropped
            mask gives zeros) or ``"rate"`` scales by ``1 / (1 - rate)``.
        training, seed, uniform, inplace: as in :func:`dropout`; ``uniform`` has the shape of
            :func:`structdrop_tutorial.shapes.seed_grid_shape`.
        sampler: ``"auto"``/``"sparse"`` draw only the seeds (exact same distribution, much
            faster for the usual small gamma; dense fallback when gamma is large);
            ``"dense"`` draws one uniform per seed position (the reference).

    Returns:
        Tensor of x's shape and dtype.
    """
    rate_s = _static_rate(rate)
    check_data_format(data_format)
    check_choice(seeds, "seeds", SEEDS)
    check_choice(normalize, "normalize", NORMALIZE)
    check_choice(sampler, "sampler", SAMPLERS)
    share = check_share(share)
    x = _as_float(x)
    check_n_spatial(x.shape.rank)
    requested, spatial, block, grid, mask_shape = _dropblock_geometry(x, block_size, data_format,
                                                                      seeds, share)
    if isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
        resolve_gamma(float(gamma), 0.0, (1,), (1,))  # range check, ValueError naming gamma

    def run():
        if rate_s == 0.0:
            return x
        if rate_s == 1.0:
            return tf.zeros_like(x)
        if any(_is_static(n) and n == 0 for n in spatial):
            return tf.identity(x)
        g = _resolve_gamma(gamma, rate_s, rate, requested, spatial, block, seeds)
        mdtype = _mask_dtype(x.dtype)
        if uniform is None and sampler != "dense":
            from . import _fast
            inv_keep = _inverse_keep(rate_s if rate_s is not None else _rate_tensor(rate))
            if _fast.use_fused_apply():
                return _fast.sparse_dropblock_fused(x, grid, mask_shape, g, block, data_format,
                                                    seeds, seed_tensor(seed), requested, mdtype,
                                                    normalize, inv_keep)
            mask = _fast.sparse_scaled_mask(grid, mask_shape, g, block, data_format, seeds,
                                            seed_tensor(seed), requested, mdtype, x.dtype,
                                            normalize, inv_keep)
            return x * tf.stop_gradient(mask)
        if uniform is not None or sampler == "dense":
            u = _draw_uniform(grid, seed) if uniform is None else _given_uniform(uniform, grid)
            dropped = expand_seeds(u < _threshold(g, u.dtype), block, data_format, seeds, spatial)
            mask01 = tf.cast(tf.logical_not(dropped), mdtype)
        else:
            from . import _fast
            mask01 = _fast.sparse_mask(grid, mask_shape, g, block, data_format, seeds,
                                       seed_tensor(seed), requested, mdtype)
        if normalize == "batch":
            scale = _batch_scale(mask01)
        else:
            scale = _inverse_keep(rate_s if rate_s is not None else _rate_tensor(rate))
        # x * (keep * scale): equal bit for bit to NumPy's (x * keep) * scale (keep is 0 or 1).
        if mdtype == x.dtype:
            mask = mask01 * _as_dtype(scale, x.dtype)
        else:
            mask = tf.cast(mask01, x.dtype) * _as_dtype(scale, x.dtype)
        return x * tf.stop_gradient(mask)

    return _with_training(training, run, x)


# --------------------------------------------------------------------------- the family
def cutout(x, size, data_format="channels_last", *, fill=0.0, training=True, seed=None,
           uniform=None):
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one patch per sample set to ``fill``.

    The patch's centre is uniform over the whole map, so the patch may hang over the border and
    is clipped there, as in the paper; it covers ``c - size // 2 .. c - size // 2 + size - 1``
    per axis, in every channel. No rescaling (cutout is data augmentation). ``uniform`` has
    shape ``(batch, n_spatial)``; the centre is ``floor(uniform * map)``.
    """
    check_data_format(data_format)
    x = _as_float(x)
    n_spatial = check_n_spatial(x.shape.rank)
    size = check_block_size(size, n_spatial, "size")

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
            bshape = [-1] + [1] * (rank - 1)
            bshape[axis] = n if _is_static(n) else -1
            if not _is_static(n) and not _is_static(dims[0]):
                bshape = [dims[0] if a == 0 else (n if a == axis else 1) for a in range(rank)]
                bshape = tf.stack([tf.cast(d, tf.int32) for d in bshape])
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
    scaled by ``1 / (1 - rate)``, so inference is the plain layer. ``uniform`` has the kernel's
    shape.
    """
    rate_s = _static_rate(rate)
    x = _as_float(x)
    kernel = _as_float(kernel, "kernel")
    if kernel.shape.rank != 2 or (x.shape[-1] is not None and kernel.shape[0] is not None
                                  and x.shape[-1] != kernel.shape[0]):
        raise ValueError(f"kernel must have shape (x.shape[-1], units) = ({x.shape[-1]}, units), "
                         f"got {tuple(kernel.shape.as_list())}")

    def masked():
        if rate_s == 0.0:
            return kernel
        if rate_s == 1.0:
            return tf.zeros_like(kernel)
        dims = _dims(kernel)
        u = _draw_uniform(dims, seed) if uniform is None else _given_uniform(uniform, dims)
        r = rate_s if rate_s is not None else _rate_tensor(rate)
        return _scaled(kernel, u >= _threshold(r, u.dtype), _inverse_keep(r))

    k = _with_training(training, masked, kernel)
    out = tf.matmul(x, k) if x.shape.rank == 2 else tf.tensordot(x, k, axes=1)
    if bias is not None:
        out = out + _as_dtype(bias, out.dtype) if isinstance(bias, numbers.Real) \
            else out + tf.cast(bias, out.dtype)
    return out
