"""Structured dropout for TensorFlow and Keras 3.

``from structdrop_tutorial import tensorflow as sdtf`` gives the functions of
:mod:`structdrop_tutorial.numpy` (same names and arguments, ``"channels_last"`` by default) that
work eagerly, inside ``tf.function`` with unknown sizes and under XLA, plus Keras layers and the
rate-schedule callback.
"""
from .functional import (bernoulli_compare, bernoulli_relu_sign, cutout, drop_path, dropblock,
                         dropblock_keep_mask, dropconnect_dense, dropout, spatial_dropout)

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]

try:  # the layers need Keras 3; the functions need only TensorFlow
    from .layers import (Cutout, DropBlock1D, DropBlock2D, DropBlock3D, DropConnectDense,
                         DropPath, SpatialDropout)
    from .callbacks import LinearRateSchedule
except ImportError:  # pragma: no cover - Keras missing or the layers not written yet
    pass
else:
    __all__ += ["SpatialDropout", "DropBlock1D", "DropBlock2D", "DropBlock3D", "DropPath",
                "Cutout", "DropConnectDense", "LinearRateSchedule"]
