"""Keras layers and the rate-schedule callback: config round trips, training flag, seeds,
.keras save/load, and a schedule that advances with training steps only."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import structdrop_tutorial as sd  # noqa: E402
from structdrop_tutorial import tensorflow as sdtf  # noqa: E402

LAYERS = [
    (lambda: sdtf.SpatialDropout(0.3, "channels_first", seed=1, name="sd1", dtype="float64"), (2, 3, 5, 6)),
    (lambda: sdtf.DropBlock1D(0.2, 3, seed=2), (2, 12, 4)),
    (lambda: sdtf.DropBlock2D(0.2, (3, 2), gamma="paper", seeds="padded", share=("channels",),
                              normalize="rate", sampler="dense", seed=3, name="db2"), (2, 9, 8, 4)),
    (lambda: sdtf.DropBlock3D(0.1, (2, 3, 2), data_format="channels_first", gamma=0.05, seed=4), (2, 3, 6, 6, 6)),
    (lambda: sdtf.DropPath(0.25, mode="batch", scale=False, seed=5), (4, 5, 5, 2)),
    (lambda: sdtf.Cutout((3, 2), fill=0.5, seed=6), (2, 7, 7, 3)),
    # A seeded kernel: with a random one, relu(x @ kernel) can be all zeros, and then training
    # and inference agree (a flaky test before the seed).
    (lambda: sdtf.DropConnectDense(3, 0.4, activation="relu", use_bias=False, seed=7,
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=8)),
     (4, 6)),
]


@pytest.mark.parametrize("make, shape", LAYERS)
def test_config_round_trip_and_training_flag(make, shape):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    json_config = keras.saving.serialize_keras_object(layer)
    again = keras.saving.deserialize_keras_object(json_config)
    assert again.get_config() == config
    for key in ("block_size", "share", "size"):
        if key in config and not isinstance(config[key], int):
            assert isinstance(getattr(clone, key), tuple)
    dtype = layer.compute_dtype
    x = tf.cast(tf.random.stateless_normal(shape, seed=[1, 2]) + 3.0, dtype)
    if isinstance(layer, sdtf.DropConnectDense):
        y_inf = layer(x, training=False)
        np.testing.assert_allclose(y_inf.numpy(), tf.nn.relu(x @ layer.kernel).numpy(), rtol=1e-6)
        assert not np.allclose(layer(x, training=True).numpy(), y_inf.numpy())
        return
    want = x.numpy()  # inference is the identity, but for the paper's unscaled DropPath
    if isinstance(layer, sdtf.DropPath) and not layer.scale:
        want = (want * (1 - layer.rate)).astype(want.dtype)
    np.testing.assert_array_equal(layer(x).numpy(), want)  # training=None: inference
    np.testing.assert_array_equal(layer(x, training=False).numpy(), want)
    outs = [layer(x, training=True).numpy() for _ in range(6)]
    assert any(not np.array_equal(o, x.numpy()) for o in outs)
    assert outs[0].dtype == x.numpy().dtype


def test_layer_seed_reproducible_and_rate_variable():
    x = tf.ones((4, 10, 10, 8))
    a, b = sdtf.DropBlock2D(0.3, 3, seed=11), sdtf.DropBlock2D(0.3, 3, seed=11)
    first = a(x, training=True).numpy()
    np.testing.assert_array_equal(first, b(x, training=True).numpy())
    assert not np.array_equal(first, a(x, training=True).numpy())
    assert not a.rate_variable.trainable and float(a.rate_variable.numpy()) == pytest.approx(0.3)
    a.rate_variable.assign(0.0)
    np.testing.assert_array_equal(a(x, training=True).numpy(), x.numpy())
    with pytest.raises(ValueError, match="rate"):
        sdtf.DropBlock2D(1.5, 3)
    with pytest.raises(ValueError, match="block_size"):
        sdtf.DropBlock2D(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match="data_format"):
        sdtf.SpatialDropout(0.1, "nchw")


@pytest.mark.parametrize("make", [
    lambda seed: sdtf.SpatialDropout(0.1, seed=seed), lambda seed: sdtf.DropBlock2D(0.1, 3, seed=seed),
    lambda seed: sdtf.DropPath(0.1, seed=seed), lambda seed: sdtf.Cutout(3, seed=seed),
    lambda seed: sdtf.DropConnectDense(2, 0.1, seed=seed)])
def test_layer_seeds_are_checked_like_the_functions_seeds(make):
    for bad, error in ((-1, ValueError), (2**63, ValueError), (True, TypeError), (3.0, TypeError),
                       ("a", TypeError)):
        with pytest.raises(error, match=r"seed must be None or an int in \[0, 2\*\*63\)"):
            make(bad)
    layer = make(np.int64(3))  # a NumPy int is an int, saved as one
    assert layer.get_config()["seed"] == 3 and type(layer.get_config()["seed"]) is int
    assert make(2**63 - 1).seed == 2**63 - 1 and make(None).seed is None


def _model():
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    h = sdtf.DropBlock2D(0.2, (3, 4), seed=1)(h)
    h = sdtf.SpatialDropout(0.1, seed=2)(h)
    h = sdtf.Cutout(4, seed=3)(h)
    h = keras.layers.Add()([h, sdtf.DropPath(0.2, seed=4)(h)])
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = sdtf.DropConnectDense(2, 0.3, seed=5)(h)
    return keras.Model(inp, out)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras-internal numpy copy= notice on save
def test_model_fits_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile("adam", "mse")
    x = np.random.default_rng(0).random((16, 12, 12, 3)).astype("float32")
    y = np.random.default_rng(1).random((16, 2)).astype("float32")
    schedule = sdtf.LinearRateSchedule(total_steps=4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[schedule])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    for a, b in zip(model.layers, loaded.layers):
        assert type(a) is type(b)
        assert a.get_config() == b.get_config()
        if hasattr(a, "rate_variable"):
            assert float(b.rate_variable.numpy()) == pytest.approx(float(a.rate_variable.numpy()))
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # still trains after loading


@pytest.mark.parametrize("gamma", ["exact", "paper", 0.05])
def test_dropblock_layer_rate_zero_and_one_whatever_gamma_and_trains(gamma):
    """The layer passes its rate as a variable: rate 1 gives zeros and rate 0 the input, for
    every gamma (the paper's formula at rate 1 once dropped 63 % here), and fit() takes its
    gradient (a tf.cond around the call broke Keras's training step)."""
    x = np.random.default_rng(0).random((4, 6, 6, 3)).astype("float32") + 1.0
    for rate, want in ((1.0, np.zeros_like(x)), (0.0, x)):
        layer = sdtf.DropBlock2D(rate, 3, gamma=gamma, seed=0)
        np.testing.assert_array_equal(layer(x, training=True).numpy(), want)
    inputs = keras.Input((6, 6, 3))
    hidden = sdtf.DropBlock2D(0.2, 3, gamma=gamma, seed=1)(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(hidden)))
    model.compile("sgd", "mse")
    history = model.fit(x, np.ones((4, 1), "float32"), epochs=2, verbose=0,
                        callbacks=[sdtf.LinearRateSchedule(1)])
    assert np.all(np.isfinite(history.history["loss"]))


def test_schedule_steps_in_fit_only():
    model = _model()
    model.compile("sgd", "mse")
    x = np.zeros((12, 12, 12, 3), "float32")
    y = np.zeros((12, 2), "float32")
    schedule = sdtf.LinearRateSchedule(total_steps=5)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append([float(v.rate_variable.numpy()) for v in schedule.scheduled_layers()])

    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[schedule, Record()])
    assert schedule.step == 6
    layers = schedule.scheduled_layers()
    assert {type(layer).__name__ for layer in layers} == {"DropBlock2D", "SpatialDropout", "DropPath",
                                                          "DropConnectDense"}
    for step, rates in enumerate(seen):
        for layer, got in zip(layers, rates):
            assert got == pytest.approx(sd.linear_rate(step, 5, layer.rate), abs=1e-6)
    model.predict(x, verbose=0, callbacks=[schedule])
    model.evaluate(x, y, verbose=0, callbacks=[schedule])
    assert schedule.step == 6
    assert float(layers[0].rate_variable.numpy()) == pytest.approx(layers[0].rate)
    with pytest.raises(ValueError, match="total_steps"):
        sdtf.LinearRateSchedule(-1)
    for bad in (1.5, "a", None):
        with pytest.raises(TypeError, match="total_steps must be an int"):
            sdtf.LinearRateSchedule(bad)
    with pytest.raises(ValueError, match="start_step"):
        sdtf.LinearRateSchedule(4, start_step=-2)
    # registered as serializable, and it round-trips (the step taken so far included)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(again) is sdtf.LinearRateSchedule
    assert (again.total_steps, again.step) == (5, 6) and again.get_config() == schedule.get_config()


def test_schedule_counts_every_batch_of_an_execution():
    """With steps_per_execution=3 Keras calls back once per 3 batches (the last execution of an
    epoch of 7 runs one): the step counts batches, not executions, and each execution trains
    with the rate of its first batch."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(sdtf.DropConnectDense(3, 0.4, seed=0)(inputs)))
    model.compile("sgd", "mse", steps_per_execution=3)
    schedule = sdtf.LinearRateSchedule(total_steps=8)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(schedule.scheduled_layers()[0].rate_variable.numpy()))

    model.fit(np.ones((14, 4), "float32"), np.ones((14, 1), "float32"), batch_size=2, epochs=2,
              verbose=0, callbacks=[schedule, Record()])
    assert schedule.step == 14 == int(model.optimizer.iterations.numpy())
    starts = [0, 3, 6, 7, 10, 13]  # the first batch of each execution, over both epochs
    np.testing.assert_allclose(seen, [sd.linear_rate(s, 8, 0.4) for s in starts], atol=1e-6)
    # batches, not optimizer steps: a loss-scale optimizer that skips every step (its scale
    # overflows float16) takes none, and the schedule still counts the 14 batches
    inputs = keras.Input((4,))
    hidden = sdtf.DropConnectDense(3, 0.4, seed=0, dtype="mixed_float16")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="mixed_float16")(hidden))
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=2.0 ** 40),
                  "mse", steps_per_execution=3)
    schedule = sdtf.LinearRateSchedule(total_steps=8)
    model.fit(np.ones((14, 4), "float32"), np.ones((14, 1), "float32"), batch_size=2, epochs=1,
              verbose=0, callbacks=[schedule])
    assert schedule.step == 7 and int(model.optimizer.iterations.numpy()) == 0


@pytest.mark.parametrize("make, shape", LAYERS)
def test_layers_in_a_graph_with_unknown_batch_and_edge_rates(make, shape):
    """Each layer traced once in a tf.function whose batch size is unknown runs on a batch of
    2 and an empty batch; at rate 1 a dropout layer gives zeros (DropConnect: a zero kernel, so
    relu(0) = 0; Cutout has no rate and is skipped there), never NaN."""
    layer = make()
    dtype = layer.compute_dtype
    layer.build(shape)
    step = tf.function(lambda x: layer(x, training=True), autograph=False,
                       input_signature=[tf.TensorSpec((None,) + shape[1:], dtype)])
    units = shape[:-1] + (3,) if isinstance(layer, sdtf.DropConnectDense) else shape
    for batch in (shape[0], 0):
        y = step(tf.ones((batch,) + shape[1:], dtype))
        assert tuple(y.shape) == (batch,) + units[1:]
    if hasattr(layer, "rate_variable"):
        layer.rate_variable.assign(1.0)
        y = step(tf.ones(shape, dtype)).numpy()
        assert not np.isnan(y).any() and np.all(y == 0)


@pytest.mark.parametrize("policy, dtype", [("mixed_float16", "float16"),
                                           ("mixed_bfloat16", "bfloat16")])
def test_layers_compute_in_16_bits_under_a_16_bit_policy(policy, dtype):
    """With a 16-bit dtype policy the layers take and return 16-bit tensors, and drop."""
    x = tf.ones((2, 8, 8, 3), dtype)
    for layer in (sdtf.SpatialDropout(0.5, seed=1, dtype=policy),
                  sdtf.DropBlock2D(0.3, 3, seed=1, dtype=policy),
                  sdtf.DropPath(0.5, seed=1, dtype=policy), sdtf.Cutout(3, seed=1, dtype=policy)):
        y = layer(x, training=True)
        assert y.dtype == dtype, type(layer).__name__
        assert 0 < float(tf.reduce_mean(tf.cast(y == 0, tf.float32))) < 1, type(layer).__name__


def test_tensor_rate_gamma_tabulates_the_block_clipped_to_a_known_map(monkeypatch):
    """A Keras layer's rate is a variable, so gamma is found in the graph from a table of
    coverage counts; where the map size is known the table has the clipped block's size
    (14 x 14 = 196 entries here), not the requested one's (300 x 300), and gives the gamma of
    a float rate."""
    from structdrop_tutorial.gamma import exact_gamma
    from structdrop_tutorial.tensorflow import _graph_gamma
    sizes = []
    original = _graph_gamma.coverage_histogram

    def spy(block, spatial, seeds="valid"):
        values, weights = original(block, spatial, seeds)
        sizes.append(int(values.shape[0]))
        return values, weights
    monkeypatch.setattr(_graph_gamma, "coverage_histogram", spy)
    g = _graph_gamma.exact_gamma(tf.constant(0.1), [min(300, 14)] * 2, [14, 14])
    layer = sdtf.DropBlock2D(0.1, 300)
    y = layer(tf.ones((2, 14, 14, 3)), training=True)
    assert y.shape == (2, 14, 14, 3) and sizes == [196, 196]
    np.testing.assert_allclose(float(g), exact_gamma(0.1, 14, (14, 14)), rtol=1e-7)


def test_huge_block_on_a_map_of_unknown_size_is_a_clear_error():
    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3))])
    def f(x):
        return sdtf.dropblock(x, tf.constant(0.1), 1000)
    with pytest.raises(ValueError, match="block_size .* coverage table"):
        f(tf.ones((1, 8, 8, 3)))
    g = tf.function(lambda x: sdtf.dropblock(x, tf.constant(0.1), 9),
                    input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert g(tf.ones((1, 8, 8, 3))).shape == (1, 8, 8, 3)


def test_setting_rate_is_checked_and_takes_effect():
    layer = sdtf.DropBlock2D(0.1, 3)
    x = tf.ones((4, 8, 8, 3))
    layer.rate = 0.0
    assert float(layer.rate_variable.numpy()) == 0.0
    np.testing.assert_array_equal(layer(x, training=True).numpy(), x.numpy())
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        layer.rate = 1.5
    assert layer.rate == 0.0
    layer.rate = 0.25
    assert layer.get_config()["rate"] == 0.25 and np.isclose(float(layer.rate_variable.numpy()), 0.25)


def test_droppath_scale_false_is_the_papers_convention():
    layer = sdtf.DropPath(0.2, scale=False, seed=0)
    x = tf.fill((4000, 3), 2.0)
    y = layer(x, training=True).numpy()
    assert set(np.unique(y).tolist()) <= {0.0, 2.0}
    kept = float((y[:, 0] != 0).mean())
    assert abs(kept - 0.8) < 5 * (0.8 * 0.2 / 4000) ** 0.5  # binomial, 5 sigma
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy() * np.float32(0.8))
    np.testing.assert_array_equal(sdtf.DropPath(0.2)(x, training=False).numpy(), x.numpy())

    @tf.function
    def by_flag(flag):
        return layer(x, training=flag)
    np.testing.assert_array_equal(by_flag(tf.constant(False)).numpy(), x.numpy() * np.float32(0.8))
