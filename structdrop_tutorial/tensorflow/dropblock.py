"""DropBlock as TensorFlow functions: the reference path (one uniform per seed position,
running-sum block expansion), the sparse sampler's dispatch (:mod:`._fast`) and the graph-mode
gamma plumbing (:mod:`._graph_gamma`). :mod:`.functional` re-exports the public names."""
from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

from .._checks import (SEEDS, check_block_size, check_choice, check_data_format,
                       check_dropblock_options, check_gamma, check_n_spatial)
from ..gamma import _check_gamma, resolve_gamma
from . import _graph_gamma
from ._common import (_as_dtype, _as_float, _channel_axis, _connected_zeros, _dims,
                      _draw_uniform, _factor_dtype, _given_uniform, _inverse_keep, _is_static,
                      _rate_tensor, _spatial_axes, _static_rate, _threshold, _times,
                      _with_training, seed_tensor)

SAMPLERS = ("auto", "dense", "sparse")


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
    if not u.dtype.is_floating:  # compared as numbers, as NumPy and PyTorch compare them
        u = tf.cast(u, tf.float64)
    n_spatial = check_n_spatial(u.shape.rank, "uniform")
    block = check_block_size(block_size, n_spatial)
    if seeds == "padded":
        static = u.shape.as_list()
        for axis, b in zip(_spatial_axes(u.shape.rank, data_format), block):
            if static[axis] is not None and static[axis] - b + 1 < b:
                raise ValueError(f"block_size {block_size} does not fit a map of "
                                 f"{static[axis] - b + 1} from a padded seed grid")
    tensor = tf.is_tensor(gamma) or isinstance(gamma, (tf.Variable, np.ndarray))
    g = gamma if tensor else _check_gamma(gamma)  # tensors as given
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


#: the most coverage counts the graph's exact gamma tabulates (a block on a map of unknown size)
_MAX_COVERAGE_TABLE = 2 ** 18


def _resolve_gamma(gamma, rate_s, rate, requested, spatial, block, seeds):
    """Gamma as a Python float where everything is static (exactly NumPy's), else a tensor.

    A tensor rate (a schedule's variable) of 0 or 1 gives gamma 0 or 1 whatever ``gamma``
    says, so the call is the identity or zeros, as it is for a Python rate: the paper's formula
    at rate 1 is no certain drop once blocks overlap, and a given number is any rate's. (A
    scalar choice, not a ``tf.cond`` around the call: Keras's training step could not take the
    gradient through a cond that captures the mask.)"""
    g = _gamma_of(gamma, rate_s, rate, requested, spatial, block, seeds)
    if rate_s is not None:
        return g
    r = _rate_tensor(rate)
    g = tf.cast(g, tf.float64)
    return tf.where(r >= 1.0, tf.ones_like(g), tf.where(r <= 0.0, tf.zeros_like(g), g))


def _gamma_of(gamma, rate_s, rate, requested, spatial, block, seeds):
    if not isinstance(gamma, str):
        if isinstance(gamma, numbers.Real):
            return resolve_gamma(float(gamma), 0.0, (1,), (1,))  # checked, as given
        return tf.cast(gamma, tf.float64)
    check_choice(gamma, "gamma", ("exact", "paper"))
    if rate_s is not None and all(_is_static(n) for n in spatial):
        return resolve_gamma(gamma, rate_s, block, spatial, seeds)
    r = rate_s if rate_s is not None else _rate_tensor(rate)
    # the coverage table has prod(upper) entries: the clipped block where the map size is static
    upper = [b if _is_static(n) else r for b, r, n in zip(block, requested, spatial)]
    if gamma == "exact":
        if seeds == "valid" and math.prod(upper) > _MAX_COVERAGE_TABLE:
            raise ValueError(
                f"block_size {tuple(requested)} on a map whose size {tuple(spatial)} is not known "
                f"when traced needs a coverage table of {math.prod(upper)} entries to find "
                f"gamma='exact' (at most {_MAX_COVERAGE_TABLE}): give the map size in the input "
                "signature, use a smaller block, or gamma='paper'")
        return _graph_gamma.exact_gamma(r, upper, spatial, seeds)
    return _graph_gamma.paper_gamma(r, upper, spatial)


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
    share = check_dropblock_options(data_format, seeds, normalize, share)
    check_choice(sampler, "sampler", SAMPLERS)
    x = _as_float(x)
    check_n_spatial(x.shape.rank)
    requested, spatial, block, grid, mask_shape = _dropblock_geometry(x, block_size, data_format,
                                                                      seeds, share)
    if not (tf.is_tensor(gamma) or isinstance(gamma, tf.Variable)):
        check_gamma(gamma)  # "exact", "paper" or a number in [0, 1]; errors name gamma

    def run():
        if rate_s == 0.0:
            return x
        if rate_s == 1.0:
            return _connected_zeros(x)
        if any(_is_static(n) and n == 0 for n in spatial):
            return tf.identity(x)
        return masked()

    def masked():
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
                                            seed_tensor(seed), requested, mdtype,
                                            _factor_dtype(x.dtype), normalize, inv_keep)
            return _times(x, mask)
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
        dtype = _factor_dtype(x.dtype)
        if mdtype == dtype:
            mask = mask01 * _as_dtype(scale, dtype)
        else:
            mask = tf.cast(mask01, dtype) * _as_dtype(scale, dtype)
        return _times(x, mask)

    return _with_training(training, run, x)
