"""Argument checks shared by the three frameworks (structdrop_tutorial/_checks.py): every bad
argument raises an error that names it, in NumPy, PyTorch and TensorFlow alike; rate 1 gives
zeros that stay connected to the graph and are never NaN."""
import numpy as np
import pytest

import structdrop_tutorial as sd
from structdrop_tutorial import _checks
from structdrop_tutorial import numpy as sdn

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
from structdrop_tutorial import tensorflow as sdtf  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402

X_NP = np.ones((2, 8, 8, 3), np.float32)


def test_check_gamma_int_and_block_rank():
    assert _checks.check_gamma("exact") == "exact"
    assert _checks.check_gamma(np.float32(0.25)) == 0.25
    for bad, error in [(None, TypeError), (True, TypeError), ([0.1], TypeError),
                       (float("nan"), ValueError), (1.5, ValueError), ("keras", ValueError)]:
        with pytest.raises(error, match="gamma"):
            _checks.check_gamma(bad)
    assert _checks.check_int(np.int64(3), "n", 1) == 3
    for bad, error in [(2.0, TypeError), (True, TypeError), ("3", TypeError), (0, ValueError)]:
        with pytest.raises(error, match="units"):
            _checks.check_int(bad, "units", 1)
    assert _checks.block_rank(3) == 1 and _checks.block_rank((3, 2)) == 2
    with pytest.raises(TypeError, match="size"):
        _checks.block_rank(2.0, "size")


@pytest.mark.parametrize("gamma, error", [(None, TypeError), ([0.1], TypeError), (True, TypeError),
                                          (float("nan"), ValueError), (1.5, ValueError)])
def test_bad_gamma_is_named_everywhere(gamma, error):
    calls = [lambda: sdn.dropblock(X_NP, 0.1, 3, gamma=gamma),
             lambda: sdt.dropblock(torch.ones(2, 3, 8, 8), 0.1, 3, gamma=gamma),
             lambda: sdtf.dropblock(tf.ones((2, 8, 8, 3)), 0.1, 3, gamma=gamma),
             lambda: sdt.DropBlock2d(0.1, 3, gamma=gamma),
             lambda: sdtf.DropBlock2D(0.1, 3, gamma=gamma),
             lambda: sdn.dropblock_keep_mask(np.random.rand(1, 6, 6, 1), gamma, 3),
             lambda: sdt.dropblock_keep_mask(torch.rand(1, 1, 6, 6), gamma, 3),
             lambda: sdtf.dropblock_keep_mask(tf.random.uniform((1, 6, 6, 1)), gamma, 3)]
    for call in calls:
        with pytest.raises(error, match="gamma"):
            call()


@pytest.mark.parametrize("rate", ["0.5", None, True, [0.5], np.array([0.3]),
                                  tf.constant([0.2, 0.9, 0.5]), tf.constant("0.5")])
def test_tensorflow_rejects_rates_that_are_not_real_scalars(rate):
    x = tf.ones((2, 4, 4, 3))
    for call in (sdtf.dropout, sdtf.spatial_dropout, lambda x, r: sdtf.dropblock(x, r, 3),
                 sdtf.drop_path):
        with pytest.raises(TypeError, match="rate"):
            call(x, rate)


def test_tensorflow_scalar_rates_of_every_kind_agree():
    """A Python float, a NumPy scalar or 0-d array, a tensor and a variable give the same mask
    (same seed); a NaN tensor rate counts as 0 (the input passes unchanged)."""
    x = tf.ones((64, 64))
    ref = sdtf.dropout(x, 0.3, seed=1).numpy()
    for rate in (np.float32(0.3), np.array(0.3), tf.constant(0.3), tf.Variable(0.3)):
        np.testing.assert_array_equal(sdtf.dropout(x, rate, seed=1).numpy(), ref)
    nan = tf.constant(float("nan"))
    for out in (sdtf.dropout(x[None, :, :, None], nan, seed=1),
                sdtf.dropblock(x[None, :, :, None], nan, 3, seed=1),
                sdtf.dropblock(x[None, :, :, None], nan, 3, seed=1, normalize="rate")):
        np.testing.assert_array_equal(out.numpy(), x[None, :, :, None].numpy())


@pytest.mark.parametrize("size", [2.0, None, (3, 2.0)])
def test_module_sizes_are_checked_by_name(size):
    with pytest.raises(TypeError, match="block_size"):
        sdt.DropBlock(0.1, size)
    with pytest.raises(TypeError, match="size"):
        sdt.Cutout(size)
    with pytest.raises(TypeError, match="size"):
        sdtf.Cutout(size)


def test_numpy_integers_are_accepted_as_sizes():
    assert sdt.Cutout(np.int64(3)).size == 3
    layer = sdtf.Cutout(np.int64(3))
    assert layer.get_config()["size"] == 3 and type(layer.get_config()["size"]) is int
    assert sdt.DropBlock(0.1, np.int64(3))(torch.ones(2, 3, 8, 8)).shape == (2, 3, 8, 8)


def test_integer_arguments_are_not_truncated():
    with pytest.raises(TypeError, match="noise_shape"):
        sdn.dropout(np.ones((2, 3, 4)), 0.5, noise_shape=(2, 1.7, 4))
    with pytest.raises(TypeError, match="noise_shape"):
        sdt.dropout(torch.ones(2, 3, 4), 0.5, noise_shape=(2, 1.7, 4))
    for entry in (1.7, True):  # TensorFlow used to read 1.7 as 1 and True as 1
        with pytest.raises(TypeError, match="noise_shape"):
            sdtf.dropout(tf.ones((2, 3, 4)), 0.5, noise_shape=(None, entry, 4))
    for call in (lambda: sdt.DropPath(batch_axis=1.5), lambda: sdtf.DropPath(0.1, batch_axis=1.5),
                 lambda: sdn.drop_path(np.ones((2, 3)), 0.5, batch_axis=1.5)):
        with pytest.raises(TypeError, match="batch_axis"):
            call()
    with pytest.raises(TypeError, match="units"):
        sdtf.DropConnectDense(2.5)
    with pytest.raises(TypeError, match="spatial_shape"):
        sd.exact_gamma(0.1, 3, (8.5, 8))


def test_dropconnect_dense_shapes_are_checked_by_name():
    for call in (lambda: sdn.dropconnect_dense(np.float32(1), np.ones((1, 2))),
                 lambda: sdt.dropconnect_dense(torch.tensor(1.0), torch.ones(1, 2)),
                 lambda: sdtf.dropconnect_dense(tf.constant(1.0), tf.ones((1, 2)))):
        with pytest.raises(ValueError, match="x must have at least one axis"):
            call()
    with pytest.raises(ValueError, match="bias"):
        sdn.dropconnect_dense(np.ones((3, 2)), np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="bias"):
        sdt.dropconnect_dense(torch.ones(3, 2), torch.ones(2, 4), torch.ones(3))
    # TensorFlow broadcast a wrong bias into a wrong output shape ((3, 1, 4) gave a (3, 2, 4)
    # output) or failed inside the addition
    for bias in (np.ones((3, 1, 4), np.float32), np.ones(3, np.float32), 1.0, tf.ones((1, 4))):
        with pytest.raises(ValueError, match=r"bias must have shape \(units,\) = \(4,\)"):
            sdtf.dropconnect_dense(tf.ones((2, 3)), tf.ones((3, 4)), bias, 0.3, seed=0)
    assert sdtf.dropconnect_dense(tf.ones((2, 3)), tf.ones((3, 4)), np.ones(4, np.float32),
                                  0.3, seed=0).shape == (2, 4)


def test_dropconnect_kernel_dtype_must_be_x_dtype():
    """PyTorch and TensorFlow cannot multiply mixed dtypes: the error names the argument
    (NumPy promotes, as its arithmetic always does)."""
    with pytest.raises(ValueError, match="kernel must have x's dtype"):
        sdt.dropconnect_dense(torch.ones(2, 3, dtype=torch.float16), torch.ones(3, 4), None, 0.3)
    with pytest.raises(ValueError, match="kernel must have x's dtype"):
        sdtf.dropconnect_dense(tf.ones((2, 3), tf.float16), tf.ones((3, 4)), None, 0.3)
    assert sdn.dropconnect_dense(np.ones((2, 3), np.float16), np.ones((3, 4), np.float32), None,
                                 0.3, seed=0).dtype == np.float32


def test_dropconnect_layers_name_the_input_width_and_dtype():
    layer = sdt.DropConnectLinear(5, 4)
    with pytest.raises(ValueError, match="in_features = 5"):
        layer(torch.ones(2, 7))
    with pytest.raises(ValueError, match="layer's dtype"):
        layer(torch.ones(2, 5, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the matmul casts
        assert layer.train()(torch.ones(2, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
        assert sdt.dropconnect_dense(torch.ones(2, 5, dtype=torch.bfloat16), torch.ones(5, 4),
                                     None, 0.3).dtype == torch.bfloat16
    keras_layer = sdtf.DropConnectDense(4)
    keras_layer.build((None, 5))
    with pytest.raises(ValueError, match="5 units on the last axis"):
        keras_layer(tf.ones((2, 7)), training=True)


def test_share_and_seed_errors_name_the_argument():
    x = np.ones((2, 6, 6, 3), np.float32)
    for call in (lambda: sdn.dropblock(x, 0.3, 3, share=5),
                 lambda: sdt.dropblock(torch.ones(2, 3, 6, 6), 0.3, 3, share=5),
                 lambda: sdtf.dropblock(tf.ones((2, 6, 6, 3)), 0.3, 3, share=5)):
        with pytest.raises(TypeError, match="share must be"):
            call()
    for seed, error in (("abc", TypeError), (1.5, TypeError), (True, TypeError),
                        (-1, ValueError)):
        with pytest.raises(error, match="seed must be"):
            sdn.dropblock(x, 0.3, 3, seed=seed)
        with pytest.raises(error, match="seed must be"):
            sdn.dropout(x, 0.3, seed=seed)


def test_rate_one_gives_connected_zeros_never_nan():
    """Rate 1 returns zeros whose gradient is zero (not None, not NaN), also for infinite
    inputs, in PyTorch and TensorFlow."""
    x = torch.tensor([[1.0, float("inf")], [2.0, 3.0]]).reshape(1, 1, 2, 2).requires_grad_()
    for f in (lambda x: sdt.dropout(x, 1.0), lambda x: sdt.dropblock(x, 1.0, 2),
              lambda x: sdt.spatial_dropout(x, 1.0), lambda x: sdt.drop_path(x, 1.0)):
        y = f(x)
        assert torch.equal(y, torch.zeros_like(y))
        assert torch.equal(torch.autograd.grad(y.sum(), x)[0], torch.zeros_like(x))
    k = torch.tensor([[1.0, float("inf")]], requires_grad=True)
    y = sdt.dropconnect_dense(torch.ones(2, 1), k, rate=1.0)
    assert torch.equal(y, torch.zeros(2, 2))
    assert torch.equal(torch.autograd.grad(y.sum(), k)[0], torch.zeros_like(k))
    xt = tf.Variable([[[[1.0], [float("inf")]], [[2.0], [3.0]]]])
    for f in (lambda x: sdtf.dropout(x, 1.0), lambda x: sdtf.dropblock(x, 1.0, 2),
              lambda x: sdtf.spatial_dropout(x, 1.0), lambda x: sdtf.drop_path(x, 1.0)):
        with tf.GradientTape() as tape:
            y = f(xt)
        grad = tape.gradient(y, xt)
        assert grad is not None
        np.testing.assert_array_equal(y.numpy(), np.zeros(y.shape))
        np.testing.assert_array_equal(grad.numpy(), np.zeros(grad.shape))


def test_schedule_load_state_dict_changes_nothing_on_bad_input():
    module = sdt.DropBlock2d(0.0, 3)
    schedule = sdt.LinearSchedule(module, 0.1, 10)
    schedule.step()
    for state in ({"last_step": -5, "target_rate": 0.1, "total_steps": 10},
                  {"last_step": 3, "target_rate": 1.5, "total_steps": 10},
                  {"last_step": 3, "target_rate": 0.1, "total_steps": 2.5}):
        with pytest.raises((ValueError, TypeError)):
            schedule.load_state_dict(state)
        assert (schedule.last_step, schedule.target_rate, schedule.total_steps) == (1, 0.1, 10)
        assert module.rate == pytest.approx(0.01)


def _every_rated_call(rate):
    """Every public function that takes a rate, in the three frameworks, at ``rate``."""
    xn, xt, xf = X_NP, torch.ones(2, 3, 8, 8), tf.ones((2, 8, 8, 3))
    kn, kt, kf = np.ones((3, 4), np.float32), torch.ones(3, 4), tf.ones((3, 4))
    return {
        "numpy dropout": lambda: sdn.dropout(xn, rate),
        "numpy spatial_dropout": lambda: sdn.spatial_dropout(xn, rate),
        "numpy dropblock": lambda: sdn.dropblock(xn, rate, 3),
        "numpy drop_path": lambda: sdn.drop_path(xn, rate),
        "numpy dropconnect_dense": lambda: sdn.dropconnect_dense(xn[:, 0, 0], kn, None, rate),
        "torch dropout": lambda: sdt.dropout(xt, rate),
        "torch spatial_dropout": lambda: sdt.spatial_dropout(xt, rate),
        "torch dropblock": lambda: sdt.dropblock(xt, rate, 3),
        "torch drop_path": lambda: sdt.drop_path(xt, rate),
        "torch dropconnect_dense": lambda: sdt.dropconnect_dense(xt[:, :, 0, 0], kt, None, rate),
        "torch SpatialDropout": lambda: sdt.SpatialDropout(rate),
        "torch DropBlock2d": lambda: sdt.DropBlock2d(rate, 3),
        "torch DropPath": lambda: sdt.DropPath(rate),
        "torch DropConnectLinear": lambda: sdt.DropConnectLinear(3, 4, rate=rate),
        "tf dropout": lambda: sdtf.dropout(xf, rate),
        "tf spatial_dropout": lambda: sdtf.spatial_dropout(xf, rate),
        "tf dropblock": lambda: sdtf.dropblock(xf, rate, 3),
        "tf drop_path": lambda: sdtf.drop_path(xf, rate),
        "tf dropconnect_dense": lambda: sdtf.dropconnect_dense(xf[:, 0, 0], kf, None, rate),
        "keras SpatialDropout": lambda: sdtf.SpatialDropout(rate),
        "keras DropBlock2D": lambda: sdtf.DropBlock2D(rate, 3),
        "keras DropPath": lambda: sdtf.DropPath(rate),
        "keras DropConnectDense": lambda: sdtf.DropConnectDense(4, rate),
    }


@pytest.mark.parametrize("rate, error", [(1.5, ValueError), (-0.1, ValueError),
                                         (float("nan"), ValueError), (True, TypeError),
                                         ("0.1", TypeError)])
def test_bad_python_rates_are_named_everywhere(rate, error):
    """A Python rate outside [0, 1], NaN, a bool or a string: an error naming ``rate`` from
    every function and layer of every framework. (TensorFlow tensor rates cannot be checked
    without a synchronization; they are clipped, see test_tensorflow_functional.py.)"""
    for name, call in _every_rated_call(rate).items():
        with pytest.raises(error, match="rate"):
            call()
            pytest.fail(name)


@pytest.mark.parametrize("block, error", [(2.5, TypeError), (0, ValueError), ((3,), ValueError),
                                          (True, TypeError)])
def test_bad_block_sizes_are_named_everywhere(block, error):
    """A float, zero, a wrong-length tuple or a bool block_size (cutout: size) is named."""
    calls = [lambda: sdn.dropblock(X_NP, 0.1, block), lambda: sdn.cutout(X_NP, block),
             lambda: sdt.dropblock(torch.ones(2, 3, 8, 8), 0.1, block),
             lambda: sdt.cutout(torch.ones(2, 3, 8, 8), block),
             lambda: sdtf.dropblock(tf.ones((2, 8, 8, 3)), 0.1, block),
             lambda: sdtf.cutout(tf.ones((2, 8, 8, 3)), block)]
    for call in calls:
        with pytest.raises(error, match="block_size|size"):
            call()


def test_module_and_layer_sizes_with_more_than_three_axes_fail_at_construction():
    """A block or patch size of 0 or more than 3 entries can fit no input (maps have 1 to 3
    spatial axes): the module or layer refuses it when built, not at its first call."""
    for size in ((3, 3, 3, 3), ()):
        for make in (lambda: sdt.DropBlock(0.1, size), lambda: sdt.Cutout(size),
                     lambda: sdtf.Cutout(size)):
            with pytest.raises(ValueError, match="size must have one entry per spatial axis"):
                make()


def test_switches_must_be_true_or_false_everywhere():
    """inplace, scale, bias and use_bias take True or False (or a NumPy bool), in the functions
    and the modules and layers: a string such as "False" (truthy) or a number is refused by
    name, and DropConnectLinear(3, 4, 0.2), which read 0.2 as the bias and kept the default
    rate, no longer builds."""
    x_t = torch.ones(2, 3, 8, 8)
    makers = {"inplace": [lambda v: sdt.SpatialDropout(0.1, inplace=v),
                          lambda v: sdt.DropBlock2d(0.1, 3, inplace=v),
                          lambda v: sdt.dropout(x_t.clone(), 0.1, seed=0, inplace=v),
                          lambda v: sdt.spatial_dropout(x_t.clone(), 0.1, seed=0, inplace=v),
                          lambda v: sdt.dropblock(x_t.clone(), 0.1, 3, seed=0, inplace=v),
                          lambda v: sdn.dropout(X_NP.copy(), 0.1, seed=0, inplace=v),
                          lambda v: sdn.spatial_dropout(X_NP.copy(), 0.1, seed=0, inplace=v),
                          lambda v: sdn.dropblock(X_NP.copy(), 0.1, 3, seed=0, inplace=v)],
              "scale": [lambda v: sdt.DropPath(0.1, scale=v), lambda v: sdtf.DropPath(0.1, scale=v),
                        lambda v: sdn.drop_path(X_NP, 0.1, scale=v, seed=0),
                        lambda v: sdt.drop_path(torch.ones(2, 3), 0.1, scale=v, seed=0),
                        lambda v: sdtf.drop_path(tf.ones((2, 3)), 0.1, scale=v, seed=0)],
              "bias": [lambda v: sdt.DropConnectLinear(3, 4, v)],
              "use_bias": [lambda v: sdtf.DropConnectDense(2, use_bias=v)]}
    for name, makes in makers.items():
        for make in makes:
            for bad in ("False", 0.2, None, 1):
                with pytest.raises(TypeError, match=f"^{name} must be True or False"):
                    make(bad)
            make(np.bool_(False))
            make(True)
    assert sdt.DropConnectLinear(3, 4, np.bool_(False)).bias is None


def test_bad_data_format_is_named_everywhere():
    for call in (lambda: sdn.cutout(X_NP, 3, "NHWC"), lambda: sdn.spatial_dropout(X_NP, 0.1, "NHWC"),
                 lambda: sdt.cutout(torch.ones(2, 3, 8, 8), 3, "NHWC"),
                 lambda: sdtf.cutout(tf.ones((2, 8, 8, 3)), 3, "NHWC")):
        with pytest.raises(ValueError, match="data_format"):
            call()


def test_empty_batches_and_16_bit_inputs_of_the_remaining_functions():
    """dropconnect_dense on an empty batch; NumPy drop_path and cutout keep 16-bit dtypes."""
    assert sdn.dropconnect_dense(np.ones((0, 3), np.float32), np.ones((3, 4), np.float32),
                                 None, 0.3, seed=0).shape == (0, 4)
    assert sdt.dropconnect_dense(torch.ones(0, 3), torch.ones(3, 4), None, 0.3).shape == (0, 4)
    assert sdtf.dropconnect_dense(tf.ones((0, 3)), tf.ones((3, 4)), None, 0.3).shape == (0, 4)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = np.ones((16, 8, 8, 3), dtype)
        y = sdn.drop_path(x, 0.5, seed=0)
        assert y.dtype == dtype and 0 < np.mean(y.astype(np.float32) == 0) < 1
        np.testing.assert_array_equal(np.unique(y.astype(np.float32)), [0.0, 2.0])
        assert sdn.cutout(x, 3, seed=0).dtype == dtype
