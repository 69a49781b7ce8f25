"""DropBlock's sparse fast path in NumPy: draw only the seeds, then paint their blocks.

With the usual settings a DropBlock seed is rare (gamma is about 0.002 to 0.02), so drawing one
uniform number per seed position and OR-ing windows over the whole seed grid spends nearly all
of its time on positions that are not seeds. This module does the same job in time proportional
to the number of seeds:

1. :func:`bernoulli_positions` draws the flat indices of the seeds directly. An i.i.d.
   Bernoulli(gamma) process over positions ``0, 1, 2, ...`` has i.i.d. geometric gaps between
   consecutive successes, so the cumulative sum of ``rng.geometric(gamma)`` draws gives exactly
   the seed positions, already sorted (sorted seeds make the later writes sweep memory forward).
2. :func:`block_flat_indices` turns each seed into the flat indices of the units its block
   covers, by index arithmetic on the mask's strides (clipped to the map for padded seeds).
3. :func:`keep_from_positions` clears those indices in a boolean keep mask, and
   :func:`sparse_keep_mask` returns it, and :func:`structdrop_tutorial.numpy.dropblock`
   applies it exactly as it applies the reference path's mask.

Given the same seed positions the result is exactly the mask of
:func:`structdrop_tutorial.numpy.dropblock_keep_mask` (``tests/test_numpy_fast.py`` checks this
and the statistics of the seeds).
"""
from __future__ import annotations

import math

import numpy as np

from .shapes import spatial_axes

#: The sparse path is used while a seed grid's expected painted units stay below this fraction of
#: its size (``gamma * prod(block)``); denser masks are cheaper with the windowed OR.
SPARSE_MAX_COVER = 1.0


def use_sparse(gamma: float, block) -> bool:
    """Whether :func:`sparse_keep_mask` is the cheaper way to draw a mask with this gamma."""
    return 0.0 < gamma < 1.0 and gamma * math.prod(block) <= SPARSE_MAX_COVER


def bernoulli_positions(rng: np.random.Generator, n: int, gamma: float,
                        chunk: int | None = None) -> np.ndarray:
    """Sorted indices ``i`` in ``[0, n)`` of an i.i.d. Bernoulli(``gamma``) process.

    Exact: position ``i`` is chosen with probability ``gamma``, independently of every other
    position, exactly as ``rng.random(n) < gamma`` would choose it, but without drawing ``n``
    numbers. The gaps between chosen positions are geometric (number of trials up to and
    including the next success); their running sum is the list of positions. Gaps are drawn
    ``chunk`` at a time (default: enough for the mean plus six standard deviations) until the
    sum passes ``n``. A gap longer than ``n`` ends the list wherever it starts, so gaps are
    capped at ``n + 1`` before they are summed: for a tiny ``gamma`` NumPy's geometric draws
    saturate at the largest int64, and their sum would overflow.
    """
    if n <= 0 or gamma <= 0.0:
        return np.zeros(0, dtype=np.int64)
    if gamma >= 1.0:
        return np.arange(n, dtype=np.int64)
    mean = n * gamma
    if chunk is None:
        chunk = int(mean + 6.0 * math.sqrt(mean) + 16)  # almost always one chunk suffices
    parts = []
    last = -1  # position of the last success so far
    while True:
        gaps = np.minimum(rng.geometric(gamma, size=chunk), n + 1)
        pos = last + np.cumsum(gaps, dtype=np.int64)
        if pos[-1] >= n:
            parts.append(pos[: np.searchsorted(pos, n)])
            break
        parts.append(pos)
        last = int(pos[-1])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _c_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


#: Largest per-sample seed grid (positions) whose block corners are tabulated.
CORNER_TABLE_MAX = 1 << 20
_CORNERS: dict = {}


def _corner_table(grid_shape: tuple, mask_shape: tuple) -> np.ndarray:
    """``table[i]``: flat index in one sample's mask of the corner of the block whose seed is at
    flat position ``i`` of one sample's seed grid (valid seeds). Cached per geometry."""
    key = (grid_shape[1:], mask_shape[1:])
    table = _CORNERS.get(key)
    if table is None:
        table = np.zeros((), dtype=np.int64)
        for n, stride in zip(grid_shape[1:], _c_strides(mask_shape)[1:]):
            table = (table[..., None] + np.arange(n, dtype=np.int64) * stride)
        table = _CORNERS[key] = table.reshape(-1)
        table.flags.writeable = False
    return table


def block_flat_indices(positions, grid_shape, block, data_format: str, seeds: str,
                       mask_shape) -> np.ndarray:
    """Flat (C-order) indices into ``mask_shape`` of every unit covered by a seed's block.

    Args:
        positions: flat indices of the seeds in the seed grid (C order).
        grid_shape: the seed grid's shape (see :func:`structdrop_tutorial.shapes.seed_grid_shape`).
        block: block size per spatial axis, already clipped to the map.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        seeds: ``"valid"`` (seed ``s`` covers ``s .. s + b - 1``) or ``"padded"``
            (``s - b + 1 .. s``, clipped to the map).
        mask_shape: the mask's shape: the grid's, with the map's spatial sizes.

    Returns:
        int64 array; an index appears once per block that covers it (duplicates are possible).
    """
    positions = np.asarray(positions, dtype=np.int64)
    axes = spatial_axes(len(grid_shape), data_format)
    strides = _c_strides(mask_shape)
    # Flat index of each seed's block corner in the mask (for padded seeds the corner may lie
    # up to b - 1 units before the map; those units are clipped below).
    shift = 1 if seeds == "padded" else 0
    per_sample = math.prod(grid_shape[1:])
    if not shift and per_sample <= CORNER_TABLE_MAX:
        # sample index times the mask's sample size, plus the tabulated corner in the sample
        sample, local = np.divmod(positions, per_sample)
        base = _corner_table(tuple(grid_shape), tuple(mask_shape))[local]
        base += sample * math.prod(mask_shape[1:])
        coords = None
    else:
        coords = np.unravel_index(positions, grid_shape)
        base = np.zeros(positions.shape, dtype=np.int64)
        for a in range(len(grid_shape)):
            base += coords[a] * strides[a]
    offsets = np.zeros(1, dtype=np.int64)
    for a, b in zip(axes, block):
        along = (np.arange(b, dtype=np.int64) - shift * (b - 1)) * strides[a]
        offsets = (offsets[:, None] + along[None, :]).reshape(-1)
    if not shift:
        return (base[:, None] + offsets[None, :]).reshape(-1)
    idx = base[:, None] + offsets[None, :]
    inside = np.ones(idx.shape, dtype=bool)
    for a, b in zip(axes, block):
        local = np.arange(b, dtype=np.int64) - (b - 1)  # offsets along this axis
        shape = [1] * len(block)
        shape[axes.index(a)] = b
        c = coords[a][:, None] + np.broadcast_to(local.reshape(shape), block).reshape(-1)[None, :]
        inside &= (c >= 0) & (c < mask_shape[a])
    return idx[inside]


def keep_from_positions(positions, grid_shape, block, data_format: str, seeds: str,
                        mask_shape) -> np.ndarray:
    """Boolean keep mask of ``mask_shape`` (True = kept) with the blocks of the seeds removed."""
    keep = np.ones(math.prod(mask_shape), dtype=bool)
    keep[block_flat_indices(positions, grid_shape, block, data_format, seeds, mask_shape)] = False
    return keep.reshape(mask_shape)


def mask_shape_of(grid_shape, spatial, block_axes) -> tuple:
    """The mask's shape: the seed grid's shape with the map's spatial sizes."""
    shape = list(grid_shape)
    for a, n in zip(block_axes, spatial):
        shape[a] = n
    return tuple(shape)


def sparse_keep_mask(x_shape, gamma: float, block, data_format: str, seeds: str, grid_shape,
                     rng: np.random.Generator) -> np.ndarray:
    """DropBlock's boolean keep mask with its seeds drawn sparsely (see the module docstring):
    shaped like the input, or broadcasting against it where the seed grid is shared
    (``share``). The caller applies it exactly as the reference path applies its mask."""
    axes = spatial_axes(len(x_shape), data_format)
    spatial = tuple(x_shape[a] for a in axes)
    mask_shape = mask_shape_of(grid_shape, spatial, axes)
    positions = bernoulli_positions(rng, math.prod(grid_shape), gamma)
    return keep_from_positions(positions, grid_shape, block, data_format, seeds, mask_shape)
