"""NumPy, TensorFlow and PyTorch give identical masks and outputs from the same noise."""
import numpy as np
import pytest

import structdrop_tutorial as sd
from structdrop_tutorial import numpy as sdn

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
ml_dtypes = pytest.importorskip("ml_dtypes")  # NumPy's bfloat16; comes with TensorFlow
from structdrop_tutorial import tensorflow as sdtf  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402

CASES = [  # (spatial, block): odd and even blocks, square and non-square maps, 1-D to 3-D
    ((14, 14), 7), ((14, 14), 4), ((9, 13), (3, 6)), ((12,), 5), ((12,), 2), ((5, 6, 7), (3, 2, 4)),
]


def layout(spatial, fmt, batch=2, ch=3):
    return (batch, ch) + spatial if fmt == "channels_first" else (batch,) + spatial + (ch,)


@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("spatial, block", CASES)
def test_keep_mask_identical(spatial, block, fmt, seeds):
    blk = sd.clip_block(block, spatial)
    grid = sd.seed_grid_shape(layout(spatial, fmt), blk, fmt, seeds)
    u = np.random.default_rng(len(spatial) * 100 + sum(blk)).random(grid)
    ref = sdn.dropblock_keep_mask(u, 0.08, blk, fmt, seeds)
    got_t = sdt.dropblock_keep_mask(torch.from_numpy(u), 0.08, blk, fmt, seeds)
    got_tf = sdtf.dropblock_keep_mask(tf.constant(u), 0.08, blk, fmt, seeds)
    np.testing.assert_array_equal(np.asarray(got_t.cpu().numpy(), bool), ref)
    np.testing.assert_array_equal(np.asarray(got_tf.numpy(), bool), ref)


def test_keep_mask_of_integer_noise_identical():
    """Noise that is not float (ints, bools) is compared with gamma as numbers in all three."""
    u = np.zeros((2, 6, 6, 3), np.int64)
    u[0, 1, 2, 0] = 1
    for noise in (u, u.astype(bool)):
        ref = sdn.dropblock_keep_mask(noise, 0.5, 3)
        got_t = sdt.dropblock_keep_mask(torch.from_numpy(noise), 0.5, 3, "channels_last")
        got_tf = sdtf.dropblock_keep_mask(noise, 0.5, 3)
        np.testing.assert_array_equal(got_t.numpy(), ref)
        np.testing.assert_array_equal(got_tf.numpy(), ref)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("share", [(), "channels", ("batch", "channels")])
def test_dropblock_outputs_identical(fmt, share):
    spatial, block = (10, 11), (3, 4)
    x = np.random.default_rng(0).normal(size=layout(spatial, fmt))
    grid = sd.seed_grid_shape(x.shape, block, fmt, "valid", share)
    u = np.random.default_rng(1).random(grid)
    ref = sdn.dropblock(x, 0.2, block, fmt, share=share, uniform=u)
    got_t = sdt.dropblock(torch.from_numpy(x), 0.2, block, fmt, share=share, uniform=u)
    got_tf = sdtf.dropblock(tf.constant(x), 0.2, block, fmt, share=share, uniform=u)
    np.testing.assert_allclose(got_t.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(got_tf.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_spatial_dropout_and_dropout_identical(fmt):
    x = np.random.default_rng(2).normal(size=layout((6, 5), fmt, 4, 7))
    u = np.random.default_rng(3).random(sd.noise_shape("spatial", x.shape, fmt))
    ref = sdn.spatial_dropout(x, 0.4, fmt, uniform=u)
    np.testing.assert_allclose(sdt.spatial_dropout(torch.from_numpy(x), 0.4, fmt, uniform=u).numpy(), ref)
    np.testing.assert_allclose(sdtf.spatial_dropout(tf.constant(x), 0.4, fmt, uniform=u).numpy(), ref)
    u2 = np.random.default_rng(4).random(x.shape)
    ref2 = sdn.dropout(x, 0.4, uniform=u2)
    np.testing.assert_allclose(sdt.dropout(torch.from_numpy(x), 0.4, uniform=u2).numpy(), ref2)
    np.testing.assert_allclose(sdtf.dropout(tf.constant(x), 0.4, uniform=u2).numpy(), ref2)


def test_family_identical():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 9, 9, 3))
    u = rng.random((4, 2))
    ref = sdn.cutout(x, 4, uniform=u)
    np.testing.assert_allclose(sdtf.cutout(tf.constant(x), 4, uniform=u).numpy(), ref)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(sdt.cutout(xt, 4, "channels_last", uniform=u).numpy(), ref)
    up = rng.random((4, 1, 1, 1))
    ref = sdn.drop_path(x, 0.3, uniform=up)
    np.testing.assert_allclose(sdt.drop_path(xt, 0.3, uniform=up).numpy(), ref)
    np.testing.assert_allclose(sdtf.drop_path(tf.constant(x), 0.3, uniform=up).numpy(), ref)
    xd, w, b, uw = rng.normal(size=(5, 6)), rng.normal(size=(6, 2)), rng.normal(size=2), rng.random((6, 2))
    ref = sdn.dropconnect_dense(xd, w, b, 0.3, uniform=uw)
    got_t = sdt.dropconnect_dense(torch.from_numpy(xd), torch.from_numpy(w), torch.from_numpy(b), 0.3, uniform=uw)
    got_tf = sdtf.dropconnect_dense(tf.constant(xd), tf.constant(w), tf.constant(b), 0.3, uniform=uw)
    np.testing.assert_allclose(got_t.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(got_tf.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_float32_outputs_bit_identical(fmt, rate):
    """Chapter 3 says the three frameworks agree to the last bit in float32, not just closely:
    same draws, same threshold, same float32 factor (or the same float32 batch ratio)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=layout((10, 11), fmt, 3, 4)).astype(np.float32)
    xt, xtf = torch.from_numpy(x), tf.constant(x)
    u = rng.random(sd.noise_shape("spatial", x.shape, fmt)).astype(np.float32)
    ref = sdn.spatial_dropout(x, rate, fmt, uniform=u)
    assert ref.dtype == np.float32
    np.testing.assert_array_equal(sdt.spatial_dropout(xt, rate, fmt, uniform=u).numpy(), ref)
    np.testing.assert_array_equal(sdtf.spatial_dropout(xtf, rate, fmt, uniform=u).numpy(), ref)
    for shape in [x.shape, (x.shape[0], 1, 1, 1), (1,) + x.shape[1:]]:
        un = rng.random(shape).astype(np.float32)
        ref = sdn.dropout(x, rate, noise_shape=shape, uniform=un)
        np.testing.assert_array_equal(sdt.dropout(xt, rate, noise_shape=shape, uniform=un).numpy(), ref)
        np.testing.assert_array_equal(sdtf.dropout(xtf, rate, noise_shape=shape, uniform=un).numpy(), ref)
    grid = sd.seed_grid_shape(x.shape, (3, 4), fmt, "valid")
    ub = rng.random(grid).astype(np.float32)
    for normalize in ["batch", "rate"]:
        ref = sdn.dropblock(x, rate, (3, 4), fmt, normalize=normalize, uniform=ub)
        np.testing.assert_array_equal(
            sdt.dropblock(xt, rate, (3, 4), fmt, normalize=normalize, uniform=ub).numpy(), ref)
        np.testing.assert_array_equal(
            sdtf.dropblock(xtf, rate, (3, 4), fmt, normalize=normalize, uniform=ub).numpy(), ref)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_half_precision_rounds_once_and_agrees(rate):
    """float16 and bfloat16 (NumPy's through ml_dtypes) in all three frameworks: the output is the
    float32 product x * keep * float32(scale) rounded once to the input's dtype, so the scale
    is not rounded to 16 bits first; the frameworks agree bit for bit."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 10, 11, 4)).astype(np.float32)
    u = rng.random(sd.noise_shape("spatial", x.shape, "channels_last")).astype(np.float32)
    grid = sd.seed_grid_shape(x.shape, (3, 4), "channels_last", "valid")
    ub = rng.random(grid).astype(np.float32)
    keep_b = sdn.dropblock_keep_mask(ub, sd.exact_gamma(rate, (3, 4), (10, 11)), (3, 4))
    for tdtype, fdtype in [(torch.float16, tf.float16), (torch.bfloat16, tf.bfloat16)]:
        xt = torch.from_numpy(x).to(tdtype)
        x32 = xt.float().numpy()                       # the 16-bit input's exact values

        def once(keep, scale):
            return torch.from_numpy(x32 * (keep * np.float32(scale))).to(tdtype).float().numpy()

        want = once(u >= rate, 1 / (1 - rate))
        got_t = sdt.spatial_dropout(xt, rate, "channels_last", uniform=u)
        got_tf = sdtf.spatial_dropout(tf.cast(tf.constant(x), fdtype), rate, uniform=u)
        assert got_t.dtype == tdtype and got_tf.dtype == fdtype
        np.testing.assert_array_equal(got_t.float().numpy(), want)
        np.testing.assert_array_equal(tf.cast(got_tf, tf.float32).numpy(), want)
        want = once(keep_b, 1 / (1 - rate))
        got_t = sdt.dropblock(xt, rate, (3, 4), "channels_last", normalize="rate", uniform=ub)
        got_tf = sdtf.dropblock(tf.cast(tf.constant(x), fdtype), rate, (3, 4), normalize="rate",
                                uniform=ub)
        np.testing.assert_array_equal(got_t.float().numpy(), want)
        np.testing.assert_array_equal(tf.cast(got_tf, tf.float32).numpy(), want)
        # NumPy: float16, and bfloat16 through ml_dtypes (which TensorFlow brings)
        ndtype = np.float16 if tdtype == torch.float16 else ml_dtypes.bfloat16
        xn = x.astype(ndtype)
        np.testing.assert_array_equal(
            sdn.spatial_dropout(xn, rate, uniform=u).astype(np.float32),
            once(u >= rate, 1 / (1 - rate)))
        np.testing.assert_array_equal(
            sdn.dropblock(xn, rate, (3, 4), normalize="rate", uniform=ub).astype(np.float32),
            once(keep_b, 1 / (1 - rate)))


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_half_precision_dropconnect_rounds_once_and_agrees(rate):
    """DropConnect's kernel in float16 and bfloat16: the surviving weights are the float32
    product w * float32(scale) rounded once, in all three frameworks (read out exactly through
    an identity input)."""
    rng = np.random.default_rng(8)
    w = rng.normal(size=(32, 24)).astype(np.float32)
    uw = rng.random(w.shape).astype(np.float32)
    eye = np.eye(32, dtype=np.float32)
    for tdtype, fdtype, ndtype in [(torch.float16, tf.float16, np.float16),
                                   (torch.bfloat16, tf.bfloat16, ml_dtypes.bfloat16)]:
        w32 = torch.from_numpy(w).to(tdtype).float().numpy()  # the 16-bit weights' values
        want = torch.from_numpy(w32 * ((uw >= rate) * np.float32(1 / (1 - rate))))
        want = want.to(tdtype).float().numpy()
        got_t = sdt.dropconnect_dense(torch.from_numpy(eye).to(tdtype),
                                      torch.from_numpy(w).to(tdtype), None, rate, uniform=uw)
        got_tf = sdtf.dropconnect_dense(tf.cast(eye, fdtype), tf.cast(w, fdtype), None, rate,
                                        uniform=uw)
        got_n = sdn.dropconnect_dense(eye.astype(ndtype), w.astype(ndtype), None, rate,
                                      uniform=uw)
        assert got_t.dtype == tdtype and got_tf.dtype == fdtype and got_n.dtype == ndtype
        np.testing.assert_array_equal(got_t.float().numpy(), want)
        np.testing.assert_array_equal(tf.cast(got_tf, tf.float32).numpy(), want)
        np.testing.assert_array_equal(got_n.astype(np.float32), want)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70])
def test_int_seeds_outside_the_range_are_the_same_error_everywhere(seed):
    x = np.ones((2, 3, 4, 4), np.float32)
    for mod, xx in ((sdn, x), (sdt, torch.from_numpy(x)), (sdtf, tf.constant(x))):
        with pytest.raises(ValueError, match=r"seed must be None, an int in \[0, 2\*\*63\)"):
            mod.spatial_dropout(xx, 0.5, "channels_first", seed=seed)


@pytest.mark.parametrize("gamma, error", [("bogus", ValueError), (2.0, ValueError),
                                          (-1.0, ValueError), (None, TypeError)])
def test_a_bad_gamma_is_the_same_error_everywhere_even_where_unused(gamma, error):
    """Rate 0 or 1, an empty map and inference never use gamma; it is checked all the same."""
    for shape, rate, training in (((2, 3, 6, 6), 0.0, True), ((2, 3, 6, 6), 1.0, True),
                                  ((2, 3, 0, 6), 0.3, True), ((2, 3, 6, 6), 0.3, False)):
        x = np.ones(shape, np.float32)
        for mod, xx in ((sdn, x), (sdt, torch.from_numpy(x)), (sdtf, tf.constant(x))):
            with pytest.raises(error, match="gamma must be"):
                mod.dropblock(xx, rate, 3, "channels_first", gamma=gamma, training=training)


@pytest.mark.parametrize("fill, error", [("a", TypeError), (None, TypeError), (True, TypeError),
                                         (float("nan"), ValueError), (float("inf"), ValueError)])
def test_a_bad_cutout_fill_is_the_same_error_everywhere(fill, error):
    x = np.ones((2, 3, 6, 6), np.float32)
    for mod, xx in ((sdn, x), (sdt, torch.from_numpy(x)), (sdtf, tf.constant(x))):
        for training in (True, False):
            with pytest.raises(error, match="fill must be a finite real number"):
                mod.cutout(xx, 3, "channels_first", fill=fill, training=training)
    for layer in (lambda: sdt.Cutout(3, fill=fill), lambda: sdtf.Cutout(3, fill=fill)):
        with pytest.raises(error, match="fill must be a finite real number"):
            layer()


def test_numpy_int_seeds_are_ints_everywhere():
    x = np.ones((2, 3, 4, 4), np.float32)
    ref = sdt.spatial_dropout(torch.from_numpy(x), 0.5, "channels_first", seed=3)
    torch.testing.assert_close(
        sdt.spatial_dropout(torch.from_numpy(x), 0.5, "channels_first", seed=np.int64(3)), ref)
