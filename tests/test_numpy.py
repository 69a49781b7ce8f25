"""The NumPy reference: exact masks, statistics and edge cases."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import structdrop_tutorial as sd
from structdrop_tutorial import numpy as sdn
from helpers import brute_force_keep_mask, five_sigma_fraction_bound


def test_dropout_mask_scale_and_noise_shape():
    x = np.arange(1, 25, dtype=np.float64).reshape(2, 3, 4)
    u = np.random.default_rng(0).random((2, 1, 4))
    y = sdn.dropout(x, 0.5, (None, 1, None), uniform=u)
    keep = u >= 0.5
    np.testing.assert_array_equal(y, x * keep * 2.0)
    # one draw per (sample, last axis) shared along the middle axis
    assert np.all((y == 0).all(axis=1) | (y != 0).all(axis=1))


def test_bernoulli_two_ways_agree():
    u = np.random.default_rng(1).random(10_000)
    keep = sdn.bernoulli_compare(u, 0.7)
    np.testing.assert_array_equal(keep, (u < 0.7).astype(np.float32))  # 1 = kept, below keep_prob
    np.testing.assert_array_equal(keep, sdn.bernoulli_relu_sign(u, 0.7))
    # on a tie the comparison drops and so does relu(sign(0)) = 0
    np.testing.assert_array_equal(sdn.bernoulli_relu_sign(np.array([0.7, 0.2, 0.9]), 0.7), [0, 1, 0])


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [3, 4, 5])
def test_spatial_dropout_drops_whole_channels_and_ignores_values(fmt, rank):
    rng = np.random.default_rng(rank)
    shape = (4, 6) + (5,) * (rank - 2) if fmt == "channels_first" else (4,) + (5,) * (rank - 2) + (6,)
    x = rng.normal(size=shape)
    y1 = sdn.spatial_dropout(x, 0.5, fmt, seed=3)
    y2 = sdn.spatial_dropout(-x, 0.5, fmt, seed=3)   # same noise, values flipped
    np.testing.assert_array_equal(y1 == 0, y2 == 0)  # the mask never looks at values
    axes = sd.spatial_axes(rank, fmt)
    dropped = (y1 == 0).all(axis=axes)
    kept = (y1 != 0).all(axis=axes)
    assert np.all(dropped | kept)
    np.testing.assert_allclose(y1[y1 != 0], 2 * x[y1 != 0])


@pytest.mark.parametrize("shape, noise", [
    ((2, 5, 6, 3), (2, 1, 1, 3)),        # one value per (sample, channel), channels_last
    ((2, 4, 4, 4, 64), (2, 1, 1, 1, 64)),  # 3-D, 64 channels: the folded fast case
    ((3, 7, 5), (1, 1, 5)),              # shared over the batch
    ((2, 6, 5), (2, 6, 1)),              # constant along the last axis: plain multiply
    ((2, 3, 5000), (2, 1, 5000)),        # already a long inner loop
])
@pytest.mark.parametrize("inplace", [False, True])
def test_broadcast_multiply_is_bit_identical(shape, noise, inplace, monkeypatch):
    """The widened inner loop gives exactly x * factor, also for awkward run lengths."""
    rng = np.random.default_rng(0)
    for run in (sdn.INNER_RUN, 7, 64):
        monkeypatch.setattr(sdn, "INNER_RUN", run)
        x = rng.normal(size=shape).astype(np.float32)
        factor = rng.normal(size=noise).astype(np.float32)
        expected = x * factor
        out = x if inplace else np.empty_like(x)
        sdn._multiply_broadcast(x, factor, out)
        np.testing.assert_array_equal(out, expected)
    x = rng.normal(size=(4, 6, 6, 8))[:, ::2]  # not contiguous: falls back to np.multiply
    out = np.empty_like(x)
    sdn._multiply_broadcast(x, np.ones((4, 1, 1, 8)), out)
    np.testing.assert_array_equal(out, x)


def test_spatial_dropout_rate_is_binomial():
    x = np.ones((500, 4, 4, 40), np.float32)
    y = sdn.spatial_dropout(x, 0.3, seed=0)
    frac = (y[:, 0, 0, :] == 0).mean()   # 20,000 independent channel draws
    assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20_000)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_spatial=st.integers(1, 3), seeds=st.sampled_from(["valid", "padded"]),
       fmt=st.sampled_from(["channels_last", "channels_first"]))
def test_keep_mask_equals_painting_blocks(data, n_spatial, seeds, fmt):
    spatial = tuple(data.draw(st.integers(1, 9)) for _ in range(n_spatial))
    block = tuple(min(data.draw(st.integers(1, 6)), n) for n in spatial)
    grid = tuple(n - b + 1 if seeds == "valid" else n + b - 1 for n, b in zip(spatial, block))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    batch, ch = 2, 3
    shape = (batch, ch) + grid if fmt == "channels_first" else (batch,) + grid + (ch,)
    u = rng.random(shape)
    gamma = data.draw(st.sampled_from([0.05, 0.2, 0.6]))
    keep = sdn.dropblock_keep_mask(u, gamma, block, fmt, seeds)
    for b in range(batch):
        for c in range(ch):
            sl = (b, c) if fmt == "channels_first" else (b, Ellipsis, c)
            ref = brute_force_keep_mask(u[sl] < gamma, block, seeds)
            np.testing.assert_array_equal(keep[sl], ref)


@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("spatial, block", [((14, 14), 7), ((9, 13), 4), ((20,), 6), ((6, 7, 8), (3, 2, 4))])
def test_realized_drop_fraction_matches_expectation(spatial, block, seeds):
    """Mean over 4,000 independent maps within 5 sigma of the exact expected fraction."""
    x = np.ones((100, 40) + spatial, np.float32)
    y = sdn.dropblock(x, 0.15, block, "channels_first", seeds=seeds, seed=7)
    g = sd.exact_gamma(0.15, block, spatial, seeds)
    expected = sd.expected_drop_fraction(g, block, spatial, seeds)
    assert expected == pytest.approx(0.15, abs=1e-9)
    assert abs((y == 0).mean() - expected) < five_sigma_fraction_bound(expected, 4000)


def test_paper_gamma_realizes_less_than_requested():
    x = np.ones((100, 40, 14, 14), np.float32)
    y = sdn.dropblock(x, 0.1, 7, "channels_first", gamma="paper", seed=11)
    expected = sd.expected_drop_fraction(sd.paper_gamma(0.1, 7, (14, 14)), 7, (14, 14))
    assert abs((y == 0).mean() - expected) < five_sigma_fraction_bound(expected, 4000)
    assert expected < 0.0930  # exact: the paper's formula falls short of the 0.1 requested


def test_padded_seeds_drop_every_unit_equally_often():
    x = np.ones((2000, 1, 10, 10))
    y = sdn.dropblock(x, 0.2, 4, "channels_first", seeds="padded", normalize="rate", seed=5)
    per_unit = (y == 0).mean(axis=(0, 1))   # 2,000 independent draws per unit
    assert np.all(np.abs(per_unit - 0.2) < 5 * np.sqrt(0.2 * 0.8 / 2000))
    # and the 1/(1-rate) scale makes every unit unbiased
    assert np.all(np.abs(y.mean(axis=(0, 1)) - 1) < 5 * np.sqrt(0.2 / 0.8 / 2000))


def test_batch_normalization_preserves_the_mean_exactly():
    x = np.ones((8, 5, 12, 12), np.float32)
    y = sdn.dropblock(x, 0.3, 3, "channels_first", seed=2)
    assert 0.2 < np.mean(y == 0) < 0.4  # something was dropped, and rescaled
    assert y.mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("share, mask_shape", [((), (48, 48)), ("channels", (48, 1)), ("batch", (1, 48)),
                                               (("batch", "channels"), (1, 1))])
def test_share(share, mask_shape):
    """Shared axes carry one mask; unshared axes carry independent masks, which must differ.

    Bound on a false "all equal" along an unshared axis: with valid seeds each corner unit of a
    10x10 map is covered by exactly one seed position (3x3 blocks, 8x8 seed grid), so the four
    corners of a map are four independent Bernoulli(gamma) draws, gamma = exact_gamma(0.5, 3,
    (10, 10)) = 0.1237. N = 48 independent masks agree in all four corners with probability
    (gamma**N + (1 - gamma)**N)**4 < 1e-10 per axis checked; the seed is fixed anyway.
    """
    x = np.ones((48, 48, 10, 10))
    y = sdn.dropblock(x, 0.5, 3, "channels_first", share=share, seed=1)
    zero = (y == 0)
    batch_equal = np.all(zero == zero[:1])
    channels_equal = np.all(zero == zero[:, :1])
    assert batch_equal == (mask_shape[0] == 1)
    assert channels_equal == (mask_shape[1] == 1)
    # something is dropped: fails only if none of the 64 seed positions of the fewest masks (one,
    # when both axes are shared) is a seed, probability (1 - gamma)**64 = 2e-4 (seed fixed)
    assert zero.any()


def test_all_dropped_gives_zeros_not_nan():
    x = np.ones((2, 3, 8, 8), np.float16)
    y = sdn.dropblock(x, 0.5, 3, "channels_first", gamma=1.0)
    assert y.dtype == np.float16 and np.all(y == 0) and not np.isnan(y).any()


@pytest.mark.parametrize("fn", [
    lambda x, **k: sdn.dropout(x, 0.4, **k),
    lambda x, **k: sdn.spatial_dropout(x, 0.4, **k),
    lambda x, **k: sdn.dropblock(x, 0.4, 3, **k),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_edges(fn, dtype):
    x = np.random.default_rng(0).normal(size=(3, 9, 9, 4)).astype(dtype)
    before = x.copy()
    assert fn(x, training=False) is x
    y = fn(x, seed=0)
    assert y.dtype == dtype and y.shape == x.shape and not np.isnan(y).any()
    np.testing.assert_array_equal(x, before)  # never modified
    fn(x, seed=0, inplace=True)
    np.testing.assert_array_equal(x, y)      # unless asked
    empty = np.zeros((0, 9, 9, 4), dtype)
    assert fn(empty, seed=0).shape == empty.shape


@pytest.mark.parametrize("fn", [
    lambda x, r: sdn.dropout(x, r, seed=0),
    lambda x, r: sdn.spatial_dropout(x, r, seed=0),
    lambda x, r: sdn.dropblock(x, r, 3, seed=0),
    lambda x, r: sdn.drop_path(x, r, seed=0),
    lambda x, r: sdn.drop_path(x, r, mode="batch", seed=0),
], ids=["dropout", "spatial_dropout", "dropblock", "drop_path", "drop_path-batch"])
def test_rate_zero_and_one(fn):
    """rate 0 returns the input itself, rate 1 zeros of its shape and dtype; x is untouched."""
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    before = x.copy()
    assert fn(x, 0.0) is x
    y = fn(x, 1.0)
    assert y.shape == x.shape and y.dtype == x.dtype and np.all(y == 0)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("fn", [
    lambda x: sdn.cutout(x, 3, seed=0),
    lambda x: sdn.drop_path(x, 0.3, seed=0),
    lambda x: sdn.drop_path(x, 0.3, mode="batch", seed=0),
], ids=["cutout", "drop_path", "drop_path-batch"])
def test_empty_batch(fn):
    empty = np.zeros((0, 8, 8, 3), np.float32)
    y = fn(empty)
    assert y.shape == empty.shape and y.dtype == empty.dtype


@pytest.mark.parametrize("shape, fmt", [
    ((2, 0, 8, 3), "channels_last"), ((2, 8, 0, 3), "channels_last"), ((2, 3, 8, 0), "channels_first"),
    ((2, 5, 0), "channels_last"), ((2, 3, 4, 0, 4), "channels_first"),   # an empty map
    ((2, 8, 8, 0), "channels_last"), ((2, 0, 8, 8), "channels_first"),    # zero channels
])
@pytest.mark.parametrize("share", [(), ("batch", "channels")])
@pytest.mark.parametrize("normalize", ["batch", "rate"])
def test_dropblock_on_an_empty_map_or_zero_channels(shape, fmt, share, normalize):
    """Nothing to drop: an empty array of x's shape and dtype (no error, no NaN warning)."""
    x = np.zeros(shape, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = sdn.dropblock(x, 0.3, 3, fmt, share=share, normalize=normalize, seed=0)
    assert y.shape == shape and y.dtype == x.dtype


def test_block_larger_than_map_is_spatial_dropout():
    x = np.ones((50, 7, 7, 8))
    u = np.random.default_rng(0).random((50, 1, 1, 8))
    y = sdn.dropblock(x, 0.3, 20, uniform=u, normalize="rate")
    ref = sdn.spatial_dropout(x, 0.3, uniform=u)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("call, exc, match", [
    (lambda x: sdn.dropblock(x, 1.1, 3), ValueError, r"rate must be in \[0, 1\]"),
    (lambda x: sdn.dropblock(x, 0.1, 0), ValueError, "block_size must be >= 1"),
    (lambda x: sdn.dropblock(x, 0.1, 3, "NCHW"), ValueError, "data_format must be one of"),
    (lambda x: sdn.dropblock(x, 0.1, 3, seeds="same"), ValueError, "seeds must be one of"),
    (lambda x: sdn.dropblock(x, 0.1, 3, share="pixels"), ValueError, "share must be one of"),
    (lambda x: sdn.dropblock(x, 0.1, 3, normalize="mean"), ValueError, "normalize must be one of"),
    (lambda x: sdn.dropblock(x[0, 0], 0.1, 3), ValueError, "rank 3, 4 or 5"),
    (lambda x: sdn.dropblock(x.astype(np.int32), 0.1, 3), TypeError, "floating-point"),
    (lambda x: sdn.dropblock(x, 0.1, 3, uniform=np.zeros((1, 2))), ValueError, "uniform must have shape"),
    (lambda x: sdn.dropout(x, 0.1, (2, 3)), ValueError, "noise_shape must have"),
    (lambda x: sdn.drop_path(x, 0.1, mode="layer"), ValueError, "mode must be one of"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.ones((2, 8, 8, 3)))


def test_cutout_patch_is_clipped_at_the_border():
    x = np.ones((3, 10, 10, 2))
    u = np.array([[0.0, 0.0], [0.55, 0.55], [0.99, 0.5]])   # centres (0,0), (5,5), (9,5)
    y = sdn.cutout(x, 4, uniform=u)
    zero = (y[..., 0] == 0)
    assert np.all((y == 0).all(axis=-1) == zero)  # same patch in every channel
    assert zero[0].sum() == 4 and zero[0, :2, :2].all()      # 2x2 survives of a 4x4 patch
    assert zero[1].sum() == 16 and zero[1, 3:7, 3:7].all()
    assert zero[2].sum() == 12 and zero[2, 7:, 3:7].all()
    assert sdn.cutout(x, 4, training=False) is x


def test_drop_path_per_sample_and_batch_axis():
    x = np.ones((6, 4, 8))   # sequence-first (L, N, D): the batch is axis 1
    u = np.array([0.9, 0.1, 0.6, 0.2]).reshape(1, 4, 1)
    y = sdn.drop_path(x, 0.5, batch_axis=1, uniform=u)
    np.testing.assert_array_equal(y[0, :, 0], [2, 0, 2, 0])
    assert np.all(y == y[:1, :, :1])
    yb = sdn.drop_path(x, 0.5, mode="batch", uniform=np.full((1, 1, 1), 0.2))
    assert np.all(yb == 0)


@pytest.mark.parametrize("bias", [True, False])
def test_dropconnect_rate_zero_and_one(bias):
    """rate 0 is the plain layer, rate 1 drops every weight (only the bias is left)."""
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(5, 7)), rng.normal(size=(7, 3)), rng.normal(size=3) if bias else None
    plain = x @ w + (b if bias else 0.0)
    np.testing.assert_array_equal(sdn.dropconnect_dense(x, w, b, 0.0, seed=0), plain)
    y = sdn.dropconnect_dense(x, w, b, 1.0, seed=0)
    assert y.shape == (5, 3)
    np.testing.assert_array_equal(y, np.broadcast_to(b if bias else 0.0, (5, 3)))


def test_dropconnect_is_unbiased_and_identity_at_inference():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(5, 7)), rng.normal(size=(7, 3)), rng.normal(size=3)
    np.testing.assert_allclose(sdn.dropconnect_dense(x, w, b, 0.3, training=False), x @ w + b)
    u = rng.random((7, 3))
    np.testing.assert_allclose(sdn.dropconnect_dense(x, w, b, 0.3, uniform=u),
                               x @ (w * (u >= 0.3) / 0.7) + b)
    n_draws = 4000
    mean = np.mean([sdn.dropconnect_dense(x, w, b, 0.3, seed=s) for s in range(n_draws)], axis=0)
    # Entry (i, j) is sum_k x_ik w_kj m_kj / (1 - r) + b_j with m_kj ~ Bernoulli(1 - r) i.i.d.;
    # m / (1 - r) has variance r / (1 - r), so one draw has variance ((x**2) @ (w**2)) r / (1 - r)
    # and the mean of n_draws independent draws a standard deviation sqrt of that / n_draws.
    # 5-sigma bound per entry (seeded, so deterministic).
    sd = np.sqrt((x ** 2) @ (w ** 2) * 0.3 / 0.7 / n_draws)
    assert np.all(np.abs(mean - (x @ w + b)) < 5 * sd)


@pytest.mark.parametrize("gamma", ["exact", "paper", 0.015])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
def test_the_sampler_gets_the_requested_gamma(monkeypatch, gamma, seeds):
    """Both paths draw their seeds with the gamma asked for (the drop-fraction tests cannot
    tell "exact" from "paper" at every setting): the sparse sampler and the reference mask."""
    from structdrop_tutorial import _sparse_seeds
    drawn = []
    real = _sparse_seeds.bernoulli_positions
    monkeypatch.setattr(_sparse_seeds, "bernoulli_positions",
                        lambda rng, n, g, *a, **k: drawn.append(g) or real(rng, n, g, *a, **k))
    x = np.random.default_rng(0).standard_normal((2, 14, 14, 3))
    want = sd.resolve_gamma(gamma, 0.15, (7, 7), (14, 14), seeds)
    sdn.dropblock(x, 0.15, 7, gamma=gamma, seeds=seeds, seed=0)
    assert drawn == [want]
    kept = []
    real_mask = sdn.dropblock_keep_mask
    monkeypatch.setattr(sdn, "dropblock_keep_mask",
                        lambda u, g, *a, **k: kept.append(g) or real_mask(u, g, *a, **k))
    grid = sd.seed_grid_shape(x.shape, (7, 7), "channels_last", seeds)
    sdn.dropblock(x, 0.15, 7, gamma=gamma, seeds=seeds, uniform=np.random.default_rng(0).random(grid))
    assert kept == [want]
