"""DropBlock's fast path in TensorFlow: draw only the seeds, then expand them by running sums.

With the usual settings a seed is rare (gamma is about 0.002 to 0.02), so one uniform per seed
position (the reference in :mod:`.functional`) spends its time on positions that are not seeds.
This module produces a mask with exactly the same distribution in two steps:

1. **Seeds as a Bernoulli process** (:func:`bernoulli_positions`). The positions of an i.i.d.
   Bernoulli(gamma) process over ``0, 1, 2, ...`` have i.i.d. geometric gaps,
   ``G = floor(log U / log(1 - gamma)) + 1`` with ``U`` uniform on (0, 1], so a running sum of
   ``m`` such gaps lists the first ``m`` seeds in order. ``m`` is over-allocated (about the mean
   count plus eight standard deviations) and must depend only on shapes, never on gamma, so that
   XLA sees static sizes: a ``tf.switch_case`` picks the smallest of a few size tiers
   (``n / 4, n / 16, ..., n / 4 ** 5``, plus 64) that is large enough for the current gamma,
   and the dense reference runs instead when none is (large gamma). In the rare event that the
   ``m`` seeds end before the grid does, the dense reference runs too, so the result is exact
   in every case, not just with high probability.
2. **Blocks by a difference array** (:func:`keep_mask_from_positions`). A block is a box;
   writing ``+1`` / ``-1`` at its ``2 ** d`` corners (inclusion-exclusion) and taking a running
   sum along every spatial axis gives, at every unit, the number of blocks that cover it. The
   scatter touches ``2 ** d`` entries per seed and the running sums run on one byte per unit
   (``uint8``, whose wrap-around is harmless as long as a unit's count, at most the block's
   area, stays below 256; larger blocks use ``int32``).

Given the same seed positions the keep mask equals :func:`.functional.dropblock_keep_mask`'s
(``tests/test_tensorflow_fast.py``), and the seed positions pass a 5-sigma test against
Bernoulli(gamma).
"""
from __future__ import annotations

import itertools
import math

import tensorflow as tf

#: Tiers of over-allocated seed counts: ``n // 4 ** k + 64`` for k = 1 .. TIERS.
TIERS = 5
_SIGMAS = 8.0


def _i64(v):
    return tf.cast(v, tf.int64)


def _f64(v):
    return tf.cast(v, tf.float64)


def _prod64(dims):
    out = tf.constant(1, tf.int64)
    for d in dims:
        out = out * _i64(d)
    return out


def draws_needed(n, gamma):
    """Gaps to draw so that ``m`` seeds overshoot ``n`` positions but for a ~1e-15 tail (float64)."""
    mean = _f64(n) * _f64(gamma)
    return mean + _SIGMAS * tf.sqrt(mean * (1.0 - _f64(gamma))) + 16.0


def bernoulli_positions(n, gamma, seed, m):
    """The first ``m`` positions of an i.i.d. Bernoulli(``gamma``) process, in increasing order.

    Args:
        n: number of positions (int or scalar tensor); gaps are clamped to ``n + 1`` so that
            gamma = 0 (no seed at all) stays finite.
        gamma: success probability (float or scalar tensor).
        seed: shape (2,) stateless seed.
        m: number of gaps to draw (int or scalar tensor).

    Returns:
        int64 vector of ``m`` positions. Those ``< n`` are exactly the seeds among the first
        ``n`` positions provided that the last one is ``>= n`` (else more seeds may follow).
    """
    u = 1.0 - tf.random.stateless_uniform(tf.reshape(_i64(m), [1]), seed=seed, dtype=tf.float64)
    log_keep = tf.math.log1p(-tf.minimum(_f64(gamma), 1.0))
    gaps = tf.floor(tf.math.log(u) / log_keep) + 1.0
    gaps = tf.where(tf.math.is_nan(gaps), tf.ones_like(gaps), gaps)
    gaps = tf.minimum(gaps, _f64(n) + 1.0)
    return tf.cumsum(tf.cast(gaps, tf.int64)) - 1


def in_xla_context():
    """Whether the graph being built will be compiled by XLA (``jit_compile=True``)."""
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # pragma: no cover - private API moved: int32 is always correct
        return True


def _count_dtype(requested):
    """uint8 running sums where the block's area stays below 256 (XLA has no uint8 cumsum)."""
    if math.prod(requested) < 256 and not in_xla_context():
        return tf.uint8
    return tf.int32


def keep_mask_from_positions(positions, valid, grid, mask_shape, block, spatial_axes, seeds,
                             requested):
    """Keep mask (bool, ``mask_shape``) from flat seed positions in the seed grid.

    Args:
        positions: int64 flat (C-order) indices into the seed grid ``grid``.
        valid: bool vector: which entries of ``positions`` are seeds (others are ignored).
        grid, mask_shape: seed-grid and mask dims (ints or scalar tensors).
        block: block per spatial axis, clipped to the map (ints or scalar tensors).
        spatial_axes: indices of the spatial axes.
        seeds: ``"valid"`` or ``"padded"``.
        requested: the static (unclipped) block, which bounds the coverage counts.
    """
    rank = len(grid)
    coords = []
    rest = positions
    for a in reversed(range(rank)):
        d = _i64(grid[a])
        coords.append(rest % tf.maximum(d, 1))
        rest = rest // tf.maximum(d, 1)
    coords = coords[::-1]
    strides, step = [], tf.constant(1, tf.int64)
    for a in reversed(range(rank)):
        strides.append(step)
        step = step * _i64(mask_shape[a])
    strides = strides[::-1]
    total = step
    base = tf.zeros_like(positions)
    for a in range(rank):
        if a not in spatial_axes:
            base = base + coords[a] * strides[a]
    starts, ends, end_ok = [], [], []
    for k, a in enumerate(spatial_axes):
        s, b, n = coords[a], _i64(block[k]), _i64(mask_shape[a])
        if seeds == "valid":
            lo, hi = s, s + b
        else:
            lo, hi = tf.maximum(s - b + 1, 0), tf.minimum(s + 1, n)
        starts.append(lo * strides[a])
        ends.append(hi * strides[a])
        end_ok.append(hi < n)  # a -1 at the map's end changes nothing
    dtype = _count_dtype(requested)
    one = tf.ones_like(positions, dtype=dtype)
    minus_one = tf.cast(-1, dtype) if dtype != tf.uint8 else tf.constant(255, tf.uint8)
    index, update = [], []
    for corner in itertools.product((0, 1), repeat=len(spatial_axes)):
        flat = base
        ok = valid
        for k, use_end in enumerate(corner):
            flat = flat + (ends[k] if use_end else starts[k])
            if use_end:
                ok = ok & end_ok[k]
        sign = one if sum(corner) % 2 == 0 else one * minus_one
        index.append(tf.where(ok, flat, tf.zeros_like(flat)))
        update.append(tf.where(ok, sign, tf.zeros_like(sign)))
    index = tf.concat(index, 0)[:, None]
    update = tf.concat(update, 0)
    counts = tf.scatter_nd(index, update, tf.reshape(total, [1]))
    counts = tf.reshape(counts, tf.stack([tf.cast(d, tf.int32) for d in mask_shape]))
    for a in spatial_axes:
        counts = tf.cumsum(counts, axis=a)
    return tf.equal(counts, tf.zeros((), dtype))


def _dense_keep(grid, gamma, block, data_format, seeds, seed, spatial):
    from .functional import _shape_arg, expand_seeds
    u = tf.random.stateless_uniform(_shape_arg(grid), seed=seed, dtype=tf.float32)
    return tf.logical_not(expand_seeds(u < tf.cast(gamma, tf.float32), block, data_format, seeds,
                                       spatial))


def sparse_keep_mask(grid, mask_shape, gamma, block, data_format, seeds, seed, requested):
    """DropBlock keep mask with sparsely drawn seeds (same distribution as the dense path).

    ``grid``/``mask_shape``/``block`` as built by :func:`.functional.dropblock`, ``gamma`` a
    float or float64 tensor, ``seed`` a (2,) stateless seed.
    """
    from .functional import _spatial_axes
    rank = len(grid)
    axes = _spatial_axes(rank, data_format)
    spatial = [mask_shape[a] for a in axes]
    n = _prod64(grid)
    gamma = _f64(gamma)
    need = draws_needed(n, gamma)
    sizes = [n // (4 ** k) + 64 for k in range(1, TIERS + 1)]  # decreasing
    # Branch k (1..TIERS) is the smallest tier that still holds `need` draws; 0 is dense.
    fits = [tf.cast(_f64(m) >= need, tf.int32) for m in sizes]
    branch = tf.add_n(fits)
    gap_seed = tf.random.experimental.stateless_fold_in(seed, 1)

    def dense():
        return _dense_keep(grid, gamma, block, data_format, seeds, seed, spatial)

    def tier(m):
        def run():
            pos = bernoulli_positions(n, gamma, gap_seed, m)
            enough = pos[-1] >= n

            def sparse():
                return keep_mask_from_positions(pos, pos < n, grid, mask_shape, block, axes,
                                                seeds, requested)
            return tf.cond(enough, sparse, dense)
        return run

    return tf.switch_case(branch, [dense] + [tier(m) for m in sizes])
