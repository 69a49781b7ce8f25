"""Keras 3 layers for structured dropout (TensorFlow backend).

Every layer:

* is the identity at inference (``training`` False or None) and drops only in training;
* keeps its drop rate in a non-trainable float32 variable, ``rate_variable``, so that
  :class:`~structdrop_tutorial.tensorflow.callbacks.LinearRateSchedule` can change it between
  training steps without retracing the compiled train step; the constructor's ``rate`` (the
  target) stays in the config;
* draws its noise from a ``keras.random.SeedGenerator`` built from ``seed`` (reproducible with
  an int seed, different noise on every step);
* round-trips through ``get_config``/``from_config`` and survives ``model.save("m.keras")`` /
  ``keras.models.load_model`` (registered under the package name ``"structdrop"``).

Shapes: ``(batch, *spatial, channels)`` with ``data_format="channels_last"`` (default) or
``(batch, channels, *spatial)`` with ``"channels_first"``; the output has the input's shape.
Its dtype is the layer's compute dtype, as for Keras's own ``Dropout``: under the default
``"float32"`` policy a float16 input is cast to float32 first; a layer built with
``dtype="mixed_float16"`` or ``"mixed_bfloat16"`` (or under that global policy) computes and
returns 16-bit values.
"""
from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from .._checks import (NORMALIZE, SEED_LIMIT, SEEDS, block_rank, check_block_size,
                       check_bool, check_choice, check_data_format, check_fill, check_gamma,
                       check_int, check_rate, check_share)
from . import functional as F
from ._common import _factor_dtype, _times

__all__ = ["SpatialDropout", "DropBlock1D", "DropBlock2D", "DropBlock3D", "DropPath", "Cutout",
           "DropConnectDense"]

_register = keras.saving.register_keras_serializable(package="structdrop")


def _is_training(training):
    return False if training is None else training


def _layer_seed(seed):
    """A layer's ``seed``: None or an int in [0, 2**63) (a NumPy int becomes a Python int, which
    Keras's seed generator and the saved config need); errors name ``seed``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    return int(seed)


class _RateLayer(keras.layers.Layer):
    """Shared plumbing: a checked target ``rate``, its variable and a seed generator.

    The layer drops with ``rate_variable``, which a compiled step reads at every call.
    Setting ``rate`` checks the value and sets the variable to it; a
    :class:`~structdrop_tutorial.tensorflow.callbacks.LinearRateSchedule` then ramps the
    variable towards the new ``rate`` from its next training batch on.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self._rate = check_rate(rate)
        self.seed = _layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.rate_variable = self.add_weight(
            shape=(), name="rate", initializer=keras.initializers.Constant(self.rate),
            trainable=False, dtype="float32", autocast=False)
        self.supports_masking = True

    @property
    def rate(self):
        """The target drop rate (what ``get_config`` saves)."""
        return self._rate

    @rate.setter
    def rate(self, value):
        self._rate = check_rate(value)
        self.rate_variable.assign(self._rate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@_register
class SpatialDropout(_RateLayer):
    """Spatial dropout: drops whole feature maps (Tompson et al. 2015, arXiv:1411.4280).

    One Bernoulli draw per (sample, channel), shared over the 1, 2 or 3 spatial axes, so a
    dropped channel is zero everywhere and survivors are scaled by ``1 / (1 - rate)``. One
    layer covers Keras's ``SpatialDropout1D/2D/3D``.

    Args:
        rate: fraction of channels dropped, in [0, 1].
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        seed: int or None.

    Input shape: rank 3, 4 or 5, ``(batch, *spatial, channels)`` or ``(batch, channels, *spatial)``.
    Output shape: same as the input.
    """

    def __init__(self, rate, data_format="channels_last", seed=None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.data_format = check_data_format(data_format)

    def call(self, inputs, training=None):
        return F.spatial_dropout(inputs, self.rate_variable, self.data_format,
                                 training=_is_training(training), seed=self.seed_generator)

    def get_config(self):
        config = super().get_config()
        config["data_format"] = self.data_format
        return config


class _DropBlock(_RateLayer):
    """DropBlock (Ghiasi, Lin, Le 2018, arXiv:1810.12890) for ``N_SPATIAL`` spatial axes.

    Seeds fall i.i.d. with probability gamma on the seed positions; every seed zeroes a
    ``block_size`` box (clipped to the map, per axis) in its (sample, channel) map, and the
    survivors are rescaled. See :func:`structdrop_tutorial.tensorflow.dropblock` for the
    arguments ``gamma``, ``seeds``, ``share``, ``normalize`` and ``sampler``.

    Args:
        rate: target fraction of dropped units, in [0, 1] (with ``gamma="exact"``, the default,
            the expected drop fraction equals it).
        block_size: int or one int per spatial axis (even sizes allowed).
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        seed: int or None.
    """

    N_SPATIAL = 2

    def __init__(self, rate, block_size, data_format="channels_last", gamma="exact",
                 seeds="valid", share=(), normalize="batch", sampler="auto", seed=None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.block_size = check_block_size(block_size, self.N_SPATIAL)
        self.data_format = check_data_format(data_format)
        self.gamma = check_gamma(gamma)
        self.seeds = check_choice(seeds, "seeds", SEEDS)
        self.share = check_share(share)
        self.normalize = check_choice(normalize, "normalize", NORMALIZE)
        self.sampler = check_choice(sampler, "sampler", F.SAMPLERS)
        self.input_spec = keras.layers.InputSpec(ndim=self.N_SPATIAL + 2)

    def call(self, inputs, training=None):
        return F.dropblock(inputs, self.rate_variable, self.block_size, self.data_format,
                           gamma=self.gamma, seeds=self.seeds, share=self.share,
                           normalize=self.normalize, training=_is_training(training),
                           seed=self.seed_generator, sampler=self.sampler)

    def get_config(self):
        config = super().get_config()
        config.update({"block_size": tuple(self.block_size), "data_format": self.data_format,
                       "gamma": self.gamma, "seeds": self.seeds, "share": tuple(self.share),
                       "normalize": self.normalize, "sampler": self.sampler})
        return config


@_register
class DropBlock1D(_DropBlock):
    """DropBlock over one spatial axis: input ``(batch, steps, channels)`` (channels_last).

    Blocks are runs of ``block_size`` consecutive steps. Ghiasi et al. 2018, arXiv:1810.12890.
    """
    N_SPATIAL = 1


@_register
class DropBlock2D(_DropBlock):
    """DropBlock over two spatial axes: input ``(batch, height, width, channels)`` (channels_last).

    The paper's layer (ResNet-50: block 7, keep 0.9 on groups 3 and 4, rate ramped up linearly
    with :class:`~structdrop_tutorial.tensorflow.callbacks.LinearRateSchedule`).
    Ghiasi et al. 2018, arXiv:1810.12890.
    """
    N_SPATIAL = 2


@_register
class DropBlock3D(_DropBlock):
    """DropBlock over three spatial axes: input ``(batch, depth, height, width, channels)``.

    Ghiasi et al. 2018, arXiv:1810.12890.
    """
    N_SPATIAL = 3


@_register
class DropPath(_RateLayer):
    """Stochastic depth / DropPath for a residual branch (Huang et al. 2016, arXiv:1603.09382).

    Put it on the branch before the addition: ``y = x + DropPath(r)(f(x))``. With
    ``mode="sample"`` each sample's branch is dropped independently; with ``"batch"`` the whole
    batch's. Survivors are scaled by ``1 / (1 - rate)`` when ``scale=True`` (the default; the
    layer is the identity at inference). With ``scale=False`` (the original paper) training keeps
    survivors unscaled and inference multiplies the branch by ``1 - rate``, its expected value.

    Input shape: any, with the batch on ``batch_axis``. Output shape: same as the input.
    """

    def __init__(self, rate, mode="sample", batch_axis=0, scale=True, seed=None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.mode = check_choice(mode, "mode", ("sample", "batch"))
        self.batch_axis = check_int(batch_axis, "batch_axis")
        self.scale = check_bool(scale, "scale")

    def call(self, inputs, training=None):
        training = _is_training(training)

        def dropped(training):
            return F.drop_path(inputs, self.rate_variable, mode=self.mode,
                               batch_axis=self.batch_axis, training=training,
                               seed=self.seed_generator, scale=self.scale)

        if self.scale:  # inverted scaling: the function is the identity at inference
            return dropped(training)

        def infer():  # the paper's inference: the branch times its survival probability
            x = tf.convert_to_tensor(inputs)
            keep = 1.0 - tf.cast(self.rate_variable, tf.float64)
            return _times(x, tf.cast(keep, _factor_dtype(x.dtype)))

        if isinstance(training, (tf.Tensor, tf.Variable)):
            return tf.cond(tf.cast(training, tf.bool), lambda: dropped(True), infer)
        return dropped(True) if training else infer()

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "batch_axis": self.batch_axis, "scale": self.scale})
        return config


@_register
class Cutout(keras.layers.Layer):
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one patch per sample set to ``fill``.

    The patch centre is uniform over the map, so the patch is clipped where it hangs over the
    border; all channels are cut. No rescaling: cutout is data augmentation, applied in training
    only.

    Args:
        size: patch size, int or one int per spatial axis.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        fill: value written into the patch.
        seed: int or None.

    Input shape: rank 3, 4 or 5. Output shape: same as the input.
    """

    def __init__(self, size, data_format="channels_last", fill=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        sizes = check_block_size(size, block_rank(size, "size"), "size")
        self.size = int(size) if isinstance(size, numbers.Integral) else tuple(sizes)
        self.data_format = check_data_format(data_format)
        self.fill = check_fill(fill)
        self.seed = _layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, inputs, training=None):
        return F.cutout(inputs, self.size, self.data_format, fill=self.fill,
                        training=_is_training(training), seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "data_format": self.data_format, "fill": self.fill,
                       "seed": self.seed})
        return config


@_register
class DropConnectDense(_RateLayer):
    """A dense layer with DropConnect (Wan et al. 2013): Bernoulli noise on the weights.

    In training one kernel mask per step (shared by the batch) drops weights with probability
    ``rate`` and scales survivors by ``1 / (1 - rate)``, so inference is the plain dense layer.

    Args:
        units: output size.
        rate: fraction of weights dropped, in [0, 1].
        activation, use_bias, kernel_initializer, bias_initializer: as in ``keras.layers.Dense``.
        seed: int or None.

    Input shape: ``(batch, ..., in)``. Output shape: ``(batch, ..., units)``.
    """

    def __init__(self, units, rate=0.5, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", seed=None,
                 **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.units = check_int(units, "units", 1)
        self.activation = keras.activations.get(activation)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = False

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel",
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(shape=(self.units,), name="bias",
                                     initializer=self.bias_initializer) if self.use_bias else None)

    def call(self, inputs, training=None):
        import tensorflow as tf
        width = self.kernel.shape[0]
        if inputs.shape.rank and inputs.shape[-1] is not None and inputs.shape[-1] != width:
            raise ValueError(f"inputs must have {width} units on the last axis (the width the "
                             f"layer was built for), got shape {tuple(inputs.shape.as_list())}")
        kernel = tf.cast(self.kernel, inputs.dtype)
        bias = None if self.bias is None else tf.cast(self.bias, inputs.dtype)
        out = F.dropconnect_dense(inputs, kernel, bias, self.rate_variable,
                                  training=_is_training(training), seed=self.seed_generator)
        return self.activation(out) if self.activation is not None else out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": keras.activations.serialize(self.activation),
                       "use_bias": self.use_bias,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                       "bias_initializer": keras.initializers.serialize(self.bias_initializer)})
        return config
