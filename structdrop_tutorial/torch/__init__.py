"""PyTorch structured dropout: functions with the same names as :mod:`structdrop_tutorial.numpy`,
``torch.nn`` layers and a linear rate schedule.

The layout defaults to ``"channels_first"`` -- ``(batch, channels, *spatial)`` -- as in PyTorch::

    from structdrop_tutorial import torch as sdt
    y = sdt.dropblock(x, rate=0.1, block_size=7)             # functional
    layer = sdt.DropBlock2d(rate=0.1, block_size=7)          # module, active in train() only
    schedule = sdt.LinearSchedule(model, 0.1, total_steps)   # ramp every layer's rate

Given the same ``uniform=`` noise, every function returns what the NumPy reference returns;
without it, masks are drawn on the input's device from ``seed`` (int or ``torch.Generator``).
On a CUDA machine an eager DropBlock call runs its planned work in a small C++ extension once
it is built (in the background by default; :func:`native_extension`).
"""
from .functional import (bernoulli_compare, bernoulli_relu_sign, cutout, drop_path, dropblock,
                         dropblock_keep_mask, dropconnect_dense, dropout, spatial_dropout)
from .modules import (Cutout, DropBlock, DropBlock1d, DropBlock2d, DropBlock3d, DropConnectLinear,
                      DropPath, SpatialDropout)
from ._native import native_extension
from .schedule import LinearSchedule

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense",
           "SpatialDropout", "DropBlock", "DropBlock1d", "DropBlock2d", "DropBlock3d",
           "DropPath", "Cutout", "DropConnectLinear", "LinearSchedule", "native_extension"]
