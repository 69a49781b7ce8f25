"""DropBlock's fast path in TensorFlow: draw only the seeds, then expand them into blocks.

With the usual settings a seed is rare (gamma is about 0.002 to 0.02), so one uniform per seed
position (the reference in :mod:`.dropblock`) spends its time on positions that are not seeds.
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
2. **Blocks by a separable window OR** (:func:`mask_from_positions`). The seeds are scattered
   into a boolean seed grid (one write per seed, not one per unit of its block) and expanded
   axis by axis: a block is a box, so "some seed within ``b`` positions" along each axis in
   turn is exactly "some seed's block covers this unit". Each axis costs ``ceil(log2 b) + 1``
   ORs of shifted views (:func:`window_or`); under XLA they fuse into one loop.

Where the time goes (measured while building this, 2 CPU threads, 32x14x14x1024, block 7):
one uniform per seed position plus running-sum expansion cost 5-8x the floor ``x * mask``; the
geometric gaps take ~1 ms; scattering every unit of every block (~700k writes) cost ~35 ms in
TensorFlow's scatter, so the scatter stays per seed and the expansion is done on whole arrays.
Outside XLA, TensorFlow's own kernels for the ORs, the cast and the scaling still cost ~30 ms
there; inside a graph they run as one small cached ``jit_compile=True`` kernel instead
(:data:`USE_XLA_KERNEL`), which XLA fuses into a few loops and which writes the mask as uint8
(~3 ms). Counting the kept units for ``normalize="batch"`` by per-map float sums cost another
7-15 ms; an integer count of the bytes, eight at a time, takes ~2 ms
(:func:`.dropblock._count_kept`). The product ``x * mask * scale`` and its gradient run in a
second small kernel that reads the 1-byte mask (:func:`masked_multiply`).

Given the same seed positions the keep mask equals :func:`.dropblock.dropblock_keep_mask`'s
(``tests/test_tensorflow_fast.py``), and the seed positions pass a 5-sigma test against
Bernoulli(gamma).
"""
from __future__ import annotations

import collections
import math

import numpy as np
import tensorflow as tf

#: In graphs outside XLA, build the uint8 mask from the seed positions in a small XLA-compiled
#: kernel (the window ORs fuse into a few loops there, ~3x faster than TensorFlow's kernels on a
#: CPU) and apply it with another (:func:`masked_multiply`). Set to False to use plain
#: TensorFlow ops everywhere.
USE_XLA_KERNEL = True

#: Tiers of over-allocated seed counts: ``n // 4 ** k + 64`` for k = 1 .. TIERS.
TIERS = 5
_SIGMAS = 8.0
#: Same stateless generator as :mod:`._common` (see ``RNG_ALG`` there).
RNG_ALG = "philox"


def _static_int(v):
    return isinstance(v, (int, np.integer))


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
    from ._common import stateless_uniform
    u = 1.0 - stateless_uniform(tf.reshape(_i64(m), [1]), seed, tf.float64)
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


def seed_grid_from_positions(positions, valid, grid):
    """uint8 seed grid of shape ``grid`` with 1 at the flat ``positions`` where ``valid``."""
    n = _prod64(grid)
    index = tf.where(valid, positions, tf.zeros_like(positions))
    ones = tf.where(valid, tf.ones_like(positions, tf.uint8), tf.zeros_like(positions, tf.uint8))
    # positions are distinct; one spare entry keeps the scatter legal for an empty grid
    flat = tf.scatter_nd(index[:, None], ones, tf.reshape(tf.maximum(n, 1), [1]))
    return tf.reshape(flat[:n], _shape_list(grid))


def _take(a, axis, start, stop):
    index = [slice(None)] * a.shape.rank
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def window_or(a, axis, b):
    """OR over every window of ``b`` (static) consecutive entries of a bool tensor along ``axis``.

    Length ``L`` becomes ``L - b + 1``. Windows double (1, 2, 4, ...) and a last overlapping
    step finishes them, so a block of 7 costs 3 ORs; XLA fuses the slices into one loop.
    """
    width = 1
    while 2 * width <= b:
        a = tf.logical_or(_take(a, axis, None, -width), _take(a, axis, width, None))
        width *= 2
    if width < b:
        shift = b - width
        a = tf.logical_or(_take(a, axis, None, -shift), _take(a, axis, shift, None))
    return a


def expand_grid(seed_grid, block, spatial, spatial_axes, seeds, requested):
    """Dropped units (bool) from a bool seed grid (True = seed): OR over block windows.

    ``valid`` seeds use the requested (static) block with ``b - 1`` zeros of padding on both
    sides and keep the first ``n`` outputs, which is right whether or not the block was clipped
    to the map (a clipped block leaves a grid of length 1 whose seed covers the whole axis).
    ``padded`` seeds need the clipped block's size statically; where the map size is unknown
    they use the running-sum reference (:func:`.dropblock.expand_seeds`).
    """
    if seeds == "padded" and not all(_static_int(b) for b in block):
        from .dropblock import expand_seeds
        data_format = "channels_first" if spatial_axes[0] == 2 else "channels_last"
        return expand_seeds(seed_grid, block, data_format, seeds, spatial)
    out = seed_grid
    rank = seed_grid.shape.rank
    for k, axis in enumerate(spatial_axes):
        if seeds == "valid":
            b = requested[k]
            if b > 1:
                pad = [[0, 0]] * rank
                pad[axis] = [b - 1, b - 1]
                out = window_or(tf.pad(out, pad), axis, b)
                if not (_static_int(spatial[k]) and _static_int(block[k]) and block[k] == b):
                    out = _take(out, axis, None, spatial[k])
        else:
            out = window_or(out, axis, int(block[k]))
    return out


def mask_from_positions(positions, valid, grid, mask_shape, block, spatial_axes, seeds,
                        requested, dtype=tf.float32):
    """0/1 mask (1 = kept) of ``mask_shape`` in ``dtype`` from flat seed positions.

    ``valid`` says which entries of ``positions`` are seeds. The seeds are scattered into a
    boolean seed grid (one write per seed) and expanded into blocks by :func:`expand_grid`.
    """
    spatial = [mask_shape[a] for a in spatial_axes]
    seed_grid = seed_grid_from_positions(positions, valid, grid) > 0
    dropped = expand_grid(seed_grid, block, spatial, spatial_axes, seeds, requested)
    return tf.cast(tf.logical_not(dropped), dtype)


def keep_mask_from_positions(positions, valid, grid, mask_shape, block, spatial_axes, seeds,
                             requested):
    """Boolean keep mask from flat seed positions (see :func:`mask_from_positions`)."""
    m = mask_from_positions(positions, valid, grid, mask_shape, block, spatial_axes, seeds,
                            requested, tf.float32)
    return m > 0.5


def _dense_mask(grid, gamma, block, data_format, seeds, seed, spatial, dtype):
    from ._common import _shape_arg, _spatial_axes, stateless_uniform
    from .dropblock import expand_seeds
    u = stateless_uniform(_shape_arg(grid), seed, tf.float32)
    seed_grid = u < tf.cast(gamma, tf.float32)
    requested = [b if _static_int(b) else None for b in block]
    if all(r is not None for r in requested):  # static block: separable window OR
        dropped = expand_grid(seed_grid, block, spatial, _spatial_axes(len(grid), data_format),
                              seeds, requested)
    else:
        dropped = expand_seeds(seed_grid, block, data_format, seeds, spatial)
    return tf.cast(tf.logical_not(dropped), dtype)


def sparse_mask(grid, mask_shape, gamma, block, data_format, seeds, seed, requested,
                dtype=tf.float32, from_positions=None, dense_finish=None):
    """DropBlock 0/1 mask (1 = kept) with sparsely drawn seeds, same distribution as the dense path.

    ``grid``/``mask_shape``/``block`` as built by :func:`.dropblock.dropblock`, ``gamma`` a
    float or float64 tensor, ``seed`` a (2,) stateless seed. Where the grid size and gamma are
    Python numbers the tier is chosen in Python; otherwise a ``tf.switch_case`` picks it at run
    time.
    """
    from ._common import _spatial_axes
    rank = len(grid)
    axes = _spatial_axes(rank, data_format)
    spatial = [mask_shape[a] for a in axes]

    def dense():
        m01 = _dense_mask(grid, gamma, block, data_format, seeds, seed, spatial, dtype)
        return m01 if dense_finish is None else dense_finish(m01)

    gap_seed = tf.random.experimental.stateless_fold_in(seed, 1, alg=RNG_ALG)

    def tier(m, n):
        def run():
            pos = bernoulli_positions(n, gamma, gap_seed, m)

            def sparse():
                if from_positions is not None:
                    return from_positions(pos, pos < n)
                return mask_from_positions(pos, pos < n, grid, mask_shape, block, axes, seeds,
                                           requested, dtype)
            return tf.cond(pos[-1] >= n, sparse, dense)
        return run

    if all(_static_int(d) for d in grid) and isinstance(gamma, float):
        n = math.prod(int(d) for d in grid)
        mean = n * gamma
        need = mean + _SIGMAS * math.sqrt(mean * (1.0 - gamma)) + 16.0
        if gamma <= 0.0:
            ones = tf.ones(_shape_list(mask_shape), dtype)
            return ones if dense_finish is None else dense_finish(ones)
        sizes = [m for m in (n // 4 ** k + 64 for k in range(1, TIERS + 1)) if m >= need]
        if not sizes:
            return dense()
        return tier(sizes[-1], n)()
    n = _prod64(grid)
    gamma = _f64(gamma)
    need = draws_needed(n, gamma)
    sizes = [n // (4 ** k) + 64 for k in range(1, TIERS + 1)]  # decreasing
    # Branch k (1..TIERS) is the smallest tier that still holds `need` draws; 0 is dense.
    branch = tf.add_n([tf.cast(_f64(m) >= need, tf.int32) for m in sizes])
    return tf.switch_case(branch, [dense] + [tier(m, n) for m in sizes])


def _shape_list(dims):
    if all(_static_int(d) for d in dims):
        return [int(d) for d in dims]
    return tf.stack([tf.cast(d, tf.int32) for d in dims])


def _finisher(x_dtype, normalize):
    """``mask01 -> mask01 * scale`` in x's dtype (the same steps as the dense path)."""
    from ._common import _as_dtype
    from .dropblock import _batch_scale

    def finish(mask01, inv_keep):
        scale = _batch_scale(mask01) if normalize == "batch" else inv_keep
        if mask01.dtype == x_dtype:
            return mask01 * _as_dtype(scale, x_dtype)
        return tf.cast(mask01, x_dtype) * _as_dtype(scale, x_dtype)
    return finish


_KERNELS = collections.OrderedDict()
_MAX_KERNELS = 64


def _xla_kernel(spatial_axes, seeds, requested):
    """A cached ``jit_compile=True`` function: (positions, shape carrier) -> the 0/1 keep mask
    as uint8. The count of kept units is left to plain TensorFlow ops
    (:func:`.dropblock._count_kept`), which measured faster than a reduction fused into this
    kernel (XLA then recomputes the window ORs inside the reduction's loop)."""
    key = (tuple(spatial_axes), seeds, tuple(requested))
    if key in _KERNELS:
        _KERNELS.move_to_end(key)
    else:
        while len(_KERNELS) >= _MAX_KERNELS:
            _KERNELS.popitem(last=False)

        @tf.function(jit_compile=True, autograph=False)
        def kernel(positions, carrier):
            static = carrier.shape.as_list()[:-1]
            dynamic = tf.shape(carrier)
            mask_shape = [d if d is not None else dynamic[i] for i, d in enumerate(static)]
            block, grid = [], list(mask_shape)
            for a, b in zip(spatial_axes, requested):
                n = mask_shape[a]
                bb = max(1, min(b, n)) if _static_int(n) else tf.maximum(tf.minimum(n, b), 1)
                block.append(bb)
                grid[a] = n - bb + 1 if seeds == "valid" else n + bb - 1
            n_grid = _prod64(grid)
            return mask_from_positions(positions, positions < n_grid, grid, mask_shape, block,
                                       spatial_axes, seeds, requested, tf.uint8)
        _KERNELS[key] = kernel
    return _KERNELS[key]


def sparse_scaled_mask(grid, mask_shape, gamma, block, data_format, seeds, seed, requested,
                       mask_dtype, x_dtype, normalize, inv_keep):
    """The final DropBlock mask ``keep * scale`` in x's dtype, seeds drawn sparsely, built with
    plain TensorFlow ops (eagerly, under XLA, or with :data:`USE_XLA_KERNEL` off; graphs
    outside XLA use :func:`sparse_dropblock_fused`).

    Like :func:`sparse_mask` followed by the scaling (``normalize="batch"``: size / kept;
    ``"rate"``: ``inv_keep``).
    """
    from ._common import _spatial_axes
    axes = _spatial_axes(len(grid), data_format)
    finish = _finisher(x_dtype, normalize)
    inv = tf.constant(inv_keep, tf.float64) if isinstance(inv_keep, float) else _f64(inv_keep)

    def from_positions(pos, valid):
        return finish(mask_from_positions(pos, valid, grid, mask_shape, block, axes, seeds,
                                          requested, mask_dtype), inv)
    return sparse_mask(grid, mask_shape, gamma, block, data_format, seeds, seed, requested,
                       mask_dtype, from_positions=from_positions,
                       dense_finish=lambda m01: finish(m01, inv))


def use_fused_apply():
    """Whether :func:`sparse_dropblock_fused` applies: a graph outside XLA with the kernels on."""
    return USE_XLA_KERNEL and not tf.executing_eagerly() and not in_xla_context()


_APPLY = {}


def _apply_kernel(dtype):
    """Cached ``jit_compile=True`` ``(x, keep uint8, scale float64) -> x * (keep * scale)``.

    The same operations, in the same order and dtype, as the unfused ``x * mask`` with
    ``mask = cast(keep) * scale``, so the result is bit-identical; XLA runs them as one loop
    that reads x and the 1-byte mask and writes the output.
    """
    key = dtype.name
    if key not in _APPLY:
        from ._common import _factor_dtype
        wide = _factor_dtype(dtype)

        @tf.function(jit_compile=True, autograph=False)
        def apply(x, keep, scale):
            mask = tf.cast(keep, wide) * tf.cast(scale, wide)
            if wide == x.dtype:
                return x * mask
            return tf.cast(tf.cast(x, wide) * mask, x.dtype)  # 16-bit x: rounded once
        _APPLY[key] = apply
    return _APPLY[key]


def masked_multiply(x, keep, scale):
    """``x * (keep * scale)`` whose gradient is ``dy * (keep * scale)``, keeping only the uint8
    mask (1 byte per unit, not a float copy) for the backward pass. Both passes run
    :func:`_apply_kernel`."""
    apply = _apply_kernel(x.dtype)

    @tf.custom_gradient
    def multiply(x):
        def grad(dy):
            return apply(dy, keep, scale)
        return apply(x, keep, scale), grad
    return multiply(x)


def sparse_dropblock_fused(x, grid, mask_shape, gamma, block, data_format, seeds, seed,
                           requested, mask_dtype, normalize, inv_keep):
    """DropBlock's output in a graph outside XLA, from sparse seeds, with two fused kernels.

    The mask kernel writes the keep mask as uint8 and the scale (instead of a float mask four
    times larger), and :func:`masked_multiply` applies it in one loop per pass. Measured on the
    2-core CPU (tf.function, forward + backward, 32x28x28x512): see benchmarks/bench_tensorflow.py
    and chapter 8. The values equal :func:`sparse_scaled_mask` times x bit for bit.
    """
    from ._common import _spatial_axes
    from .dropblock import _batch_scale
    axes = _spatial_axes(len(grid), data_format)
    inv = tf.constant(inv_keep, tf.float64) if isinstance(inv_keep, float) else _f64(inv_keep)
    carrier = tf.zeros(tf.concat([tf.cast(_shape_list(mask_shape), tf.int32), [0]], 0))
    kernel = _xla_kernel(axes, seeds, requested)

    def from_positions(pos, valid):
        return kernel(pos, carrier)

    keep = sparse_mask(grid, mask_shape, gamma, block, data_format, seeds, seed, requested,
                       mask_dtype, from_positions=from_positions,
                       dense_finish=lambda mask01: tf.cast(mask01, tf.uint8))
    scale = _batch_scale(keep) if normalize == "batch" else inv
    return masked_multiply(x, tf.stop_gradient(keep), tf.stop_gradient(scale))
