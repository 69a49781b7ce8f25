import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import structdrop_tutorial as sd
from helpers import brute_force_keep_mask


# The table of ANCHORS.md section 3 (computed independently there, and checked by sampling).
@pytest.mark.parametrize("side, block, rate, paper, realized, exact", [
    (14, 7, 0.10, 0.00625, 0.0929, 0.00676),
    (28, 5, 0.10, 0.00544, 0.0946, 0.00578),
    (8, 3, 0.10, 0.01975, 0.0947, 0.02092),
    (14, 7, 0.25, 0.01562, 0.2095, 0.01940),
    (7, 7, 0.10, 0.10000, 0.1000, 0.10000),
])
def test_published_table(side, block, rate, paper, realized, exact):
    shape = (side, side)
    g = sd.paper_gamma(rate, block, shape)
    assert g == pytest.approx(paper, abs=5e-6)
    assert sd.expected_drop_fraction(g, block, shape) == pytest.approx(realized, abs=5e-5)
    assert sd.exact_gamma(rate, block, shape) == pytest.approx(exact, abs=5e-6)


def test_paper_gamma_formula_non_square_and_3d():
    assert sd.paper_gamma(0.1, 5, (14, 20)) == pytest.approx(0.1 * 14 * 20 / (25 * 10 * 16))
    assert sd.paper_gamma(0.1, 5, (14, 20)) == sd.paper_gamma(0.1, 5, (20, 14))
    assert sd.paper_gamma(0.2, (3, 2, 4), (8, 9, 10)) == pytest.approx(
        0.2 * 8 * 9 * 10 / (24 * 6 * 8 * 7))


def test_block_is_clipped_per_axis():
    assert sd.clip_block(20, (14, 30)) == (14, 20)
    assert sd.paper_gamma(0.1, 20, (14, 14)) == sd.paper_gamma(0.1, 14, (14, 14))
    # A block covering the whole map is spatial dropout: one seed position, gamma = rate.
    assert sd.exact_gamma(0.3, 50, (7, 7)) == pytest.approx(0.3, abs=1e-12)


def brute_coverage(block, shape, seeds):
    grid = tuple(n - b + 1 if seeds == "valid" else n + b - 1
                 for n, b in zip(shape, sd.clip_block(block, shape)))
    counts = np.zeros(shape, dtype=np.int64)
    for flat in range(int(np.prod(grid))):
        one = np.zeros(grid, dtype=bool)
        one.flat[flat] = True
        counts += ~brute_force_keep_mask(one, sd.clip_block(block, shape), seeds)
    return counts


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
       blocks=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       seeds=st.sampled_from(["valid", "padded"]))
def test_coverage_counts_match_painting_every_seed(shape, blocks, seeds):
    block = tuple(blocks[:len(shape)])
    np.testing.assert_array_equal(sd.coverage_counts(block, shape, seeds),
                                  brute_coverage(block, tuple(shape), seeds))


def test_padded_coverage_is_uniform():
    counts = sd.coverage_counts((3, 4), (9, 11), "padded")
    assert np.all(counts == 12)


@settings(max_examples=40, deadline=None)
@given(side_h=st.integers(1, 30), side_w=st.integers(1, 30), block=st.integers(1, 9),
       rate=st.floats(0.001, 0.999), seeds=st.sampled_from(["valid", "padded"]))
def test_exact_gamma_hits_the_rate(side_h, side_w, block, rate, seeds):
    shape = (side_h, side_w)
    g = sd.exact_gamma(rate, block, shape, seeds)
    assert 0.0 <= g <= 1.0
    assert sd.expected_drop_fraction(g, block, shape, seeds) == pytest.approx(rate, rel=1e-12, abs=0)


@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("rate", [1e-6, 1e-30, 1e-59, 1e-60, 1e-100, 1e-300])
@pytest.mark.parametrize("block, shape", [(7, (14, 14)), (3, (8, 8)), ((2, 3, 4), (5, 6, 7)),
                                          (4, (1000,))])
def test_exact_gamma_is_relative_for_tiny_rates(rate, block, shape, seeds):
    """However small the rate, gamma hits it to a relative 1e-12 (a bisection from [0, 1] with
    200 halvings returned about 3e-61 for every rate below 1e-60, five times 1e-60's gamma)."""
    g = sd.exact_gamma(rate, block, shape, seeds)
    assert 0.0 < g <= rate
    assert sd.expected_drop_fraction(g, block, shape, seeds) == pytest.approx(rate, rel=1e-12, abs=0)


def test_expected_fraction_is_mean_of_probability_map_and_monotone():
    g = np.linspace(0, 1, 11)
    fr = [sd.expected_drop_fraction(x, 5, (12, 17)) for x in g]
    assert np.all(np.diff(fr) > 0) and fr[0] == 0.0 and fr[-1] == 1.0
    pm = sd.drop_probability_map(0.03, 5, (12, 17))
    assert pm.mean() == pytest.approx(sd.expected_drop_fraction(0.03, 5, (12, 17)), abs=1e-15)
    # Edge units are covered by fewer seed positions, so they are dropped less often.
    assert pm[0, 0] < pm[6, 8]


def test_padded_gamma_closed_form():
    g = sd.exact_gamma(0.1, 7, (14, 14), "padded")
    assert g == pytest.approx(1 - 0.9 ** (1 / 49), rel=1e-12, abs=0)
    pm = sd.drop_probability_map(g, 7, (14, 14), "padded")
    np.testing.assert_allclose(pm, 0.1, rtol=1e-12)


def test_paper_gamma_falls_short_whenever_blocks_overlap():
    for side, block in [(14, 7), (28, 5), (9, 2), (16, 4)]:
        g = sd.paper_gamma(0.1, block, (side, side))
        assert sd.expected_drop_fraction(g, block, (side, side)) < 0.1
        assert sd.exact_gamma(0.1, block, (side, side)) > g


def test_resolve_gamma():
    assert sd.resolve_gamma("paper", 1.0, 3, (14, 14)) == pytest.approx(196 / 9 / 144)
    assert sd.resolve_gamma("paper", 1.0, 2, (2, 2)) == 1.0  # clipped to a probability
    assert sd.resolve_gamma(0.25, 0.1, 3, (5, 5)) == 0.25


@pytest.mark.parametrize("call, match", [
    (lambda: sd.paper_gamma(1.5, 3, (8, 8)), r"rate must be in \[0, 1\]"),
    (lambda: sd.paper_gamma(-0.1, 3, (8, 8)), r"rate must be in \[0, 1\]"),
    (lambda: sd.exact_gamma(float("nan"), 3, (8, 8)), r"rate must be in \[0, 1\]"),
    (lambda: sd.exact_gamma(0.1, 0, (8, 8)), r"block_size must be >= 1"),
    (lambda: sd.exact_gamma(0.1, (3, 3, 3), (8, 8)), r"block_size must have one entry per"),
    (lambda: sd.exact_gamma(0.1, 3, (8, 8, 8, 8)), r"spatial_shape must have 1, 2 or 3"),
    (lambda: sd.exact_gamma(0.1, 3, (8, 8), "same"), r"seeds must be one of"),
    (lambda: sd.expected_drop_fraction(1.2, 3, (8, 8)), r"gamma must be in \[0, 1\]"),
    (lambda: sd.resolve_gamma("keras", 0.1, 3, (8, 8)), r"gamma must be one of"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rate_type_error():
    with pytest.raises(TypeError, match="rate"):
        sd.paper_gamma("0.1", 3, (8, 8))
    assert math.isfinite(sd.exact_gamma(1e-12, 3, (8, 8)))


@pytest.mark.parametrize("b", [0, -2])
def test_axis_coverage_needs_a_positive_block(b):
    with pytest.raises(ValueError, match="b must be >= 1"):
        sd.axis_coverage(5, b)
