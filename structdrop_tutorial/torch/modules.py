"""``torch.nn`` layers for structured dropout.

Every layer is active only in training mode (``module.train()``) and is the identity in
evaluation mode (``module.eval()``). The drop rate is a plain attribute, ``module.rate``, which
:class:`~structdrop_tutorial.torch.LinearSchedule` (or your own code) may change between steps.
Layers accept an optional ``generator`` (a :class:`torch.Generator` on the input's device) for
reproducible masks; they pickle and ``deepcopy`` with it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import (NORMALIZE, SEEDS, block_rank, check_block_size, check_bool,
                       check_choice, check_data_format, check_fill, check_gamma, check_int,
                       check_rate, check_share)
from . import functional as F

__all__ = ["SpatialDropout", "DropBlock", "DropBlock1d", "DropBlock2d", "DropBlock3d", "DropPath",
           "Cutout", "DropConnectLinear"]


class _RateMixin:
    """A validated ``rate`` attribute and an optional generator for the masks."""

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value) -> None:
        self._rate = check_rate(value)

    @property
    def p(self) -> float:
        """Alias of :attr:`rate` (the name ``torch.nn.Dropout`` uses)."""
        return self._rate

    @p.setter
    def p(self, value) -> None:
        self.rate = value


def _check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    return generator


class SpatialDropout(_RateMixin, nn.Module):
    r"""Spatial dropout (Tompson et al. 2015, "Efficient object localization using
    convolutional networks"): each channel of each sample is kept or dropped as a whole.

    Neighbouring activations of a feature map are strongly correlated, so dropping single
    units hardly removes information; dropping whole channels does. Survivors are scaled by
    :math:`1 / (1 - \text{rate})`.

    Args:
        rate: probability of dropping a channel, in [0, 1]. Default: 0.1.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        inplace: write the result into the input.
        generator: optional :class:`torch.Generator` for the masks.

    Shape:
        - Input: :math:`(N, C, *)` with 1 to 3 spatial axes :math:`*` (or :math:`(N, *, C)` for
          ``"channels_last"``). The rank is checked, never guessed.
        - Output: same shape as the input.

    Example::

        >>> layer = SpatialDropout(0.2)
        >>> y = layer(torch.randn(8, 16, 32, 32))
    """

    def __init__(self, rate: float = 0.1, data_format: str = "channels_first", inplace: bool = False,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.rate = rate
        self.data_format = check_data_format(data_format)
        self.inplace = check_bool(inplace, "inplace")
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.spatial_dropout(x, self.rate, self.data_format, training=self.training,
                                 seed=self.generator, inplace=self.inplace)

    def extra_repr(self) -> str:
        s = f"rate={self.rate}, data_format={self.data_format!r}"
        return s + (", inplace=True" if self.inplace else "")


class DropBlock(_RateMixin, nn.Module):
    r"""DropBlock (Ghiasi, Lin & Le 2018, "DropBlock: A regularization method for convolutional
    networks", NeurIPS, arXiv:1810.12890) over ``n_spatial`` spatial axes.

    Seeds are drawn with probability :math:`\gamma` and every seed drops a contiguous
    ``block_size`` block of its feature map; the survivors are rescaled. With
    ``gamma="exact"`` (default) :math:`\gamma` is chosen so that the expected dropped fraction
    equals ``rate`` exactly (overlapping blocks included); ``gamma="paper"`` uses the paper's
    formula, which drops less than ``rate``.

    Args:
        rate: target fraction of dropped units, in [0, 1]. Default: 0.1.
        block_size: int or one int per spatial axis, clipped to the map. Default: 7.
        n_spatial: number of spatial axes (1, 2 or 3), or None to accept any.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        gamma: ``"exact"``, ``"paper"`` or a fixed seed probability.
        seeds: ``"valid"`` (blocks inside the map, the paper) or ``"padded"``.
        share: ``()`` (one mask per sample and channel, the paper), ``"channels"``, ``"batch"``
            or both.
        normalize: ``"batch"`` (scale by kept fraction of the mask, the paper) or ``"rate"``.
        inplace: write the result into the input.
        generator: optional :class:`torch.Generator` for the masks.

    Shape:
        - Input: :math:`(N, C, *)` with ``n_spatial`` spatial axes (or :math:`(N, *, C)`).
        - Output: same shape as the input.

    The paper ramps the rate up linearly during training; see
    :class:`~structdrop_tutorial.torch.LinearSchedule`.
    """

    def __init__(self, rate: float = 0.1, block_size=7, n_spatial: Optional[int] = None,
                 data_format: str = "channels_first", *, gamma="exact", seeds: str = "valid",
                 share=(), normalize: str = "batch", inplace: bool = False,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if n_spatial is not None and check_int(n_spatial, "n_spatial") not in (1, 2, 3):
            raise ValueError(f"n_spatial must be 1, 2, 3 or None, got {n_spatial!r}")
        self.n_spatial = n_spatial
        self.rate = rate
        if n_spatial is not None:
            block_size = check_block_size(block_size, n_spatial)
            if len(set(block_size)) == 1:
                block_size = block_size[0]
        else:
            check_block_size(block_size, block_rank(block_size))
        self.block_size = block_size
        self.data_format = check_data_format(data_format)
        check_gamma(gamma)
        self.gamma = gamma
        self.seeds = check_choice(seeds, "seeds", SEEDS)
        self.share = check_share(share)
        self.normalize = check_choice(normalize, "normalize", NORMALIZE)
        self.inplace = check_bool(inplace, "inplace")
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_spatial is not None and x.ndim != self.n_spatial + 2:
            raise ValueError(f"{type(self).__name__} expects x of rank {self.n_spatial + 2} "
                             f"(batch, channels and {self.n_spatial} spatial axes), got rank {x.ndim}")
        return F.dropblock(x, self.rate, self.block_size, self.data_format, gamma=self.gamma,
                           seeds=self.seeds, share=self.share, normalize=self.normalize,
                           training=self.training, seed=self.generator, inplace=self.inplace)

    def extra_repr(self) -> str:
        parts = [f"rate={self.rate}", f"block_size={self.block_size}"]
        if self.data_format != "channels_first":
            parts.append(f"data_format={self.data_format!r}")
        for name, default in (("gamma", "exact"), ("seeds", "valid"), ("share", ()),
                              ("normalize", "batch"), ("inplace", False)):
            value = getattr(self, name)
            if value != default:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)


class DropBlock1d(DropBlock):
    r"""DropBlock on sequences: input :math:`(N, C, L)` (or :math:`(N, L, C)`).

    See :class:`DropBlock` (Ghiasi et al. 2018, arXiv:1810.12890) for the arguments.
    """

    def __init__(self, rate: float = 0.1, block_size=7, data_format: str = "channels_first", **kwargs):
        super().__init__(rate, block_size, 1, data_format, **kwargs)


class DropBlock2d(DropBlock):
    r"""DropBlock on images: input :math:`(N, C, H, W)` (or :math:`(N, H, W, C)`).

    See :class:`DropBlock` (Ghiasi et al. 2018, arXiv:1810.12890) for the arguments.

    Example::

        >>> layer = DropBlock2d(rate=0.1, block_size=7)
        >>> y = layer(torch.randn(8, 64, 28, 28))
    """

    def __init__(self, rate: float = 0.1, block_size=7, data_format: str = "channels_first", **kwargs):
        super().__init__(rate, block_size, 2, data_format, **kwargs)


class DropBlock3d(DropBlock):
    r"""DropBlock on volumes: input :math:`(N, C, D, H, W)` (or :math:`(N, D, H, W, C)`).

    See :class:`DropBlock` (Ghiasi et al. 2018, arXiv:1810.12890) for the arguments.
    """

    def __init__(self, rate: float = 0.1, block_size=7, data_format: str = "channels_first", **kwargs):
        super().__init__(rate, block_size, 3, data_format, **kwargs)


class DropPath(_RateMixin, nn.Module):
    r"""Stochastic depth / DropPath (Huang et al. 2016, "Deep networks with stochastic depth"):
    drops a residual branch's output for whole samples (``mode="sample"``) or the whole batch
    (``mode="batch"``). Use it on the branch: ``x + drop_path(branch(x))``.

    Args:
        rate: probability of dropping the branch, in [0, 1]. Default: 0.1.
        mode: ``"sample"`` (default) or ``"batch"``.
        batch_axis: the batch axis of the input. Default: 0.
        scale: divide survivors by ``1 - rate`` (default; eval mode is then the identity).
            With ``scale=False`` (the original paper) survivors are not scaled in training and
            eval mode multiplies the branch by ``1 - rate``, its expected value.
        generator: optional :class:`torch.Generator` for the masks.

    Shape:
        - Input: :math:`(N, *)`, any rank >= 1. Output: same shape.
    """

    def __init__(self, rate: float = 0.1, mode: str = "sample", batch_axis: int = 0,
                 scale: bool = True, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.rate = rate
        self.mode = check_choice(mode, "mode", ("sample", "batch"))
        self.batch_axis = check_int(batch_axis, "batch_axis")
        self.scale = check_bool(scale, "scale")
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and not self.scale:  # the paper's inference
            return x * (1.0 - self.rate)
        return F.drop_path(x, self.rate, mode=self.mode, batch_axis=self.batch_axis,
                           training=self.training, seed=self.generator, scale=self.scale)

    def extra_repr(self) -> str:
        s = f"rate={self.rate}, mode={self.mode!r}"
        if self.batch_axis != 0:
            s += f", batch_axis={self.batch_axis}"
        return s + ("" if self.scale else ", scale=False")


class Cutout(nn.Module):
    r"""Cutout (DeVries & Taylor 2017, "Improved regularization of convolutional neural networks
    with cutout"): one ``size`` patch per sample, centred uniformly on the map (clipped at the
    border), is set to ``fill`` in every channel. Active in training mode only; no rescaling.

    Args:
        size: int or one int per spatial axis.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        fill: value written into the patch. Default: 0.
        generator: optional :class:`torch.Generator` for the centres.

    Shape:
        - Input: :math:`(N, C, *)` with 1 to 3 spatial axes. Output: same shape.
    """

    def __init__(self, size, data_format: str = "channels_first", fill: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        check_block_size(size, block_rank(size, "size"), "size")
        self.size = size
        self.data_format = check_data_format(data_format)
        self.fill = check_fill(fill)
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.cutout(x, self.size, self.data_format, fill=self.fill, training=self.training,
                        seed=self.generator)

    def extra_repr(self) -> str:
        s = f"size={self.size}"
        if self.data_format != "channels_first":
            s += f", data_format={self.data_format!r}"
        return s + (f", fill={self.fill}" if self.fill != 0.0 else "")


class DropConnectLinear(_RateMixin, nn.Linear):
    r"""``nn.Linear`` with DropConnect (Wan et al. 2013, "Regularization of neural networks using
    DropConnect"): in training mode each weight is dropped with probability ``rate`` (one mask
    per forward call, shared by the batch) and survivors are scaled by ``1 / (1 - rate)``; in
    evaluation mode it is the plain linear layer. The bias is never dropped.

    Args:
        in_features, out_features, bias, device, dtype: as in :class:`torch.nn.Linear`.
        rate: probability of dropping a weight, in [0, 1]. Default: 0.5.
        generator: optional :class:`torch.Generator` for the masks.

    Shape:
        - Input: :math:`(*, H_{in})`. Output: :math:`(*, H_{out})`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rate: float = 0.5,
                 generator: Optional[torch.Generator] = None, device=None, dtype=None):
        # checked: in DropConnectLinear(3, 4, 0.2) the 0.2 is the bias, not the rate
        bias = check_bool(bias, "bias")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rate = rate
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F._as_float_tensor(x)  # NumPy arrays and lists too, in both modes
        if x.ndim and x.shape[-1] != self.in_features:
            raise ValueError(f"x must have in_features = {self.in_features} units on its last "
                             f"axis, got shape {tuple(x.shape)}")
        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x must have the layer's dtype {self.weight.dtype}, got {x.dtype}")
        if not self.training or self.rate == 0.0:  # nn.Linear's own call: the same bits in 16-bit
            return super().forward(x)              # too (one rounding of x @ W.T + b)
        return F.dropconnect_dense(x, self.weight.t(), self.bias, self.rate, training=self.training,
                                   seed=self.generator)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rate={self.rate}"
