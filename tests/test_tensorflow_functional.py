"""The TensorFlow functions: NumPy's results from the same noise, the contract's edge cases,
graphs with unknown sizes, XLA, tensor rates, seeds and the realized drop fraction."""
import importlib
import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import structdrop_tutorial as sd  # noqa: E402
from structdrop_tutorial import numpy as sdn  # noqa: E402
from structdrop_tutorial import tensorflow as sdtf  # noqa: E402
from helpers import five_sigma_fraction_bound  # noqa: E402

from structdrop_tutorial.tensorflow import _fast  # noqa: E402

# Every DropBlock path: the dense reference, the sparse seeds (mask built by the XLA kernel when
# inside a graph) and the sparse seeds with plain TensorFlow ops only. Eager calls never use the
# kernel; test_tensorflow_fast.py and the graph tests below run it inside tf.function.
PATHS = ["dense", "sparse", "sparse-tf-ops"]


@pytest.fixture(params=PATHS)
def sampler(request, monkeypatch):
    if request.param == "sparse-tf-ops":
        monkeypatch.setattr(_fast, "USE_XLA_KERNEL", False)
        return "sparse"
    return request.param


def layout(spatial, fmt, batch=2, ch=3):
    return (batch, ch) + tuple(spatial) if fmt == "channels_first" else (batch,) + tuple(spatial) + (ch,)


def all_ops(x, rate=0.3, **kw):
    """Every function on a rank-4 channels_last input (dropconnect on a flattened view)."""
    return {
        "dropout": lambda: sdtf.dropout(x, rate, **kw),
        "spatial_dropout": lambda: sdtf.spatial_dropout(x, rate, **kw),
        "dropblock dense": lambda: sdtf.dropblock(x, rate, 3, sampler="dense", **kw),
        "dropblock sparse": lambda: sdtf.dropblock(x, rate, 3, sampler="sparse", **kw),
        "drop_path": lambda: sdtf.drop_path(x, rate, **kw),
    }


# --------------------------------------------------------------------------- same noise as NumPy
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_dropblock_matches_numpy_in_graphs_with_unknown_sizes(fmt, jit):
    spatial, block = (9, 11), (3, 4)
    x = np.random.default_rng(0).normal(size=layout(spatial, fmt))
    sig = [tf.TensorSpec([None] * 4, tf.float64), tf.TensorSpec([None] * 4, tf.float64)]
    for seeds in ("valid", "padded"):
        for share in ((), ("batch", "channels")):
            grid = sd.seed_grid_shape(x.shape, block, fmt, seeds, share)
            u = np.random.default_rng(1).random(grid)

            @tf.function(input_signature=sig, jit_compile=jit)
            def f(x_, u_):
                return sdtf.dropblock(x_, 0.2, block, fmt, seeds=seeds, share=share, uniform=u_)

            ref = sdn.dropblock(x, 0.2, block, fmt, seeds=seeds, share=share, uniform=u)
            # gamma is computed in the graph here (unknown map size): equal to 1e-12 of NumPy's
            np.testing.assert_allclose(f(tf.constant(x), tf.constant(u)).numpy(), ref, rtol=1e-9)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("block", [2, 4, (2, 4), (6, 2)])
def test_even_blocks_match_numpy(fmt, block):
    """Even block sizes (no centre unit; a block is indexed by its first unit): the same output
    as NumPy's from the same noise, for both seed modes, both normalizations and shared masks."""
    spatial = (9, 10)
    x = np.random.default_rng(0).normal(size=layout(spatial, fmt, batch=3, ch=4))
    for seeds in ("valid", "padded"):
        for share in ((), ("channels",)):
            grid = sd.seed_grid_shape(x.shape, sd.clip_block(block, spatial), fmt, seeds, share)
            u = np.random.default_rng(1).random(grid)
            for normalize in ("batch", "rate"):
                ref = sdn.dropblock(x, 0.25, block, fmt, seeds=seeds, share=share,
                                    normalize=normalize, uniform=u)
                assert 0 < np.mean(ref == 0) < 1  # a nontrivial mask from this fixed noise
                got = sdtf.dropblock(tf.constant(x), 0.25, block, fmt, seeds=seeds, share=share,
                                     normalize=normalize, uniform=u).numpy()
                np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_cutout_in_graphs_with_any_size_unknown(fmt, jit):
    """Every pattern of static and unknown batch and spatial sizes (a static batch with an
    unknown map once reshaped with two -1s and failed) gives NumPy's cutout."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 9, 8, 2)) if fmt == "channels_last" else rng.normal(size=(3, 2, 9, 8))
    uc = rng.random((3, 2))
    want = sdn.cutout(x, (4, 3), fmt, fill=0.5, uniform=uc)
    axes = (0, 1, 2) if fmt == "channels_last" else (0, 2, 3)
    for unknown in itertools.product((False, True), repeat=3):
        dims = list(x.shape)
        for axis, hide in zip(axes, unknown):
            dims[axis] = None if hide else dims[axis]
        f = tf.function(lambda t: sdtf.cutout(t, (4, 3), fmt, fill=0.5, uniform=uc),
                        input_signature=[tf.TensorSpec(dims, tf.float64)], jit_compile=jit)
        np.testing.assert_array_equal(f(tf.constant(x)).numpy(), want, err_msg=str(dims))


def test_package_uniform_is_tensorflows_and_the_same_under_xla():
    """XLA turns the same Philox words into other floats than TensorFlow's kernel (high bits,
    not low); the package makes its floats from the words itself, as the kernel does."""
    from structdrop_tutorial.tensorflow._common import stateless_uniform
    for dtype in (tf.float32, tf.float64):
        for shape in ([7], [2, 1, 3]):
            seed = tf.constant([5, -3], tf.int64)
            want = tf.random.stateless_uniform(shape, seed, dtype=dtype, alg="philox").numpy()
            np.testing.assert_array_equal(stateless_uniform(shape, seed, dtype).numpy(), want)
            xla = tf.function(lambda s: stateless_uniform(shape, s, dtype), jit_compile=True)
            np.testing.assert_array_equal(xla(seed).numpy(), want)


def test_same_seed_same_mask_eagerly_in_graphs_and_under_xla():
    """An int seed (also beyond 2**32) or a seed tensor passed in gives the same output in all
    three modes, for every random function (XLA's own uniform and fold_in once differed)."""
    ops = {"dropout": lambda t, s: sdtf.dropout(t, 0.5, seed=s),
           "dropout noise_shape": lambda t, s: sdtf.dropout(t, 0.5, (None, 1, 1, None), seed=s),
           "spatial_dropout": lambda t, s: sdtf.spatial_dropout(t, 0.5, seed=s),
           "drop_path": lambda t, s: sdtf.drop_path(t, 0.5, seed=s),
           "cutout": lambda t, s: sdtf.cutout(t, 3, seed=s),
           "dropblock": lambda t, s: sdtf.dropblock(t, 0.3, 3, seed=s),
           "dropblock dense": lambda t, s: sdtf.dropblock(t, 0.3, 3, seed=s, sampler="dense"),
           "dropblock sparse rate": lambda t, s: sdtf.dropblock(t, 0.3, 3, seed=s, sampler="sparse",
                                                                normalize="rate")}
    x = tf.ones((4, 8, 8, 3))
    seed_t = tf.constant([2**40 + 7, -1], tf.int64)
    for name, op in ops.items():
        want = op(x, 2**40 + 7).numpy()
        for jit in (False, True):
            got = tf.function(lambda t: op(t, 2**40 + 7), jit_compile=jit)(x).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, int seed, jit={jit}")
        want = op(x, seed_t).numpy()
        for jit in (False, True):
            got = tf.function(op, jit_compile=jit)(x, seed_t).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, seed tensor, jit={jit}")


def test_unknown_rank_is_a_clear_error_everywhere():
    ops = {"dropout": lambda t: sdtf.dropout(t, 0.5, seed=1),
           "dropout noise_shape": lambda t: sdtf.dropout(t, 0.5, (None, 1), seed=1),
           "spatial_dropout": lambda t: sdtf.spatial_dropout(t, 0.5, seed=1),
           "dropblock": lambda t: sdtf.dropblock(t, 0.5, 3, seed=1),
           "cutout": lambda t: sdtf.cutout(t, 3, seed=1),
           "drop_path": lambda t: sdtf.drop_path(t, 0.5, seed=1)}
    for name, op in ops.items():
        f = tf.function(op, input_signature=[tf.TensorSpec(None)])
        with pytest.raises(ValueError, match=r"x must have (a known )?rank"):
            f(tf.ones((2, 4, 4, 3)))


def test_keep_mask_and_family_match_numpy_graph():
    rng = np.random.default_rng(2)
    u = rng.random((2, 10, 7, 3))

    @tf.function(input_signature=[tf.TensorSpec([None] * 4, tf.float64)])
    def mask(u_):
        return sdtf.dropblock_keep_mask(u_, 0.1, (3, 2), "channels_last", "valid")

    np.testing.assert_array_equal(mask(tf.constant(u)).numpy(),
                                  sdn.dropblock_keep_mask(u, 0.1, (3, 2), "channels_last", "valid"))
    x = rng.normal(size=(5, 9, 8, 3))
    uc = rng.random((5, 2))
    for fmt, xx in (("channels_last", x), ("channels_first", np.moveaxis(x, -1, 1))):
        np.testing.assert_array_equal(sdtf.cutout(tf.constant(xx), (4, 3), fmt, fill=0.5, uniform=uc).numpy(),
                                      sdn.cutout(xx, (4, 3), fmt, fill=0.5, uniform=uc))
    up = rng.random((1, 1, 1, 1))
    np.testing.assert_array_equal(sdtf.drop_path(tf.constant(x), 0.4, mode="batch", uniform=up).numpy(),
                                  sdn.drop_path(x, 0.4, mode="batch", uniform=up))
    np.testing.assert_array_equal(sdtf.bernoulli_compare(u, 0.7).numpy(), sdn.bernoulli_compare(u, 0.7))
    np.testing.assert_array_equal(sdtf.bernoulli_relu_sign(u, 0.7).numpy(), sdn.bernoulli_relu_sign(u, 0.7))
    un = rng.random((9, 1, 1, 3))
    np.testing.assert_array_equal(sdtf.dropout(tf.constant(x[:, :, :, :]), 0.5, (None, 1, 1, None),
                                               uniform=un[:5]).numpy(),
                                  sdn.dropout(x, 0.5, (None, 1, 1, None), uniform=un[:5]))


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_given_noise_for_another_batch_size_is_an_error_in_a_graph(jit):
    """Traced with an unknown batch size, a uniform (or a noise_shape entry) made for batch 4
    must not broadcast a batch of 1 up to 4: the graph checks it at run time; under XLA, which
    drops the check, the reshape fails (uniform) or the noise takes x's size (noise_shape)."""
    rng = np.random.default_rng(5)
    calls = {
        "dropout": lambda x: sdtf.dropout(x, 0.5, uniform=rng.random((4, 5, 6, 3))),
        "spatial_dropout": lambda x: sdtf.spatial_dropout(x, 0.5, uniform=rng.random((4, 1, 1, 3))),
        "dropblock": lambda x: sdtf.dropblock(x, 0.2, 3, uniform=rng.random((4, 3, 4, 3))),
        "noise_shape": lambda x: sdtf.dropout(x, 0.5, noise_shape=[4, 1, 1, 3], seed=1),
    }
    for name, call in calls.items():
        f = tf.function(call, input_signature=[tf.TensorSpec((None, 5, 6, 3))], jit_compile=jit)
        assert f(tf.ones((4, 5, 6, 3))).shape == (4, 5, 6, 3)
        if jit and name == "noise_shape":
            assert f(tf.ones((1, 5, 6, 3))).shape == (1, 5, 6, 3), name
            continue
        match = None if jit else ("noise_shape must have" if name == "noise_shape"
                                  else "uniform must have the shape of the noise")
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            f(tf.ones((1, 5, 6, 3)))


def test_noise_shape_tensor_entries():
    x = tf.ones((2, 3))
    with pytest.raises(TypeError, match="noise_shape entries"):
        sdtf.dropout(x, 0.5, noise_shape=[tf.constant(2.7), 3])
    eager = sdtf.dropout(x, 0.5, noise_shape=[tf.constant(2), 1], seed=3)
    np.testing.assert_array_equal(eager.numpy(), sdtf.dropout(x, 0.5, noise_shape=[2, 1], seed=3).numpy())

    @tf.function(input_signature=[tf.TensorSpec((None, 3))])
    def per_sample(t):  # an entry known only at run time: x's size, checked then
        return sdtf.dropout(t, 0.5, noise_shape=[tf.shape(t)[0], 1], seed=3)

    for n in (2, 5):
        y = per_sample(tf.ones((n, 3))).numpy()
        assert y.shape == (n, 3) and np.all((y == 0) | (y == 2)) and np.all(y == y[:, :1])


# --------------------------------------------------------------------------- edge cases
def test_rate_zero_one_and_inference(sampler):
    x = tf.random.stateless_normal((3, 8, 8, 4), seed=[0, 1])
    for rate in (0.0, tf.constant(0.0)):
        np.testing.assert_array_equal(sdtf.dropblock(x, rate, 3, sampler=sampler).numpy(), x.numpy())
    for rate in (1.0, tf.constant(1.0), tf.Variable(1.0)):
        for normalize in ("batch", "rate"):
            y = sdtf.dropblock(x, rate, 3, sampler=sampler, normalize=normalize).numpy()
            assert np.all(y == 0) and not np.isnan(y).any()
        # whatever gamma: the paper's formula at rate 1 gives 0.198 here (an expected drop of
        # 0.61, no certain one), and a
        # tensor rate (what the Keras layers pass) took it once
        for gamma in ("paper", 0.01):
            y = sdtf.dropblock(x, rate, 3, sampler=sampler, gamma=gamma).numpy()
            assert np.all(y == 0), (rate, gamma)
    for rate in (0.0, tf.Variable(0.0)):
        for gamma in ("paper", 0.5):
            y = sdtf.dropblock(x, rate, 3, sampler=sampler, gamma=gamma).numpy()
            np.testing.assert_array_equal(y, x.numpy())
    np.testing.assert_array_equal(sdtf.dropblock(x, 0.5, 3, training=False, sampler=sampler).numpy(), x.numpy())
    np.testing.assert_array_equal(
        sdtf.dropblock(x, 0.5, 3, training=tf.constant(False), sampler=sampler).numpy(), x.numpy())


def test_rate_zero_one_inference_other_functions():
    x = tf.random.stateless_normal((3, 6, 5, 4), seed=[0, 2])
    for name, op in all_ops(x, 1.0).items():
        y = op().numpy()
        assert np.all(y == 0) and not np.isnan(y).any(), name
    for name, op in all_ops(x, tf.constant(1.0)).items():
        y = op().numpy()
        assert np.all(y == 0) and not np.isnan(y).any(), name
    for name, op in all_ops(x, 0.0).items():
        np.testing.assert_array_equal(op().numpy(), x.numpy(), err_msg=name)
    for name, op in all_ops(x, 0.7, training=False).items():
        np.testing.assert_array_equal(op().numpy(), x.numpy(), err_msg=name)
    np.testing.assert_array_equal(sdtf.cutout(x, 3, training=False).numpy(), x.numpy())
    k = tf.ones((4, 2))
    np.testing.assert_allclose(sdtf.dropconnect_dense(tf.ones((3, 4)), k, None, 1.0).numpy(), 0)
    np.testing.assert_allclose(sdtf.dropconnect_dense(tf.ones((3, 4)), k, None, 0.9, training=False).numpy(), 4)


@pytest.mark.parametrize("call, word", [
    (lambda x: sdtf.dropblock(x, 1.5, 3), "rate"),
    (lambda x: sdtf.dropblock(x, 0.1, 0), "block_size"),
    (lambda x: sdtf.dropblock(x, 0.1, (3, 3, 3)), "block_size"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, "nhwc"), "data_format"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, seeds="same"), "seeds"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, share="width"), "share"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, normalize="none"), "normalize"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, gamma=2.0), "gamma"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, gamma="wrong"), "gamma"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, sampler="fast"), "sampler"),
    (lambda x: sdtf.dropblock(x[0, 0], 0.1, 3), "rank"),
    (lambda x: sdtf.spatial_dropout(x[0, 0], 0.1), "rank"),
    (lambda x: sdtf.spatial_dropout(x, -0.1), "rate"),
    (lambda x: sdtf.dropout(x, 2), "rate"),
    (lambda x: sdtf.dropout(x, 0.1, (2, 3, 1, 1)), "noise_shape"),
    (lambda x: sdtf.cutout(x, 0), "size"),
    (lambda x: sdtf.drop_path(x, 0.1, mode="layer"), "mode"),
    (lambda x: sdtf.drop_path(x, 0.1, batch_axis=7), "batch_axis"),
    (lambda x: sdtf.dropconnect_dense(x[:, 0, 0], tf.ones((5, 2)), rate=0.1), "kernel"),
    (lambda x: sdtf.dropblock(x, 0.1, 3, uniform=np.zeros((2, 2, 2, 2))), "uniform"),
])
def test_value_errors_name_the_argument(call, word):
    x = tf.zeros((2, 6, 6, 3))
    with pytest.raises(ValueError, match=word):
        call(x)


def test_integer_inputs_are_type_errors():
    xi = tf.zeros((2, 6, 6, 3), tf.int32)
    for call in (lambda: sdtf.dropblock(xi, 0.1, 3), lambda: sdtf.dropout(xi, 0.1),
                 lambda: sdtf.spatial_dropout(np.zeros((2, 4, 3), np.int64), 0.1),
                 lambda: sdtf.cutout(xi, 2), lambda: sdtf.drop_path(xi, 0.1),
                 lambda: sdtf.dropconnect_dense(tf.zeros((2, 3)), tf.zeros((3, 2), tf.int32))):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(TypeError, match="rate"):
        sdtf.dropout(tf.zeros(3), True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes_kept(dtype, sampler):
    x = tf.cast(tf.random.stateless_normal((4, 9, 9, 8), seed=[1, 1]), dtype)
    for name, op in all_ops(x, 0.3, seed=3).items():
        y = op()
        assert y.dtype == x.dtype, name
        assert np.isfinite(tf.cast(y, tf.float32).numpy()).all(), name
    y = sdtf.dropblock(x, 0.3, 4, sampler=sampler, seed=1)
    assert y.dtype == x.dtype
    assert sdtf.cutout(x, 3, seed=1).dtype == x.dtype
    assert sdtf.dropconnect_dense(x[:, 0, 0], tf.cast(tf.ones((8, 2)), dtype), rate=0.5, seed=1).dtype == x.dtype


def test_block_clipped_even_blocks_empty_and_no_mutation(sampler):
    x = np.random.default_rng(3).normal(size=(4, 5, 6, 3)).astype(np.float32)
    before = x.copy()
    for block in (20, (2, 4), (5, 6), 1):
        y = sdtf.dropblock(x, 0.3, block, seed=1, sampler=sampler).numpy()
        assert y.shape == x.shape and np.isfinite(y).all()
        kept = y != 0
        np.testing.assert_allclose(y[kept] / x[kept], y[kept][0] / x[kept][0], rtol=1e-5)
    np.testing.assert_array_equal(x, before)
    for shape in ((0, 6, 6, 3), (2, 0, 6, 3), (2, 6, 6, 0)):
        for op in (lambda z: sdtf.dropblock(z, 0.3, 3, sampler=sampler), lambda z: sdtf.spatial_dropout(z, 0.3),
                   lambda z: sdtf.cutout(z, 2), lambda z: sdtf.drop_path(z, 0.3), lambda z: sdtf.dropout(z, 0.3)):
            assert op(tf.zeros(shape)).shape == shape
    # clipped block: a 20 x 20 block on a 5 x 6 map drops whole maps, like NumPy's
    u = np.random.default_rng(4).random((4, 1, 1, 3))
    np.testing.assert_allclose(sdtf.dropblock(x, 0.3, 20, uniform=u).numpy(),
                               sdn.dropblock(x, 0.3, 20, uniform=u), rtol=1e-6)


# --------------------------------------------------------------------------- graphs, XLA, rates, seeds
# (jit=True, kernel=False) would repeat (jit=True, kernel=True): under XLA the kernel is never used
@pytest.mark.parametrize("jit, kernel", [(False, True), (False, False), (True, True)])
def test_graph_unknown_sizes_and_tensor_rate_without_retracing(jit, kernel, monkeypatch):
    monkeypatch.setattr(_fast, "USE_XLA_KERNEL", kernel)
    rate = tf.Variable(0.2, trainable=False)
    gen = keras.random.SeedGenerator(0)
    sig = [tf.TensorSpec([None, None, None, 16], tf.float32)]

    @tf.function(input_signature=sig, jit_compile=jit)
    def f(x):
        # (the dense path under XLA with unknown sizes is covered by the NumPy-equality test)
        dense = x if jit else sdtf.dropblock(x, rate, 3, sampler="dense", seed=gen)
        return (sdtf.dropblock(x, rate, 5, seed=gen), sdtf.dropblock(x, rate, (4, 2), seeds="padded", seed=gen),
                dense, sdtf.spatial_dropout(x, rate, seed=gen),
                sdtf.dropout(x, rate, seed=gen), sdtf.drop_path(x, rate, seed=gen), sdtf.cutout(x, 3, seed=gen))

    fractions = []
    # XLA compiles once per shape (slow on a busy CPU): fewer shapes there
    cases = [(0.2, (8, 12, 12, 16)), (0.5, (8, 12, 12, 16))] if jit else \
        [(0.2, (8, 12, 12, 16)), (0.5, (5, 9, 14, 16)), (0.5, (3, 3, 2, 16))]
    for r, shape in cases:
        rate.assign(r)
        outs = f(tf.ones(shape))
        for y in outs:
            assert y.shape == shape and np.isfinite(y.numpy()).all()
        fractions.append((r, shape, float(np.mean(outs[0].numpy() == 0))))
    small = (8, 12, 12, 16) if jit else (2, 7, 7, 16)
    rate.assign(0.0)
    np.testing.assert_array_equal(f(tf.ones(small))[0].numpy(), 1.0)
    rate.assign(1.0)
    assert np.all(f(tf.ones(small))[0].numpy() == 0)
    assert f.experimental_get_tracing_count() == 1
    # the tensor rate reaches the graph: DropBlock (exact gamma, block 5 clipped to small maps,
    # one mask per sample and channel) drops a fraction of each of the batch * 16 independent
    # maps with mean `rate`, so their mean is within 5 sigma of it (five_sigma_fraction_bound)
    for r, shape, got in fractions:
        assert abs(got - r) <= five_sigma_fraction_bound(r, shape[0] * shape[-1]), (r, shape, got)


def test_seeds_reproducible():
    x = tf.ones((4, 10, 10, 8))
    for op in (lambda s: sdtf.dropblock(x, 0.3, 3, seed=s), lambda s: sdtf.dropblock(x, 0.3, 3, seed=s, sampler="dense"),
               lambda s: sdtf.spatial_dropout(x, 0.3, seed=s), lambda s: sdtf.cutout(x, 3, seed=s)):
        np.testing.assert_array_equal(op(7).numpy(), op(7).numpy())
        g1, g2 = keras.random.SeedGenerator(5), keras.random.SeedGenerator(5)
        a, b = op(g1).numpy(), op(g1).numpy()
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(op(g2).numpy(), a)
    with pytest.raises(TypeError, match="seed"):
        sdtf.dropout(x, 0.1, seed="abc")


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("spatial, block, seeds, rate", [
    ((14, 14), 7, "valid", 0.1), ((9, 13), (3, 6), "valid", 0.25), ((12, 12), 4, "padded", 0.15),
    ((30,), 5, "valid", 0.2), ((6, 7, 8), (3, 2, 4), "valid", 0.1),
])
def test_drop_fraction_matches_expectation(spatial, block, seeds, rate, sampler):
    """Realized fraction vs the exact expectation, within 5 sigma over independent maps."""
    batch, ch = 16, 64
    x = tf.ones((batch,) + spatial + (ch,))
    for gamma in ("exact", "paper"):
        g = sd.resolve_gamma(gamma, rate, sd.clip_block(block, spatial), spatial, seeds)
        expected = sd.expected_drop_fraction(g, sd.clip_block(block, spatial), spatial, seeds)
        y = sdtf.dropblock(x, rate, block, gamma=gamma, seeds=seeds, seed=11, sampler=sampler,
                           normalize="rate").numpy()
        got = float(np.mean(y == 0))
        assert abs(got - expected) <= five_sigma_fraction_bound(expected, batch * ch), (gamma, got, expected)
        if gamma == "exact":
            assert abs(expected - rate) < 1e-9
    y = sdtf.dropblock(x, rate, block, seeds=seeds, seed=12, sampler=sampler).numpy()
    kept = y[y != 0]
    np.testing.assert_allclose(kept, y.size / kept.size, rtol=1e-5)  # batch normalization


def test_dropout_family_fractions():
    """Drop fractions within 5 sigma of the rate (binomial over the independent draws); drop
    path gets a batch of its own, large enough for a bound of 0.016."""
    x = tf.ones((64, 8, 8, 32))
    n_draws = {"dropout": x.shape.num_elements(), "spatial_dropout": 64 * 32}
    for name, op in all_ops(x, 0.3, seed=4).items():
        if name in n_draws:
            got = float(np.mean(op().numpy() == 0))
            assert abs(got - 0.3) <= five_sigma_fraction_bound(0.3, n_draws[name]), name
    got = float(np.mean(sdtf.drop_path(tf.ones((20_000, 1, 1, 1)), 0.3, seed=4).numpy() == 0))
    assert abs(got - 0.3) <= five_sigma_fraction_bound(0.3, 20_000)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_dropblock_gradient_is_the_mask_times_the_scale(sampler, mode):
    """d(sum(y * w))/dx = keep * scale * w on every path, including the fused graph path whose
    custom gradient keeps a uint8 mask."""
    x = tf.random.stateless_normal((4, 12, 12, 8), seed=[1, 2], dtype=tf.float64)
    w = tf.random.stateless_normal((4, 12, 12, 8), seed=[3, 4], dtype=tf.float64)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = sdtf.dropblock(x, 0.3, 3, seed=5, sampler=sampler)
            loss = tf.reduce_sum(y * w)
        mask = sdtf.dropblock(tf.ones_like(x), 0.3, 3, seed=5, sampler=sampler)  # same seed
        return y, mask, tape.gradient(loss, x)

    if mode != "eager":
        step = tf.function(step, jit_compile=(mode == "xla"))
    y, mask, dx = step(x)
    mask = mask.numpy()
    assert len(np.unique(mask)) == 2 and mask.min() == 0.0  # keep * scale
    np.testing.assert_array_equal(y.numpy(), x.numpy() * mask)
    np.testing.assert_allclose(dx.numpy(), mask * w.numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_tensor_rate_0_and_1_with_a_given_gamma(mode):
    """A number gamma draws the seeds whatever the rate; a tensor rate of 0 or 1 still gives
    the identity or zeros, as a Python rate does (it used to drop with gamma either way)."""
    x = tf.random.stateless_normal((2, 8, 8, 3), seed=[1, 2])

    def run(r):
        return sdtf.dropblock(x, r, 3, gamma=0.2, seed=3)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla", autograph=False)
    np.testing.assert_array_equal(run(tf.constant(0.0)).numpy(), x.numpy())
    np.testing.assert_array_equal(run(tf.constant(1.0)).numpy(), np.zeros(x.shape))
    y = run(tf.constant(0.5)).numpy()
    assert 0 < np.mean(y == 0) < 1  # 216 seed positions at gamma 0.2: P(no seed) = 0.8^216 < 1e-20


@pytest.mark.parametrize("gamma", ["exact", "paper", 0.015])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("sampler", ["sparse", "dense"])
def test_the_sampler_gets_the_requested_gamma(monkeypatch, gamma, seeds, sampler):
    """The gamma dropblock draws its seeds with is the one asked for (the drop-fraction tests
    cannot tell "exact" from "paper" at every setting)."""
    db = importlib.import_module("structdrop_tutorial.tensorflow.dropblock")
    resolved = []
    real = db._resolve_gamma
    monkeypatch.setattr(db, "_resolve_gamma", lambda *a: resolved.append(real(*a)) or resolved[-1])
    x = tf.random.stateless_normal((2, 14, 14, 3), seed=[1, 2])
    sdtf.dropblock(x, 0.15, 7, gamma=gamma, seeds=seeds, seed=0, sampler=sampler)
    assert resolved == [sd.resolve_gamma(gamma, 0.15, (7, 7), (14, 14), seeds)]
