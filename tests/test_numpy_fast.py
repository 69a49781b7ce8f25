"""The sparse DropBlock fast path of the NumPy reference (structdrop_tutorial._sparse_seeds).

Two claims are checked: (1) given the same seed positions the fast path builds exactly the mask of
``dropblock_keep_mask`` (and ``dropblock`` the same output); (2) the seeds it draws are an i.i.d.
Bernoulli(gamma) process: counts match the binomial, positions are uniform and independent
(5-sigma bounds, fixed seeds, so the tests are deterministic).
"""
import math
import zlib

import numpy as np
import pytest

try:
    import ml_dtypes  # NumPy's bfloat16 (installed with TensorFlow and JAX)
except ImportError:  # pragma: no cover
    ml_dtypes = None

from helpers import brute_force_keep_mask, five_sigma_fraction_bound
from structdrop_tutorial import _sparse_seeds as ss
from structdrop_tutorial import numpy as sdn
from structdrop_tutorial.gamma import clip_block, resolve_gamma
from structdrop_tutorial.shapes import seed_grid_shape, spatial_axes


def uniform_from_positions(positions, grid):
    """A uniform array with 0 at the seed positions and 0.75 elsewhere (seeds where u < 0.5)."""
    u = np.full(math.prod(grid), 0.75)
    u[positions] = 0.0
    return u.reshape(grid)


# --------------------------------------------------------------------------- Bernoulli positions
def test_positions_edges():
    rng = np.random.default_rng(0)
    assert ss.bernoulli_positions(rng, 0, 0.3).size == 0
    assert ss.bernoulli_positions(rng, 10, 0.0).size == 0
    np.testing.assert_array_equal(ss.bernoulli_positions(rng, 5, 1.0), np.arange(5))
    for chunk in (None, 1, 3):
        p = ss.bernoulli_positions(rng, 1000, 0.05, chunk=chunk)
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0) and (p.size == 0 or (p[0] >= 0 and p[-1] < 1000))


class _SaturatingGaps:
    """NumPy's geometric draws for a tiny probability: the largest int64, once (a second call
    means the loop did not see the end of the list)."""

    def __init__(self):
        self.calls = 0

    def geometric(self, p, size):
        self.calls += 1
        assert self.calls == 1, "bernoulli_positions asked for more gaps after a saturated one"
        return np.full(size, np.iinfo(np.int64).max, dtype=np.int64)


def test_saturated_gaps_end_the_list():
    """A sum of saturated gaps once overflowed: sdn.dropblock with gamma 1e-30 never returned,
    and rate 1e-17 raised IndexError."""
    for chunk in (None, 3):
        assert ss.bernoulli_positions(_SaturatingGaps(), 10**6, 1e-30, chunk=chunk).size == 0
    x = np.ones((2, 8, 8, 3), np.float32)
    for rate, gamma in ((0.1, 1e-30), (1e-17, "exact"), (0.1, 5e-324)):
        np.testing.assert_array_equal(sdn.dropblock(x, rate, 3, gamma=gamma, seed=0), x)


@pytest.mark.parametrize("chunk", [None, 2])
def test_counts_match_binomial(chunk):
    """Counts per draw: mean and variance of Binomial(n, gamma), within 5 sigma."""
    rng = np.random.default_rng(1)
    n, gamma, draws = 4000, 0.004, 3000
    counts = np.array([ss.bernoulli_positions(rng, n, gamma, chunk=chunk).size
                       for _ in range(draws)])
    mean, var = n * gamma, n * gamma * (1 - gamma)
    assert abs(counts.mean() - mean) < 5 * math.sqrt(var / draws)
    # sample variance: sd about var * sqrt((2 + excess kurtosis) / draws), excess ~ 1 / mean
    assert abs(counts.var(ddof=1) - var) < 5 * var * math.sqrt((2 + 1 / mean) / draws)


@pytest.mark.parametrize("chunk", [None, 1])
def test_positions_uniform_and_independent(chunk):
    """Every position is chosen with probability gamma; neighbours are chosen independently."""
    rng = np.random.default_rng(2)
    n, gamma, draws = 300, 0.05, 4000
    hits = np.zeros(n)
    pairs = 0
    for _ in range(draws):
        p = ss.bernoulli_positions(rng, n, gamma, chunk=chunk)
        hits[p] += 1
        pairs += np.count_nonzero(np.diff(p) == 1)
    sd = math.sqrt(draws * gamma * (1 - gamma))
    # each position's hit count is Binomial(draws, gamma); a 5-sigma band for each of 300 counts
    assert np.all(np.abs(hits - draws * gamma) < 5 * sd)
    # positions vs uniform: first and second half chosen equally often
    half = n // 2
    assert abs(hits[:half].sum() - hits[half:].sum()) < 5 * math.sqrt(2 * half * draws * gamma)
    # adjacent pairs both chosen with probability gamma**2 (independence); the n - 1 pair
    # indicators are 1-dependent, so allow a variance of 3 times the independent one
    expected = (n - 1) * draws * gamma ** 2
    assert abs(pairs - expected) < 5 * math.sqrt(3 * expected)


def test_positions_reproducible():
    a = ss.bernoulli_positions(np.random.default_rng(5), 10**6, 0.002)
    b = ss.bernoulli_positions(np.random.default_rng(5), 10**6, 0.002)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- exact masks
CASES = [
    ((2, 9, 3), 3, "channels_last", ()),
    ((2, 3, 11), 4, "channels_first", ()),
    ((3, 8, 7, 2), 3, "channels_last", ()),
    ((2, 2, 8, 7), (2, 5), "channels_first", ()),
    ((2, 6, 5, 3), 7, "channels_last", ()),            # block clipped to the map
    ((3, 8, 7, 4), 3, "channels_last", ("channels",)),
    ((3, 4, 8, 7), 3, "channels_first", ("batch",)),
    ((3, 8, 7, 4), 2, "channels_last", ("batch", "channels")),
    ((2, 5, 6, 4, 2), (2, 3, 2), "channels_last", ()),
    ((2, 2, 5, 4, 6), 3, "channels_first", ("channels",)),
]


@pytest.mark.parametrize("shape, block, data_format, share", CASES)
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("corners", ["tabulated", "unravelled"])
def test_keep_mask_equals_reference(shape, block, data_format, share, seeds, corners, monkeypatch):
    if corners == "unravelled":
        monkeypatch.setattr(ss, "CORNER_TABLE_MAX", 0)
    # a seed fixed per case (str hashes change between runs; crc32 does not)
    rng = np.random.default_rng(zlib.crc32(repr((shape, seeds)).encode()))
    axes = spatial_axes(len(shape), data_format)
    spatial = tuple(shape[a] for a in axes)
    block = clip_block(block, spatial)
    grid = seed_grid_shape(shape, block, data_format, seeds, share)
    mask_shape = ss.mask_shape_of(grid, spatial, axes)
    for density in (0.0, 0.03, 0.2, 1.0):
        positions = np.flatnonzero(rng.random(math.prod(grid)) < density)
        fast = ss.keep_from_positions(positions, grid, block, data_format, seeds, mask_shape)
        ref = sdn.dropblock_keep_mask(uniform_from_positions(positions, grid), 0.5, block,
                                      data_format, seeds)
        assert fast.shape == ref.shape == mask_shape
        np.testing.assert_array_equal(fast, ref)


def test_keep_mask_equals_brute_force_one_map():
    rng = np.random.default_rng(3)
    for seeds in ("valid", "padded"):
        grid_map = (6, 9) if seeds == "valid" else (10, 13)
        seed_grid = rng.random(grid_map) < 0.05
        grid = (1,) + grid_map + (1,)
        mask_shape = (1, 8, 11, 1)  # the map: 6 + 3 - 1 by 9 + 3 - 1, or 10 - 3 + 1 by 13 - 3 + 1
        fast = ss.keep_from_positions(np.flatnonzero(seed_grid), grid, (3, 3), "channels_last",
                                      seeds, mask_shape)
        np.testing.assert_array_equal(fast[0, ..., 0],
                                      brute_force_keep_mask(seed_grid, (3, 3), seeds))


# --------------------------------------------------------------------------- dropblock itself
HALF = [np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])


@pytest.mark.parametrize("shape, block, data_format, share", CASES[:8])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("normalize", ["batch", "rate"])
@pytest.mark.parametrize("dtype", [np.float32] + HALF)
def test_dropblock_fast_equals_dense_on_same_seeds(shape, block, data_format, share, seeds,
                                                   normalize, dtype):
    """dropblock(seed=s) draws the seeds with bernoulli_positions(default_rng(s)); feeding the
    same seeds as ``uniform`` to the reference path gives the same output, bit for bit, also in
    16-bit floats (where both form the product in float32 and round it once)."""
    x = np.random.default_rng(7).standard_normal(shape).astype(dtype)
    axes = spatial_axes(len(shape), data_format)
    spatial = tuple(shape[a] for a in axes)
    b = clip_block(block, spatial)
    gamma = 0.02
    assert ss.use_sparse(gamma, b)
    grid = seed_grid_shape(shape, b, data_format, seeds, share)
    for s in range(3):
        positions = ss.bernoulli_positions(np.random.default_rng(s), math.prod(grid), gamma)
        kwargs = dict(gamma=gamma, seeds=seeds, share=share, normalize=normalize)
        fast = sdn.dropblock(x, 0.1, block, data_format, seed=s, **kwargs)
        ref = sdn.dropblock(x, 0.1, block, data_format,
                            uniform=uniform_from_positions(positions, grid) * 0.04, **kwargs)
        np.testing.assert_array_equal(fast, ref)
        assert fast.dtype == x.dtype
        if x.dtype.itemsize == 2:  # the float32 product of the 16-bit values, rounded once
            u = uniform_from_positions(positions, grid) * 0.04
            keep = sdn.dropblock_keep_mask(u, gamma, b, data_format, seeds)
            scale = keep.size / keep.sum() if normalize == "batch" else 1 / 0.9
            want = (x.astype(np.float32) * (keep * np.float32(scale))).astype(x.dtype)
            np.testing.assert_array_equal(fast.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dropblock_fast_dtypes_and_inplace(dtype):
    x = np.random.default_rng(8).standard_normal((2, 12, 12, 3)).astype(dtype)
    keep_x = x.copy()
    y = sdn.dropblock(x, 0.1, 3, seed=0)
    assert y.dtype == dtype and y is not x
    np.testing.assert_array_equal(x, keep_x)  # input untouched
    z = sdn.dropblock(x, 0.1, 3, seed=0, inplace=True)
    assert z is x
    np.testing.assert_array_equal(z, y)


def test_dropblock_fast_drop_fraction():
    """Through the fast path, the realized drop fraction averages to the rate (exact gamma)."""
    shape, rate, block = (8, 20, 20, 32), 0.1, 5
    g = resolve_gamma("exact", rate, (block, block), (20, 20), "valid")
    assert ss.use_sparse(g, (block, block))
    x = np.ones(shape, np.float32)
    rng = np.random.default_rng(9)
    fractions = [np.mean(sdn.dropblock(x, rate, block, seed=rng, normalize="rate") == 0)
                 for _ in range(20)]
    # maps are independent: 20 draws x 8 samples x 32 channels
    assert abs(np.mean(fractions) - rate) < five_sigma_fraction_bound(rate, 20 * 8 * 32)


def test_dense_path_still_used_for_dense_masks():
    assert not ss.use_sparse(0.5, (7, 7))
    assert not ss.use_sparse(0.0, (3,)) and not ss.use_sparse(1.0, (3,))
    x = np.ones((2, 10, 10, 2), np.float32)
    y = sdn.dropblock(x, 0.9, 3, seed=0, normalize="rate")  # gamma * 9 > 1: reference path
    assert y.shape == x.shape and 0.5 < np.mean(y == 0) < 1.0
    # the reference path draws one uniform per seed position from default_rng(seed)
    grid = seed_grid_shape(x.shape, (3, 3), "channels_last", "valid")
    u = np.random.default_rng(0).random(grid)
    np.testing.assert_array_equal(y, sdn.dropblock(x, 0.9, 3, normalize="rate", uniform=u))
