"""PyTorch functional API: agreement with the NumPy reference, the fast DropBlock path, edge cases.

DropBlock tests run on every path: ``"reference"`` passes ``uniform=`` noise (the dense path that
follows the NumPy reference step by step); the fast paths pass ``seed=`` (sparse seed sampling)
and paint the blocks either by index writes (``"fast-index"``: one index per block through a view
of overlapping windows; ``"fast-unit"``: one index per unit) or, where the layout allows, from
the single-seed table (``"fast-table"``); ``"fast"`` lets dropblock choose as it does for users.
``"triton"`` runs the CUDA path's Triton kernels on these CPU tensors in Triton's interpreter
(tests/conftest.py switches it on where there is no GPU; channels_first inputs with per-channel
masks, the rest dispatch to the tensor path as they would on a GPU): the row-word kernels where
rows fit a 64-bit word, the byte-mask ones elsewhere; ``"triton-bytes"`` the byte-mask kernels
everywhere.
"""
import os
import contextlib
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import structdrop_tutorial as sd
from structdrop_tutorial import numpy as sdn

torch = pytest.importorskip("torch")
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _fast, _paint, _triton  # noqa: E402

from helpers import (brute_force_keep_mask, five_sigma_fraction_bound,  # noqa: E402
                     interpreted_bfloat16)

FORMATS = ["channels_first", "channels_last"]
TRITON_ON_CPU = _triton.has_triton() and os.environ.get("TRITON_INTERPRET") == "1"
PATHS = ["reference", "fast", "fast-index", "fast-unit", "fast-table"] + [
    pytest.param(path, marks=pytest.mark.skipif(
        not TRITON_ON_CPU, reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py)"))
    for path in ("triton", "triton-bytes")]


@contextlib.contextmanager
def painter(path):
    """Force the fast path's painter: index writes only (whole blocks through overlapping
    windows, or unit by unit), the table wherever it applies, or the Triton kernels
    (interpreted) wherever they apply: row words where rows fit a word, else bytes
    ("triton"), or bytes everywhere ("triton-bytes")."""
    saved = (_paint.TABLE_MAX_BYTES, _paint.TABLE_MAX_SEEDS_PER_MAP, _triton.FORCE,
             _triton.TILE_UNITS, _paint.WINDOW_WRITES, _triton.ROW_WORDS)
    if path in ("fast-index", "fast-unit"):
        _paint.TABLE_MAX_BYTES = 0
        _paint.WINDOW_WRITES = path == "fast-index"
    elif path == "fast-table":
        _paint.TABLE_MAX_SEEDS_PER_MAP = math.inf
    elif path.startswith("triton"):  # many maps per program: fewer interpreted programs
        _triton.FORCE, _triton.TILE_UNITS = True, 1 << 14
        _triton.ROW_WORDS = path == "triton"
    try:
        yield
    finally:
        (_paint.TABLE_MAX_BYTES, _paint.TABLE_MAX_SEEDS_PER_MAP, _triton.FORCE,
         _triton.TILE_UNITS, _paint.WINDOW_WRITES, _triton.ROW_WORDS) = saved
    assert not _triton._FAILED, _triton._FAILED  # the kernels ran, no silent fallback
    assert not _triton._ROWS_FAILED, _triton._ROWS_FAILED
    assert _paint.WINDOW_WRITES, "window writes were turned off (PyTorch refused them)"


def layout(spatial, fmt, batch=2, ch=3):
    return (batch, ch) + tuple(spatial) if fmt == "channels_first" else (batch,) + tuple(spatial) + (ch,)


def run_dropblock(path, x, rate, block, fmt="channels_first", seed=0, **kw):
    """dropblock on the chosen path; the reference path draws its noise with NumPy."""
    if path == "reference" and kw.get("training", True) and 0 < rate < 1:
        spatial = sd.spatial_dims(tuple(x.shape), fmt)
        if 0 not in spatial:
            blk = sd.clip_block(block, spatial)
            grid = sd.seed_grid_shape(tuple(x.shape), blk, fmt, kw.get("seeds", "valid"),
                                      kw.get("share", ()))
            kw["uniform"] = np.random.default_rng(seed).random(grid)
            return sdt.dropblock(x, rate, block, fmt, **kw)
    with painter(path):
        return sdt.dropblock(x, rate, block, fmt, seed=seed, **kw)


# --------------------------------------------------------------------------- same as NumPy
@settings(max_examples=30, deadline=None)
@given(n_spatial=st.integers(1, 3), data=st.data())
def test_dropblock_matches_numpy_given_uniform(n_spatial, data):
    spatial = tuple(data.draw(st.lists(st.integers(1, 9), min_size=n_spatial, max_size=n_spatial)))
    block = tuple(data.draw(st.lists(st.integers(1, 10), min_size=n_spatial, max_size=n_spatial)))
    fmt = data.draw(st.sampled_from(FORMATS))
    seeds = data.draw(st.sampled_from(["valid", "padded"]))
    share = data.draw(st.sampled_from([(), "channels", "batch", ("batch", "channels")]))
    normalize = data.draw(st.sampled_from(["batch", "rate"]))
    rate = data.draw(st.sampled_from([0.05, 0.2, 0.5]))
    x = np.random.default_rng(0).normal(size=layout(spatial, fmt))
    blk = sd.clip_block(block, spatial)
    grid = sd.seed_grid_shape(x.shape, blk, fmt, seeds, share)
    u = np.random.default_rng(1).random(grid)
    kw = dict(seeds=seeds, share=share, normalize=normalize, uniform=u)
    if seeds == "padded" and any(n + b - 1 - b + 1 < b for n, b in zip(spatial, blk)):
        return  # not reachable: padded grids always fit
    ref = sdn.dropblock(x, rate, block, fmt, **kw)
    got = sdt.dropblock(torch.from_numpy(x), rate, block, fmt, **kw)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=0)
    keep_ref = sdn.dropblock_keep_mask(u, 0.1, blk, fmt, seeds)
    keep = sdt.dropblock_keep_mask(torch.from_numpy(u), 0.1, blk, fmt, seeds)
    assert keep.dtype == torch.bool
    np.testing.assert_array_equal(keep.numpy(), keep_ref)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("spatial", [(7,), (6, 5), (3, 4, 5)])
def test_dropout_and_spatial_dropout_match_numpy(fmt, spatial):
    x = np.random.default_rng(2).normal(size=layout(spatial, fmt, 4, 5))
    u = np.random.default_rng(3).random(sd.noise_shape("spatial", x.shape, fmt))
    np.testing.assert_allclose(sdt.spatial_dropout(torch.from_numpy(x), 0.4, fmt, uniform=u).numpy(),
                               sdn.spatial_dropout(x, 0.4, fmt, uniform=u))
    u2 = np.random.default_rng(4).random(x.shape)
    np.testing.assert_allclose(sdt.dropout(torch.from_numpy(x), 0.4, uniform=u2).numpy(),
                               sdn.dropout(x, 0.4, uniform=u2))
    ns = (None,) + (1,) * (x.ndim - 1)
    u3 = np.random.default_rng(5).random((x.shape[0],) + (1,) * (x.ndim - 1))
    np.testing.assert_allclose(sdt.dropout(torch.from_numpy(x), 0.3, ns, uniform=u3).numpy(),
                               sdn.dropout(x, 0.3, ns, uniform=u3))


def test_family_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 9, 8))
    u = rng.random((4, 2))
    for size in (4, 3, (2, 5)):
        np.testing.assert_allclose(sdt.cutout(torch.from_numpy(x), size, uniform=u, fill=0.5).numpy(),
                                   sdn.cutout(x, size, "channels_first", uniform=u, fill=0.5))
    up = rng.random((4, 1, 1, 1))
    for kw in ({}, {"scale": False}):
        np.testing.assert_allclose(sdt.drop_path(torch.from_numpy(x), 0.3, uniform=up, **kw).numpy(),
                                   sdn.drop_path(x, 0.3, uniform=up, **kw))
    ub = rng.random((1, 1, 1, 1))
    np.testing.assert_allclose(sdt.drop_path(torch.from_numpy(x), 0.3, mode="batch", uniform=ub).numpy(),
                               sdn.drop_path(x, 0.3, mode="batch", uniform=ub))
    xd, w, b, uw = rng.normal(size=(5, 6)), rng.normal(size=(6, 2)), rng.normal(size=2), rng.random((6, 2))
    got = sdt.dropconnect_dense(torch.from_numpy(xd), torch.from_numpy(w), torch.from_numpy(b), 0.3,
                                uniform=uw)
    np.testing.assert_allclose(got.numpy(), sdn.dropconnect_dense(xd, w, b, 0.3, uniform=uw), rtol=1e-12)


def test_bernoulli_helpers():
    u = np.random.default_rng(0).random((50,))
    np.testing.assert_array_equal(sdt.bernoulli_compare(torch.from_numpy(u), 0.3).numpy(),
                                  sdn.bernoulli_compare(u, 0.3))
    np.testing.assert_array_equal(sdt.bernoulli_relu_sign(torch.from_numpy(u), 0.3).numpy(),
                                  sdn.bernoulli_relu_sign(u, 0.3))


# --------------------------------------------------------------------------- the fast path's mask
MASK_CASES = [((14, 14), 7), ((9, 13), (3, 6)), ((12,), 5), ((12,), 2), ((5, 6, 7), (3, 2, 4)),
              ((8, 8), (1, 8)), ((6,), 1), ((4, 4), 4), ((16, 16), 8)]


@pytest.mark.parametrize("share", [(), "channels", ("batch", "channels")])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("spatial, block", MASK_CASES)
def test_fast_painters_equal_keep_mask(spatial, block, fmt, share, monkeypatch):
    """For the same seed positions, the fast painters give exactly dropblock_keep_mask's mask."""
    x_shape = layout(spatial, fmt, 3, 4)
    blk = sd.clip_block(block, spatial)
    axes = sd.spatial_axes(len(x_shape), fmt)
    for seeds in ("valid", "padded"):
        grid = sd.seed_grid_shape(x_shape, blk, fmt, seeds, share)
        flat = _fast.bernoulli_positions(math.prod(grid), 0.1, torch.Generator().manual_seed(1))
        u = torch.ones(math.prod(grid), dtype=torch.float64)
        u[flat] = 0.0
        u = u.view(grid)
        ref = ~sdt.dropblock_keep_mask(u, 0.05, blk, fmt, seeds)
        for windows in (True, False):  # whole blocks through overlapping windows; unit writes
            with monkeypatch.context() as m:
                m.setattr(_paint, "WINDOW_WRITES", windows)
                assert torch.equal(_paint.seeds_to_dropped(flat, grid, axes, blk, spatial, seeds), ref)
                assert torch.equal(_paint.seeds_to_dropped(flat, grid, axes, blk, spatial, seeds,
                                                           keep=True), ~ref)
                if fmt == "channels_first":  # the table painter needs the spatial axes last
                    got = _paint.seeds_to_keep_from_table(flat, grid, axes, blk, spatial, seeds)
                    assert got.shape == ref.shape and torch.equal(got, ~ref)
        if seeds == "valid":
            assert torch.equal(_paint.seeds_to_dropped_separable(flat, grid, axes, blk, spatial), ref)


def test_keep_mask_equals_brute_force():
    rng = np.random.default_rng(7)
    for spatial, block in [((9, 13), (3, 6)), ((10,), (4,)), ((5, 6, 7), (3, 2, 4))]:
        for seeds in ("valid", "padded"):
            grid = tuple(n - b + 1 if seeds == "valid" else n + b - 1 for n, b in zip(spatial, block))
            u = rng.random((1, 1) + grid)
            keep = sdt.dropblock_keep_mask(torch.from_numpy(u), 0.1, block, "channels_first", seeds)
            np.testing.assert_array_equal(keep[0, 0].numpy(), brute_force_keep_mask(u[0, 0] < 0.1, block, seeds))


def test_fast_dropblock_output_is_mask_times_scale():
    """The fast path's output is x * keep * (numel / kept) with a valid DropBlock keep mask."""
    x = torch.randn(4, 6, 12, 12, dtype=torch.float64)
    y = sdt.dropblock(x, 0.2, 3, seed=3)
    ones = sdt.dropblock(torch.ones_like(x), 0.2, 3, seed=3)
    torch.testing.assert_close(y, x * ones, rtol=1e-14, atol=0)
    keep = ones != 0
    scale = ones[keep].unique()
    assert scale.numel() == 1
    assert scale.item() == pytest.approx(keep.numel() / keep.sum().item(), rel=1e-14)
    # every dropped unit lies in a 3x3 all-dropped square that fits in the map (valid seeds)
    dropped = (~keep).double()
    full = torch.nn.functional.avg_pool2d(dropped.view(-1, 1, 12, 12), 3, 1) > 1 - 1e-9
    grown = torch.nn.functional.max_pool2d(torch.nn.functional.pad(full.double(), (2, 2, 2, 2)), 3, 1) > 0
    assert torch.equal(grown.view_as(keep), ~keep)


# --------------------------------------------------------------------------- statistics
CHI2_9_FIVE_SIGMA = 47.73166  # scipy.stats.chi2.isf(scipy.stats.norm.sf(5), 9)


@pytest.mark.parametrize("p", [0.002, 0.02, 0.2])
def test_bernoulli_positions_are_iid_bernoulli(p):
    """Seed counts per map match Binomial(positions, p); positions are uniform over each map.

    Bounds are 5 sigma: the total count of T = maps * m trials has sd sqrt(T p (1 - p)); the mean
    of the positions' offsets within a map (uniform on 0..m-1) has sd sqrt((m^2 - 1) / 12 / K);
    the sample variance of the per-map counts (i.i.d. Binomial(m, p)) is checked against
    var = m p (1 - p) with the exact sd of a sample variance of n = maps i.i.d. values,
    var * sqrt(2 / (n - 1) + kurt / n), kurt = (1 - 6 p (1 - p)) / var the binomial's excess
    kurtosis (normal approximation of the sample variance over 4000 maps); the chi-square of
    the offsets over 10 equal bins is below chi-square(9)'s upper 5-sigma quantile.
    """
    maps, m = 4000, 400
    total = maps * m
    pos = _fast.bernoulli_positions(total, p, torch.Generator().manual_seed(11))
    assert torch.all(pos[1:] > pos[:-1]) and pos.min() >= 0 and pos.max() < total
    k = pos.numel()
    assert abs(k - total * p) <= 5 * math.sqrt(total * p * (1 - p))
    offsets = (pos % m).double()
    assert abs(offsets.mean().item() - (m - 1) / 2) <= 5 * math.sqrt((m * m - 1) / 12 / k)
    counts = torch.bincount(pos // m, minlength=maps).double()
    var = m * p * (1 - p)
    kurt = (1 - 6 * p * (1 - p)) / var  # excess kurtosis of Binomial(m, p)
    assert abs(counts.var().item() - var) <= 5 * var * math.sqrt(2 / (maps - 1) + kurt / maps)
    # also: one position per trial, so a chi-square over 10 equal bins of the offsets
    hist = torch.bincount((offsets * 10 / m).long(), minlength=10).double()
    chi2 = (((hist - k / 10) ** 2) / (k / 10)).sum().item()
    # chi-square(9) upper quantile at the normal 5-sigma tail, 2.87e-7: computed once as
    # scipy.stats.chi2.isf(scipy.stats.norm.sf(5), 9) = 47.73166 (scipy is not a test dependency)
    assert chi2 < CHI2_9_FIVE_SIGMA


def test_bernoulli_positions_top_up_loop_and_edges():
    g = torch.Generator().manual_seed(0)
    pos = _fast.bernoulli_positions(100000, 0.01, g, batch=7)  # forces many top-ups
    assert torch.all(pos[1:] > pos[:-1]) and pos.max() < 100000
    assert abs(pos.numel() - 1000) <= 5 * math.sqrt(100000 * 0.01 * 0.99)
    assert _fast.bernoulli_positions(0, 0.5).numel() == 0
    assert _fast.bernoulli_positions(10, 0.0).numel() == 0
    assert torch.equal(_fast.bernoulli_positions(10, 1.0), torch.arange(10))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("spatial, block", [((14, 14), 7), ((9, 12), (3, 5)), ((20,), 4)])
def test_drop_fraction_matches_expected(path, seeds, spatial, block):
    """Realized drop fraction vs sd.expected_drop_fraction within a 5-sigma bound.

    The maps (one per sample and channel) are independent, each with a drop fraction in
    [0, 1] of mean ``expected``; see helpers.five_sigma_fraction_bound.
    """
    rate = 0.15
    x = torch.ones(layout(spatial, "channels_first", 50, 40))
    y = run_dropblock(path, x, rate, block, seeds=seeds, normalize="rate", seed=123)
    frac = (y == 0).double().mean().item()
    g = sd.exact_gamma(rate, sd.clip_block(block, spatial), spatial, seeds)
    expected = sd.expected_drop_fraction(g, block, spatial, seeds)
    assert expected == pytest.approx(rate, abs=1e-9)
    assert abs(frac - expected) <= five_sigma_fraction_bound(expected, 50 * 40)


@pytest.mark.parametrize("seeds", ["valid", "padded"])
def test_per_unit_drop_probability_map(seeds):
    """Each unit's drop frequency over many maps follows sd.drop_probability_map (5 sigma, fast path)."""
    spatial, block, gamma = (8, 8), 3, 0.05
    x = torch.ones(400, 50, *spatial)
    y = sdt.dropblock(x, 0.5, block, gamma=gamma, seeds=seeds, normalize="rate", seed=5)
    freq = (y == 0).double().mean(dim=(0, 1)).numpy()
    prob = sd.drop_probability_map(gamma, block, spatial, seeds)
    bound = 5 * np.sqrt(prob * (1 - prob) / 20000) + 1e-12
    assert np.all(np.abs(freq - prob) <= bound)


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_drawn_noise_equals_given_noise(dtype, default):
    """Drawn noise (the small mask compared and scaled in place when the draw has x's dtype) gives
    bit for bit what the same draw passed as ``uniform`` gives, inplace too, for every dtype and
    either default dtype; rate 0.3, whose scale has no exact 16-bit value."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        for fmt in FORMATS:
            x = torch.randn(layout((4, 5), fmt, 6, 7), dtype=torch.float32).to(dtype)
            shape = sd.noise_shape("spatial", tuple(x.shape), fmt)
            u = torch.rand(shape, generator=torch.Generator().manual_seed(8))
            assert u.dtype == default
            expected = sdt.spatial_dropout(x, 0.3, fmt, uniform=u)
            got = sdt.spatial_dropout(x, 0.3, fmt, seed=8)
            assert got.dtype == dtype and torch.equal(got, expected)
            assert 0 < int((got == 0).sum()) < got.numel()
            x2 = x.clone()
            assert sdt.spatial_dropout(x2, 0.3, fmt, seed=8, inplace=True) is x2
            assert torch.equal(x2, expected)
            ns = tuple(shape)
            assert torch.equal(sdt.dropout(x, 0.3, ns, seed=8), sdt.dropout(x, 0.3, ns, uniform=u))
    finally:
        torch.set_default_dtype(previous)


def test_spatial_dropout_fraction():
    x = torch.ones(200, 100, 3, 3)
    y = sdt.spatial_dropout(x, 0.3, seed=1)
    per_channel = (y == 0).all(dim=(2, 3)) | (y != 0).all(dim=(2, 3))
    assert per_channel.all()
    frac = (y[:, :, 0, 0] == 0).double().mean().item()
    assert abs(frac - 0.3) <= five_sigma_fraction_bound(0.3, 20000)


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("path", PATHS)
def test_identity_and_zeros(path):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert run_dropblock(path, x, 0.0, 3) is x
    assert run_dropblock(path, x, 0.5, 3, training=False) is x
    assert sdt.dropout(x, 0.0) is x and sdt.spatial_dropout(x, 0.4, training=False) is x
    assert sdt.drop_path(x, 0.4, training=False) is x and sdt.cutout(x, 3, training=False) is x
    for fn in (lambda t: run_dropblock(path, t, 1.0, 3), lambda t: sdt.dropout(t, 1.0),
               lambda t: sdt.spatial_dropout(t, 1.0), lambda t: sdt.drop_path(t, 1.0)):
        y = fn(x)
        assert torch.equal(y, torch.zeros_like(x))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("fn", [
    lambda x: sdt.spatial_dropout(x, 0.0, training=True, seed=0),
    lambda x: sdt.spatial_dropout(x, 0.0, "channels_last", training=True, seed=0),
    lambda x: sdt.drop_path(x, 0.0, training=True, seed=0),
    lambda x: sdt.drop_path(x, 0.0, mode="batch", training=True, seed=0),
], ids=["spatial_dropout", "spatial_dropout-channels_last", "drop_path", "drop_path-batch"])
def test_rate_zero_in_training_is_identity(fn):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert fn(x) is x


@pytest.mark.parametrize("fn", [
    lambda x: sdt.dropout(x, 0.3, seed=0),
    lambda x: sdt.dropout(x, 0.3, (None, None, 1, 1), seed=0),
    lambda x: sdt.drop_path(x, 0.3, seed=0),
    lambda x: sdt.drop_path(x, 0.3, mode="batch", seed=0),
], ids=["dropout", "dropout-noise_shape", "drop_path", "drop_path-batch"])
def test_empty_batch_dropout_and_drop_path(fn):
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = fn(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == x.shape


@pytest.mark.parametrize("bias", [True, False])
def test_dropconnect_rate_zero_and_one(bias):
    """rate 0 is the plain layer, rate 1 drops every weight (only the bias is left)."""
    rng = np.random.default_rng(0)
    x, w = torch.from_numpy(rng.normal(size=(5, 7))), torch.from_numpy(rng.normal(size=(7, 3)))
    b = torch.from_numpy(rng.normal(size=3)) if bias else None
    plain = x @ w + b if bias else x @ w
    assert torch.equal(sdt.dropconnect_dense(x, w, b, 0.0, seed=0), plain)
    y = sdt.dropconnect_dense(x, w, b, 1.0, seed=0)
    assert torch.equal(y, b.expand(5, 3) if bias else torch.zeros(5, 3, dtype=x.dtype))


@pytest.mark.parametrize("call, name", [
    (lambda x: sdt.dropblock(x, 1.5, 3), "rate"),
    (lambda x: sdt.dropblock(x, -0.1, 3), "rate"),
    (lambda x: sdt.dropblock(x, 0.1, 0), "block_size"),
    (lambda x: sdt.dropblock(x, 0.1, (3, 3, 3)), "block_size"),
    (lambda x: sdt.dropblock(x, 0.1, 3, "NCHW"), "data_format"),
    (lambda x: sdt.dropblock(x, 0.1, 3, seeds="same"), "seeds"),
    (lambda x: sdt.dropblock(x, 0.1, 3, share="height"), "share"),
    (lambda x: sdt.dropblock(x, 0.1, 3, normalize="none"), "normalize"),
    (lambda x: sdt.dropblock(x, 0.1, 3, gamma="auto"), "gamma"),
    (lambda x: sdt.dropblock(x[0, 0], 0.1, 3), "rank"),
    (lambda x: sdt.spatial_dropout(x[0, 0], 0.1), "rank"),
    (lambda x: sdt.spatial_dropout(x, 2.0), "rate"),
    (lambda x: sdt.spatial_dropout(x, 0.1, "NHWC"), "data_format"),
    (lambda x: sdt.dropout(x, 0.1, (2, 2, 1, 1)), "noise_shape"),
    (lambda x: sdt.cutout(x, 0), "size"),
    (lambda x: sdt.drop_path(x, 0.1, mode="layer"), "mode"),
    (lambda x: sdt.drop_path(x, 0.1, batch_axis=4), "batch_axis"),
    (lambda x: sdt.dropblock(x, 0.1, 3, uniform=np.zeros((1, 1, 1, 1))), "uniform"),
])
def test_value_errors_name_the_argument(call, name):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=name):
        call(x)


def test_type_errors():
    xi = torch.ones(2, 3, 8, 8, dtype=torch.int64)
    for fn in (lambda: sdt.dropblock(xi, 0.1, 3), lambda: sdt.dropout(xi, 0.1),
               lambda: sdt.spatial_dropout(xi, 0.1), lambda: sdt.cutout(xi, 3),
               lambda: sdt.drop_path(xi, 0.1)):
        with pytest.raises(TypeError, match="floating-point"):
            fn()
    with pytest.raises(TypeError, match="seed"):
        sdt.dropblock(torch.ones(2, 3, 8, 8), 0.1, 3, seed="abc")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_block_larger_than_map_is_clipped(path, fmt):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=layout((4, 6), fmt, 20, 3)))
    y = run_dropblock(path, x, 0.3, (9, 9), fmt)
    assert y.shape == x.shape
    for sample in range(20):
        for c in range(3):
            m = y[sample, c] if fmt == "channels_first" else y[sample, ..., c]
            zero = m == 0
            assert zero.all() or not zero.any()  # a clipped block covers the whole 4x6 map
    dropped_maps = float((y == 0).double().mean())
    assert 0 < dropped_maps < 1  # 60 maps at rate 0.3: some dropped, some kept (seeded)
    if path == "reference":
        blk = sd.clip_block((9, 9), (4, 6))
        u = np.random.default_rng(0).random(sd.seed_grid_shape(x.shape, blk, fmt))
        np.testing.assert_allclose(y.numpy(), sdn.dropblock(x.numpy(), 0.3, (9, 9), fmt, uniform=u))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("block", [2, 4, (2, 6)])
def test_even_blocks(path, block):
    x = torch.ones(8, 4, 10, 11, dtype=torch.float64)
    y = run_dropblock(path, x, 0.3, block, normalize="rate")
    assert y.shape == x.shape
    blk = sd.clip_block(block, (10, 11))
    dropped = (y == 0).double().view(-1, 1, 10, 11)
    full = torch.nn.functional.avg_pool2d(dropped, blk, 1) > 1 - 1e-9
    pad = (blk[1] - 1, blk[1] - 1, blk[0] - 1, blk[0] - 1)
    grown = torch.nn.functional.max_pool2d(torch.nn.functional.pad(full.double(), pad), blk, 1) > 0
    assert torch.equal(grown, dropped > 0)
    assert 0 < float(dropped.mean()) < 1  # blocks were painted (seeded)


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch_and_empty_map(path):
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8)]:
        x = torch.randn(shape)
        y = run_dropblock(path, x, 0.2, 3)
        assert y.shape == x.shape
    assert sdt.spatial_dropout(torch.randn(0, 3, 4, 4), 0.2).shape == (0, 3, 4, 4)
    assert sdt.cutout(torch.randn(0, 3, 4, 4), 2).shape == (0, 3, 4, 4)


def rounded_once(path, x, rate, block, normalize):
    """What dropblock of a 16-bit x must return on ``path``: the mask of the same seed (read
    off a float64 input of ones), the float32 scale, the float32 product rounded once."""
    keep = run_dropblock(path, torch.ones(x.shape, dtype=torch.float64), rate, block,
                         normalize=normalize) != 0
    f32 = torch.float32
    scale = (torch.tensor(keep.numel(), dtype=f32) / torch.tensor(int(keep.sum()), dtype=f32)
             if normalize == "batch" else torch.tensor(1 / (1 - rate), dtype=f32))
    p = x.float() * torch.where(keep, scale, torch.zeros_like(scale))
    if x.dtype == torch.bfloat16 and path.startswith("triton"):  # Triton's interpreter
        return interpreted_bfloat16(p)
    return p.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_product_in_chunks_is_rounded_once(dtype):
    """Above 2 * CHUNK units the CPU product runs chunk by chunk: still rounded once."""
    x = torch.randn(4, 64, 64, 72).to(dtype)
    assert x.numel() > 2 * _fast.CHUNK
    for normalize in ("batch", "rate"):  # 1 / (1 - 0.3) has no exact 16-bit value
        y = run_dropblock("fast", x, 0.3, 7, normalize=normalize)
        assert torch.equal(y, rounded_once("fast", x, 0.3, 7, normalize))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(path, dtype):
    """Every dtype is kept; float16 and bfloat16 outputs are exactly the float32 product
    x * keep * float32(scale) rounded once (a scale rounded to 16 bits first would fail)."""
    x = torch.randn(4, 3, 9, 9).to(dtype)
    for normalize in ("batch", "rate"):  # 1 / (1 - 0.3) has no exact 16-bit value
        y = run_dropblock(path, x, 0.3, 3, normalize=normalize)
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
        if dtype in (torch.float16, torch.bfloat16):
            assert torch.equal(y, rounded_once(path, x, 0.3, 3, normalize))
    for y in (sdt.spatial_dropout(x, 0.3, seed=0), sdt.dropout(x, 0.3, seed=0), sdt.cutout(x, 3, seed=0),
              sdt.drop_path(x, 0.3, seed=0)):
        assert y.dtype == dtype


@pytest.mark.parametrize("path", PATHS)
def test_input_not_modified_unless_inplace(path):
    x = torch.randn(4, 3, 9, 9)
    before = x.clone()
    y = run_dropblock(path, x, 0.3, 3)
    sdt.spatial_dropout(x, 0.3, seed=0)
    sdt.dropout(x, 0.3, seed=0)
    sdt.cutout(x, 3, seed=0)
    sdt.drop_path(x, 0.3, seed=0)
    assert torch.equal(x, before)
    z = run_dropblock(path, x, 0.3, 3, inplace=True)
    assert z.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, y)
    x2 = before.clone()
    y2 = sdt.spatial_dropout(x2, 0.5, seed=1, inplace=True)
    assert y2.data_ptr() == x2.data_ptr()
    torch.testing.assert_close(y2, sdt.spatial_dropout(before, 0.5, seed=1))


@pytest.mark.parametrize("path", PATHS)
def test_all_dropped_batch_normalization_gives_zeros(path):
    x = torch.randn(2, 3, 6, 6, dtype=torch.float16, requires_grad=True)
    y = run_dropblock(path, x, 0.5, 3, gamma=1.0)
    assert torch.equal(y, torch.zeros_like(y))
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert torch.isfinite(g).all() and torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("path", PATHS)
def test_seed_reproducible_and_generator(path):
    x = torch.randn(4, 3, 12, 12)
    a = run_dropblock(path, x, 0.3, 3, seed=7)
    b = run_dropblock(path, x, 0.3, 3, seed=7)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sdt.dropblock(x, 0.3, 3, seed=g1), sdt.dropblock(x, 0.3, 3, seed=g2))
    assert not torch.equal(sdt.dropblock(x, 0.3, 3, seed=g1), sdt.dropblock(x, 0.3, 3, seed=g1))


# --------------------------------------------------------------------------- gradients, memory
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("normalize", ["batch", "rate"])
def test_gradient_is_mask_times_scale(path, normalize):
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    fn = lambda t: run_dropblock(path, t, 0.3, 3, normalize=normalize, seed=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    mask = fn(torch.ones_like(x))
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    torch.testing.assert_close(g, mask.detach(), rtol=0, atol=0)


def test_gradcheck_family():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    for fn in (lambda t: sdt.spatial_dropout(t, 0.4, seed=1), lambda t: sdt.dropout(t, 0.4, seed=1),
               lambda t: sdt.cutout(t, 3, seed=1), lambda t: sdt.drop_path(t, 0.4, seed=1),
               lambda t: sdt.dropblock(t, 0.3, 2, seeds="padded", share="channels", seed=1)):
        assert torch.autograd.gradcheck(fn, (x,))
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    xd = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: sdt.dropconnect_dense(a, k, None, 0.3, seed=2), (xd, w))


def test_backward_keeps_at_most_one_byte_per_element():
    x = torch.randn(4, 8, 14, 14, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    for fn in (lambda t: sdt.dropblock(t, 0.1, 7, seed=0),
               lambda t: sdt.dropblock(t, 0.1, 7, uniform=np.random.default_rng(0).random((4, 8, 8, 8)))):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        nbytes = sum(t.untyped_storage().nbytes() for t in saved if t.data_ptr() != x.data_ptr())
        assert nbytes <= x.numel() + 64  # the bool mask plus a 0-d scale tensor


def test_torch_compile_traces():
    """torch.compile with the eager backend (dynamo capture and graph breaks, a few seconds).

    Inductor compilation of the same function takes over a minute on 2 shared cores, so it is
    covered by test_torch_compile_inductor, which runs only with STRUCTDROP_SLOW_TESTS=1.
    """
    x = torch.randn(2, 3, 10, 10)
    u = torch.from_numpy(np.random.default_rng(0).random((2, 3, 8, 8)))

    def f(t):
        return sdt.dropblock(t * 2, 0.2, 3, uniform=u) + sdt.spatial_dropout(t, 0.3, seed=1)

    compiled = torch.compile(f, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


@pytest.mark.parametrize("make", [lambda: sdt.SpatialDropout(0.3), lambda: sdt.DropPath(0.3),
                                  lambda: sdt.Cutout(4), lambda: sdt.DropBlock2d(0.1, 3)],
                         ids=["SpatialDropout", "DropPath", "Cutout", "DropBlock2d"])
def test_torch_compile_batch_size_changes(make):
    """A compiled layer sees a new batch size (the last, smaller batch of an epoch): dynamo then
    traces the sizes as symbols, where rand(generator=None) used to fail. Drawn from the default
    generator, the compiled layer gives the eager layer's output for the same seed."""
    layer = make().train()
    compiled = torch.compile(layer, backend="eager")
    for n in (4, 3, 5):
        x = torch.randn(n, 4, 8, 8)
        torch.manual_seed(n)
        y = compiled(x)
        torch.manual_seed(n)
        torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


def test_import_leaves_dynamo_unloaded():
    """The untraced DropBlock wrapper loads torch._dynamo on its first use, not at import (that
    costs about a second)."""
    import subprocess
    import sys
    code = ("import sys, structdrop_tutorial.torch as t; "
            "assert 'torch._dynamo' not in sys.modules, 'dynamo loaded at import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-1000:]


@pytest.mark.skipif(not hasattr(getattr(torch, "compiler", None), "is_compiling"),
                    reason="torch < 2.3: the package cannot tell that dynamo is tracing")
def test_torch_compile_runs_dropblock_untraced():
    """Under torch.compile, dropblock's sampler runs eagerly in a graph break (traced, the CPU
    sampler recompiled for every new seed count, up to dynamo's limit): each compiled region is
    compiled once, and the compiled function gives the eager masks for the same seed."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    x = torch.randn(4, 3, 12, 12)

    def f(t):
        return sdt.dropblock(t * 2, 0.2, 3) + 1

    compiled = torch.compile(f, backend=counter)
    for step in range(6):
        torch.manual_seed(step)
        y = compiled(x)
        torch.manual_seed(step)
        torch.testing.assert_close(y, f(x), rtol=0, atol=0)
    assert counter.frame_count == 2  # the multiply before the break, the addition after it
    torch._dynamo.reset()


@pytest.mark.skipif(not __import__("os").environ.get("STRUCTDROP_SLOW_TESTS"),
                    reason="slow (>60 s on 2 cores): set STRUCTDROP_SLOW_TESTS=1")
def test_torch_compile_inductor():
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    layer = sdt.DropBlock2d(0.2, 3, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(layer)
    y = compiled(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None


def test_functions_pickle_by_reference():
    assert pickle.loads(pickle.dumps(sdt.dropblock)) is sdt.dropblock


def test_rate_one_inplace_keeps_graph():
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = a * 1
    out = sdt.dropblock(b, 1.0, 2, inplace=True)
    assert out.data_ptr() == b.data_ptr() and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    x = torch.randn(2, 3, 4, 4)
    assert sdt.dropout(x, 1.0, inplace=True) is x and torch.equal(x, torch.zeros_like(x))


@pytest.mark.parametrize("path", PATHS)
def test_inplace_into_a_leaf_raises_before_writing(path):
    """inplace=True on a leaf that requires grad (or a view of one) raises PyTorch's own error
    before the input is touched, as F.dropout does (the masks used to be written first)."""
    leaf = (torch.rand(2, 3, 8, 8) + 1).requires_grad_()
    before = leaf.detach().clone()
    module = sdt.DropBlock2d(0.3, 3, inplace=True)
    calls = {"dropblock": lambda t: run_dropblock(path, t, 0.3, 3, inplace=True),
             "dropblock rate 1": lambda t: run_dropblock(path, t, 1.0, 3, inplace=True),
             "dropout": lambda t: sdt.dropout(t, 0.3, seed=0, inplace=True),
             "dropout rate 1": lambda t: sdt.dropout(t, 1.0, inplace=True),
             "spatial_dropout": lambda t: sdt.spatial_dropout(t, 0.3, seed=0, inplace=True),
             "DropBlock2d": module}
    for name, call in calls.items():
        for target, message in ((leaf, "^a leaf Variable"), (leaf[1:], "^a view of a leaf")):
            with painter(path), pytest.raises(RuntimeError, match=message):
                call(target)
            assert torch.equal(leaf.detach(), before), name
    # nothing is written in evaluation or at rate 0, so nothing is refused (as in PyTorch)
    assert run_dropblock(path, leaf, 0.0, 3, inplace=True) is leaf
    assert sdt.dropout(leaf, 0.3, training=False, inplace=True) is leaf
    with torch.no_grad():  # where autograd is off, writing into the leaf is the caller's choice
        run_dropblock(path, leaf, 0.3, 3, inplace=True)
    assert not torch.equal(leaf.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_chunked_masked_product_matches_plain(dtype, monkeypatch):
    """Large CPU inputs take the chunked product; forward and backward equal x * keep * s."""
    monkeypatch.setattr(_fast, "CHUNK", 1 << 16)  # small chunks: several full ones and a tail
    x = torch.randn(3, 8, 150, 150).to(dtype).requires_grad_()
    assert x.numel() > 2 * _fast.CHUNK
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) > 0.2
    y = _fast.masked_scale(x, keep, 1.25)
    ref = x.detach() * keep.to(dtype) * 1.25
    torch.testing.assert_close(y.detach(), ref, rtol=0, atol=0)
    g = torch.randn(x.shape).to(dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * keep.to(dtype) * 1.25, rtol=0, atol=0)
    x2 = x.detach().clone()
    out = _fast.masked_scale(x2, keep, 1.25, inplace=True)
    assert out.data_ptr() == x2.data_ptr()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_double_backward():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: sdt.dropblock(t, 0.3, 2, seed=3) ** 2, (x,))


@pytest.mark.parametrize("fmt", FORMATS)
def test_grouped_and_unravelled_block_writes_equal_the_default(monkeypatch, fmt):
    x = torch.ones(layout((14, 14), fmt, 4, 6))
    with painter("fast-index"):
        one = sdt.dropblock(x, 0.2, 5, fmt, seed=9)
    with painter("fast-unit"):
        assert torch.equal(sdt.dropblock(x, 0.2, 5, fmt, seed=9), one)
        monkeypatch.setattr(_paint, "WRITE_GROUP", 7)  # one block offset per index_fill_ call
        assert torch.equal(sdt.dropblock(x, 0.2, 5, fmt, seed=9), one)
    with painter("fast-index"):
        monkeypatch.setattr(_paint, "SEED_TABLE_MAX", 0)  # unravel seed positions instead
        assert torch.equal(sdt.dropblock(x, 0.2, 5, fmt, seed=9), one)
    with painter("fast-table"):
        assert torch.equal(sdt.dropblock(x, 0.2, 5, fmt, seed=9), one)


def test_window_writes_fall_back_to_unit_writes_when_refused(monkeypatch):
    """A PyTorch that refuses index_fill_ through the overlapping windows (say, a future
    internal-overlap check) gets the same mask from unit writes, which it then keeps using."""
    x = torch.ones(2, 3, 14, 14)
    with painter("fast-index"):
        want = sdt.dropblock(x, 0.2, 5, seed=4)
    real = torch.Tensor.index_fill_
    refused = []

    def refuse_overlap(self, dim, index, value):
        if len(set(self.stride())) < self.dim():  # the windows' view: stride 1 on two axes
            refused.append(self.shape)
            raise RuntimeError("unsupported operation: more than one element of the written-to "
                               "tensor refers to a single memory location")
        return real(self, dim, index, value)

    monkeypatch.setattr(torch.Tensor, "index_fill_", refuse_overlap)
    monkeypatch.setattr(_paint, "TABLE_MAX_BYTES", 0)
    monkeypatch.setattr(_paint, "WINDOW_WRITES", True)
    assert torch.equal(sdt.dropblock(x, 0.2, 5, seed=4), want)
    assert len(refused) == 1 and not _paint.WINDOW_WRITES
    assert torch.equal(sdt.dropblock(x, 0.2, 5, seed=4), want) and len(refused) == 1


@pytest.mark.parametrize("n", [0, 1, 7, 8, 2039, 2040, 2041, 8 * 255 * 3 + 5, 100003])
def test_count_true(n):
    g = torch.Generator().manual_seed(n)
    for p in (0.0, 0.3, 1.0):
        mask = torch.rand(n, generator=g) < p
        assert int(_fast.count_true(mask)) == int(mask.sum())
    mask = torch.ones(n + 9, dtype=torch.bool)[9:]  # storage offset not a multiple of 8
    assert int(_fast.count_true(mask)) == n
    assert int(_fast.count_true(torch.ones(3, n, dtype=torch.bool).t())) == 3 * n  # strided


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_scale_from_count(dtype):
    """The device-side scale (GPU tensor path, Triton double backward): a true division of the
    total by the kept count in float32 (float64 for float64), 0 when nothing is kept."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for total, kept in [(486, 372), (6422528, 5781234), (10, 10), (7, 0)]:
        s = _fast.scale_from_count(torch.tensor([kept]), total, dtype)
        assert s.shape == () and s.dtype == acc
        want = (torch.tensor(total, dtype=acc) / kept).item() if kept else 0.0
        assert s.item() == want
    # 486 / 372 in float64: numel * (1 / kept), what `int / tensor` computes, is 1 ulp off
    assert _fast.scale_from_count(torch.tensor(372), 486, torch.float64).item() == 486 / 372


@pytest.mark.parametrize("gamma", ["exact", "paper", 0.03])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
def test_the_sampler_gets_the_requested_gamma(monkeypatch, gamma, seeds):
    """The drop-fraction tests cannot tell "exact" from "paper" at every setting (they differ
    by 5-7 % of the rate); here the seed sampler itself is asked which probability it drew
    with, on the CPU path and on the NumPy-noise reference path."""
    drawn = []
    real = sdt.functional.bernoulli_positions

    def spy(total, p, *args, **kwargs):
        drawn.append(p)
        return real(total, p, *args, **kwargs)

    monkeypatch.setattr(sdt.functional, "bernoulli_positions", spy)
    x = torch.randn(2, 3, 14, 14)
    want = sd.resolve_gamma(gamma, 0.15, (7, 7), (14, 14), seeds)
    sdt.dropblock(x, 0.15, 7, gamma=gamma, seeds=seeds, seed=0)
    assert drawn == [want]
    kept = []
    real_mask = sdt.functional.dropblock_keep_mask
    monkeypatch.setattr(sdt.functional, "dropblock_keep_mask",
                        lambda u, g, *a, **k: kept.append(g) or real_mask(u, g, *a, **k))
    grid = sd.seed_grid_shape(tuple(x.shape), (7, 7), "channels_first", seeds)
    sdt.dropblock(x, 0.15, 7, gamma=gamma, seeds=seeds, uniform=np.random.default_rng(0).random(grid))
    assert kept == [want]
