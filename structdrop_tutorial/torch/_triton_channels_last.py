"""The Triton DropBlock path for inputs whose channels are innermost in memory.

``model.to(memory_format=torch.channels_last)`` stores unit ``(n, c, h, w)`` of an ``N x C x H x W``
tensor at ``((n * H + h) * W + w) * C + c``, and data in ``channels_last`` format is laid out
the same way. The row-word mask of :mod:`._triton` does not depend on the layout: it is drawn
for the channels_first rows ``(n, c, h)``, so a seed gives the same mask in every layout. Only
the product reads the input, and :func:`._triton_kernels.masked_rows_cl_kernel` reads it in its
own memory order, a row of the map by a block of channels at a time, each channel's word loaded
once per row. Neither the input nor the
output is copied to channels_first and back, as the general route for other layouts does
(:func:`structdrop_tutorial.torch.functional._triton_in_nchw`, two more passes over the data
each way).

Served here: per-channel masks with row words (maps and rows of seeds at most 64 units wide)
whose check has passed on the device (:func:`checked_rows`: until a call of the geometry, in
any layout, has taken the general route, which checks it), no ``inplace``, no functorch
transform or wrapped tensor. Should the kernel fail on its first use on a device, such inputs
take the general route there from then on (after one warning). The masks,
outputs and gradients are the general route's for the same seed (the tests compare them): the
mask is drawn by the same function, so the generator's state after a call is the same too. Forward
and backward run the kernel; double backward uses tensor operations, as
:class:`._triton.MaskedScale` does.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional

import torch

from . import _launch, _triton

# devices where the kernel failed on its first use: the general route serves them
_FAILED: Dict[str, str] = {}


def checked_rows(x: torch.Tensor, block, seeds: str) -> Optional[_triton.RowGeometry]:
    """The row-word geometry of ``x`` (channels_first shape, any layout) where row words serve
    it and their first-use check has passed on x's device, else None."""
    if (not _triton.ROW_WORDS or torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return None
    device = str(x.device)
    if device in _triton._ROWS_FAILED or device in _triton._FAILED or device in _FAILED:
        return None
    geo = _triton.row_geometry(tuple(x.shape), tuple(block), seeds, _triton.ROW_ITEMS)
    return geo if geo is not None and (device, geo) in _triton._ROWS_CHECKED else None


def product(p: torch.Tensor, words: torch.Tensor, param, from_count: bool,
            out: torch.Tensor) -> torch.Tensor:
    """``out = p * keep * scale``, where ``p`` (contiguous) holds the units in ``(N, *spatial,
    C)`` order and ``words`` are the channels_first rows' words followed by the count of kept
    units; ``param`` is the scale (a Python float) where not ``from_count``."""
    n = p.numel()
    c, w = p.shape[-1], p.shape[-2]
    rows = math.prod(p.shape[1:-2])
    _triton.check_row_words(words, n, w)
    bits = 0 if from_count else _triton._float64_bits(param)
    key = _triton.product_key(p.dtype, p.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0, n,
                              from_count) + ("channels last", c, rows, w)
    grid, tail = launch_args(n, c, rows, w, bits, from_count, p.dtype == torch.float64)
    with _triton._on(p.device):
        _launch.launch(_triton._kernels().masked_rows_cl_kernel, grid, key, (p, words, out) + tail,
                       _triton.APPLY_WARPS)
    return out


def launch_args(n: int, c: int, rows: int, w: int, bits: int, from_count: bool,
                wide: bool) -> tuple:
    """The kernel's launch grid and its arguments after the three pointers, for ``n`` units in
    rows of ``w`` columns, ``rows`` rows per sample and channel, ``c`` channels (the plans of
    :mod:`._prepared` launch it with these too)."""
    wp, cb = tile(w, c)
    return (n // (w * c), -(-c // cb)), (bits, n, n, c, rows, w, from_count, wide, wp, cb)


def tile(w: int, c: int) -> tuple:
    """The kernel's tile ``(WP, CB)``: a row's ``w`` columns padded to a power of two, times
    as many channels (a power of two, at most ``c``'s) as make about ``APPLY_BLOCK`` units,
    and enough that the channel blocks fit the launch grid's second axis."""
    wp = _triton._pow2(w)
    cb = min(_triton._pow2(c), max(1, _triton.APPLY_BLOCK // wp))
    while -(-c // cb) > _triton._GRID_LIMIT:
        cb *= 2
    return wp, cb


class ChannelsLastProduct(torch.autograd.Function):
    """:func:`product` with its backward pass (the same kernel on the gradient); saves the row
    words (8 bytes per row, then the count) and keeps the scale as a float."""

    @staticmethod
    def forward(ctx, p, words, param, from_count):
        out = product(p, words, param, from_count, torch.empty_like(p))
        ctx.save_for_backward(words)
        ctx.param, ctx.from_count = param, from_count
        return out

    @staticmethod
    def backward(ctx, grad):
        (words,) = ctx.saved_tensors
        if grad.requires_grad:  # double backward: tensor operations on the channels_first view
            out = _triton.differentiable_product(grad.movedim(-1, 1), words, ctx.param,
                                                 ctx.from_count).movedim(1, -1)
            return out, None, None, None
        grad = grad.contiguous()
        return (product(grad, words, ctx.param, ctx.from_count, torch.empty_like(grad)),
                None, None, None)


def dropblock(x: torch.Tensor, geo, gamma: float, normalize: str, rate: float,
              generator: Optional[torch.Generator]) -> Optional[torch.Tensor]:
    """DropBlock of ``x`` (channels_first shape, channels innermost in memory) with the row
    words of ``geo`` (from :func:`checked_rows`); the result has x's layout. None where the
    kernel failed on its first use on this device (with a warning): the caller takes the
    general route, then and from then on."""
    device = str(x.device)
    p = x.permute(0, *range(2, x.ndim), 1)
    signature = (device, geo, x.dtype, normalize, "channels last")
    if signature in _triton._CHECKED:
        out = _run(p, geo, gamma, normalize, rate, generator)
    else:
        try:
            out = _run(p, geo, gamma, normalize, rate, generator)
        except Exception as exc:  # first use on this device: compile or launch failed
            _FAILED[device] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"structdrop: the Triton DropBlock channels-last kernel failed on "
                          f"{device} ({_FAILED[device][:300]}); inputs with channels innermost "
                          "go through a channels_first copy on this device from now on",
                          RuntimeWarning, stacklevel=3)
            return None
        _triton._CHECKED.add(signature)
    return out.permute(0, x.ndim - 1, *range(1, x.ndim - 1))


def _run(p, geo, gamma, normalize, rate, generator):
    """The mask the general route draws (:func:`._triton.drawn_mask`), and the product."""
    words, param, from_count = _triton.drawn_mask(p, gamma, geo, normalize, rate, generator)
    return ChannelsLastProduct.apply(p, words, param, from_count)
