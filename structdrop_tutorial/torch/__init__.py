"""PyTorch structured dropout: functions (same names as :mod:`structdrop_tutorial.numpy`),
``nn.Module`` layers and a linear rate schedule.

Layout defaults to ``"channels_first"`` -- ``(batch, channels, *spatial)`` -- as in PyTorch::

    from structdrop_tutorial import torch as sdt
    y = sdt.dropblock(x, rate=0.1, block_size=7)            # functional
    layer = sdt.DropBlock2d(rate=0.1, block_size=7)         # module
"""
from .functional import (bernoulli_compare, bernoulli_relu_sign, cutout, drop_path, dropblock,
                         dropblock_keep_mask, dropconnect_dense, dropout, spatial_dropout)

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]

try:  # modules and schedule (added incrementally)
    from .modules import (Cutout, DropBlock, DropBlock1d, DropBlock2d, DropBlock3d,  # noqa: F401
                          DropConnectLinear, DropPath, SpatialDropout)
    from .schedule import LinearSchedule  # noqa: F401
    __all__ += ["SpatialDropout", "DropBlock", "DropBlock1d", "DropBlock2d", "DropBlock3d",
                "DropPath", "Cutout", "DropConnectLinear", "LinearSchedule"]
except ImportError:  # pragma: no cover
    pass
