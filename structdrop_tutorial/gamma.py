"""DropBlock's seed probability gamma and the exact expected drop fraction.

All of it is framework-free math on spatial shapes; the NumPy, TensorFlow and PyTorch
implementations and the book share it.

Notation: a map with ``n`` units along an axis and a block of ``b`` units (clipped to ``n``).
With ``seeds="valid"`` (the paper) a seed may sit only where the whole block fits, at the
``n - b + 1`` positions whose block starts there. With ``seeds="padded"`` there are
``n + b - 1`` seed positions, the block of position ``s`` covering units ``s - b + 1 .. s``
clipped to the map; then every unit is covered by exactly ``b`` positions per axis.

A unit covered by ``c`` seed positions is dropped with probability ``1 - (1 - gamma) ** c``,
since each of those positions is a seed independently with probability ``gamma``.

Reference: G. Ghiasi, T.-Y. Lin, Q. V. Le, "DropBlock: A regularization method for
convolutional networks", NeurIPS 2018, arXiv:1810.12890.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import numpy as np

from ._checks import (BlockSize, check_block_size, check_choice, check_gamma, check_int, check_rate,
                      check_spatial_shape, SEEDS)


def clip_block(block_size: BlockSize, spatial_shape: Sequence[int]) -> Tuple[int, ...]:
    """The block size per axis, clipped to the map: ``min(block, map)`` on every axis."""
    spatial_shape = check_spatial_shape(spatial_shape)
    block = check_block_size(block_size, len(spatial_shape))
    return tuple(min(b, n) for b, n in zip(block, spatial_shape))


def paper_gamma(rate: float, block_size: BlockSize, spatial_shape: Sequence[int]) -> float:
    """The DropBlock paper's gamma, generalized to non-square maps and 1 to 3 spatial axes.

    ``gamma = rate / prod(b) * prod(n) / prod(n - b + 1)`` with the block clipped per axis.
    It divides the requested drop rate by the block's area (each seed drops ``prod(b)`` units)
    and rescales from the seed region to the whole map. It assumes that blocks never overlap,
    so the realized drop fraction is below ``rate`` (see :func:`expected_drop_fraction`).
    The value is returned as computed; it can exceed 1 for large rates and small maps.
    """
    rate = check_rate(rate)
    spatial_shape = check_spatial_shape(spatial_shape)
    block = clip_block(block_size, spatial_shape)
    area = math.prod(block)
    valid = math.prod(n - b + 1 for n, b in zip(spatial_shape, block))
    return rate / area * math.prod(spatial_shape) / valid


def axis_coverage(n: int, b: int, seeds: str = "valid") -> np.ndarray:
    """How many seed positions along one axis have a block that covers each of the ``n`` units."""
    check_choice(seeds, "seeds", SEEDS)
    n, b = check_int(n, "n", 0), check_int(b, "b", 1)
    b = min(b, n)
    if seeds == "padded":
        return np.full(n, b, dtype=np.int64)
    i = np.arange(n)
    last_seed = n - b  # seed positions are 0 .. n - b
    return np.minimum(i, last_seed) - np.maximum(0, i - b + 1) + 1


def coverage_counts(block_size: BlockSize, spatial_shape: Sequence[int],
                    seeds: str = "valid") -> np.ndarray:
    """The number of seed positions whose block covers each unit of the map.

    Coverage is separable: the count of a unit is the product of its per-axis counts.
    Returns an int64 array of shape ``spatial_shape``.
    """
    spatial_shape = check_spatial_shape(spatial_shape)
    block = clip_block(block_size, spatial_shape)
    counts = np.ones((), dtype=np.int64)
    for n, b in zip(spatial_shape, block):
        counts = np.multiply.outer(counts, axis_coverage(n, b, seeds))
    return counts


def _check_gamma(gamma) -> float:
    """A seed probability: a real number in [0, 1] (TypeError or ValueError naming gamma)."""
    return check_gamma(gamma, choices=())


def drop_probability_map(gamma: float, block_size: BlockSize, spatial_shape: Sequence[int],
                         seeds: str = "valid") -> np.ndarray:
    """Per-unit probability of being dropped: ``1 - (1 - gamma) ** coverage``."""
    gamma = _check_gamma(gamma)
    counts = coverage_counts(block_size, spatial_shape, seeds)
    return -np.expm1(counts * np.log1p(-gamma)) if gamma < 1 else np.ones(counts.shape)


def _count_histogram(block_size, spatial_shape, seeds):
    counts = coverage_counts(block_size, spatial_shape, seeds)
    values, weights = np.unique(counts, return_counts=True)
    return values.astype(np.float64), weights / counts.size


def _fraction_from_histogram(gamma: float, values: np.ndarray, weights: np.ndarray) -> float:
    if gamma >= 1.0:
        return 1.0
    return float(np.sum(weights * -np.expm1(values * math.log1p(-gamma))))


def expected_drop_fraction(gamma: float, block_size: BlockSize, spatial_shape: Sequence[int],
                           seeds: str = "valid") -> float:
    """The exact expected fraction of dropped units for seed probability ``gamma``.

    The mean over the map of ``1 - (1 - gamma) ** c``, where ``c`` is the unit's coverage
    count (:func:`coverage_counts`). No sampling is involved.
    """
    gamma = _check_gamma(gamma)
    values, weights = _count_histogram(block_size, spatial_shape, seeds)
    return _fraction_from_histogram(gamma, values, weights)


def exact_gamma(rate: float, block_size: BlockSize, spatial_shape: Sequence[int],
                seeds: str = "valid") -> float:
    """The gamma whose expected drop fraction equals ``rate``, to a relative 1e-15 or better
    (rates below about 2e-308, subnormal in float64, lose digits).

    For ``seeds="padded"`` every unit has coverage ``prod(b)``, so the answer is closed form:
    ``1 - (1 - rate) ** (1 / prod(b))``. For ``seeds="valid"`` the expected fraction is a
    continuous, strictly increasing function of gamma from 0 (gamma = 0) to 1 (gamma = 1, as
    every unit is covered by at least one seed position), so bisection finds the root.
    """
    rate = check_rate(rate)
    spatial_shape = check_spatial_shape(spatial_shape)
    check_choice(seeds, "seeds", SEEDS)
    if rate in (0.0, 1.0):
        return rate
    if seeds == "padded":
        area = math.prod(clip_block(block_size, spatial_shape))
        return -math.expm1(math.log1p(-rate) / area)
    return _bisect_valid(rate, clip_block(block_size, spatial_shape), spatial_shape)


#: (rate, block, map) -> exact gamma for valid seeds. Every framework's ``dropblock`` asks for the
#: same few on every call, and the bisection costs about 2 ms. A plain dict rather than
#: ``functools.lru_cache``, which ``torch.compile`` warns about when it traces through it.
_VALID_GAMMAS: dict = {}


def _bisect_valid(rate: float, block: Tuple[int, ...], spatial_shape: Tuple[int, ...]) -> float:
    key = (rate, block, spatial_shape)
    if key not in _VALID_GAMMAS:
        if len(_VALID_GAMMAS) >= 1024:
            _VALID_GAMMAS.clear()
        _VALID_GAMMAS[key] = _bisect_valid_uncached(rate, block, spatial_shape)
    return _VALID_GAMMAS[key]


def _bisect_valid_uncached(rate: float, block: Tuple[int, ...],
                           spatial_shape: Tuple[int, ...]) -> float:
    values, weights = _count_histogram(block, spatial_shape, "valid")
    # Every unit is covered by at least one seed position and by ``mean`` of them on average, so
    # gamma <= fraction(gamma) <= mean * gamma: the root lies in [rate / mean, rate]. Starting
    # from that bracket rather than [0, 1] keeps the answer relative to the rate however small
    # it is (from [0, 1], 200 halvings end at about 3e-61 for any smaller rate).
    lo, hi = rate / float(np.dot(values, weights)), rate
    # Bisect until the bracket cannot shrink any further in float64 (about 60 halvings).
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _fraction_from_histogram(mid, values, weights) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def resolve_gamma(gamma: Union[str, float], rate: float, block_size: BlockSize,
                  spatial_shape: Sequence[int], seeds: str = "valid") -> float:
    """Turn the ``gamma`` argument of ``dropblock`` into a probability in [0, 1].

    ``"exact"`` gives :func:`exact_gamma`; ``"paper"`` gives :func:`paper_gamma` clipped to 1
    (the formula is not a probability once blocks overlap heavily); a number is used as given.
    """
    if isinstance(gamma, str):
        check_choice(gamma, "gamma", ("exact", "paper"))
        if gamma == "exact":
            return exact_gamma(rate, block_size, spatial_shape, seeds)
        return min(1.0, paper_gamma(rate, block_size, spatial_shape))
    return _check_gamma(gamma)
