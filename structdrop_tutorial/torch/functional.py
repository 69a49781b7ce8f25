"""Structured dropout for PyTorch tensors: the functional API.

The names, arguments and results match :mod:`structdrop_tutorial.numpy` (the reference), except
that the default layout is ``"channels_first"`` -- ``(batch, channels, *spatial)`` -- as
everywhere in PyTorch. Given the same ``uniform=`` noise the two modules return identical
masks and outputs; without it, fresh noise is drawn on the input's device from ``seed`` (an int
or a :class:`torch.Generator`; ``None`` uses PyTorch's global generator).

Masks never require gradients; the gradient of every function with respect to ``x`` is the
mask times the scale. DropBlock without ``uniform`` uses a fast sampler (see
:mod:`structdrop_tutorial.torch._fast`) that draws only the seeds instead of one uniform per
seed position; with ``uniform`` it follows the reference step by step. On CUDA, where Triton is
importable, DropBlock with per-channel masks runs as two Triton kernels instead
(:mod:`structdrop_tutorial.torch._triton`): the seeds come from a counter-based generator inside
the mask kernel, same distribution, same expansion. The kernels take a contiguous
channels_first tensor; an input in another layout (channels_last data, channels_last memory
format, a strided view) is run as its contiguous channels_first copy and the result returned in
its own layout, so on CUDA a seed gives the same mask in every layout. Where the channels are
innermost in memory and the mask fits one 64-bit word per row, a product kernel of their own
reads them in place instead, with the same masks, once a call of the geometry (in any layout)
has checked it on the device (:mod:`structdrop_tutorial.torch._triton_channels_last`). (On the CPU a seed gives
the same mask for every memory layout of one data_format; channels_last data draws its seeds in
its own order, so other masks than channels_first data from the same seed.) Under
``torch.compile`` DropBlock's samplers are not traced: the graph breaks and the call runs
eagerly, with an eager call's masks for the same seed (see ``_dropblock_untraced``).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .._checks import (SEEDS, check_block_size, check_choice, check_data_format,
                       check_dense_shapes, check_dropblock_options, check_float_dtype_name,
                       check_bool, check_fill, check_gamma, check_int, check_n_spatial,
                       check_rate, check_seed_int)
from ..gamma import _check_gamma, clip_block, resolve_gamma
from ..shapes import (drop_path_noise_shape, noise_shape as _noise_shape, seed_grid_shape,
                      spatial_axes)
from ._fast import (_compiling, bernoulli_positions, count_true, masked_scale, rand as _rand,
                    scale_from_count)
from ._paint import seeds_to_dropped, seeds_to_keep_from_table, use_table, window_or
from . import _prepared, _triton, _triton_channels_last

__all__ = ["bernoulli_compare", "bernoulli_relu_sign", "dropout", "spatial_dropout",
           "dropblock", "dropblock_keep_mask", "cutout", "drop_path", "dropconnect_dense"]

Seed = Union[None, int, torch.Generator]


# --------------------------------------------------------------------------- helpers
def _as_float_tensor(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    check_float_dtype_name(str(x.dtype).replace("torch.", ""), name)
    return x


def _generator(seed: Seed, device) -> Optional[torch.Generator]:
    """A generator for ``device``: the one given, a fresh one seeded with an int, or None."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, an int or a torch.Generator, got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(check_seed_int(seed, "a torch.Generator"))
    return g


def _uniform(shape, seed: Seed, uniform, device, name: str = "uniform") -> torch.Tensor:
    """The noise tensor: ``uniform`` checked against ``shape`` and moved to ``device``, or fresh draws."""
    if uniform is None:
        return _rand(tuple(shape), _generator(seed, device), device=device)
    shape = tuple(int(s) for s in shape)
    uniform = torch.as_tensor(uniform, device=device)
    if tuple(uniform.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(uniform.shape)}")
    return uniform


_HALF = (torch.float16, torch.bfloat16)


def _keep_scaled(x: torch.Tensor, keep: torch.Tensor, scale: float, inplace: bool) -> torch.Tensor:
    """``x * keep * scale`` in x's dtype; ``keep`` broadcasts against ``x``. For float16 and
    bfloat16 the product is formed in float32 and rounded once (the scale is not rounded to the
    input's dtype first), as on the full-size path."""
    if keep.numel() == x.numel():  # full-size mask: keep 1 byte per unit for backward
        return masked_scale(x, keep, scale, inplace)
    if x.dtype in _HALF:  # x * keep is exact; multiplying by a Python float rounds once
        return x.mul_(keep.to(x.dtype)).mul_(scale) if inplace else \
            torch.addcmul(torch.zeros((), dtype=x.dtype, device=x.device), x, keep.to(x.dtype),
                          value=scale)
    factor = keep.to(x.dtype) * scale  # small broadcast mask: a plain multiply is cheapest
    return x.mul_(factor) if inplace else x * factor


def _check_inplace(x: torch.Tensor) -> None:
    """PyTorch's own errors for an in-place write into a leaf that requires grad (or a view of
    one), raised before anything is written: the masks are applied under ``no_grad`` inside an
    autograd function, where autograd would only object after the input had been changed."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return
    if x.is_leaf:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                           "operation.")
    base = x._base
    if base is not None and base.is_leaf and base.requires_grad:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                           "in-place operation.")


def _zeros(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Zeros shaped like x that stay connected to the graph (gradient zero, never NaN, also
    where x is infinite)."""
    if inplace:
        return x.zero_()
    nothing = torch.zeros((), dtype=torch.bool, device=x.device).expand(x.shape)
    return torch.where(nothing, x, torch.zeros((), dtype=x.dtype, device=x.device))


def bernoulli_compare(uniform, keep_prob):
    """Keep mask by comparison: 1.0 where ``uniform < keep_prob``, else 0.0 (float32)."""
    return (torch.as_tensor(uniform) < keep_prob).to(torch.float32)


def bernoulli_relu_sign(uniform, keep_prob):
    """The same Bernoulli mask as ``relu(sign(keep_prob - uniform))`` (float32).

    ``sign`` is +1 where ``uniform < keep_prob``, -1 above and 0 on a tie; ``relu`` maps -1 and 0
    to 0, so for continuous noise this equals :func:`bernoulli_compare`.
    """
    u = torch.as_tensor(uniform).to(torch.float64)
    return torch.relu(torch.sign(keep_prob - u)).to(torch.float32)


# --------------------------------------------------------------------------- dropout
def dropout(x, rate, noise_shape=None, *, training=True, seed: Seed = None, uniform=None,
            inplace=False):
    """Inverted dropout with a Keras-style noise shape.

    Args:
        x: floating-point tensor of any shape.
        rate: probability of dropping a unit (or a whole slice), in [0, 1].
        noise_shape: shape of the mask, broadcast against ``x``; ``None`` entries take x's
            size; ``None`` means ``x.shape`` (i.i.d. dropout).
        training: when False, ``x`` is returned unchanged.
        seed: None, an int or a :class:`torch.Generator` on x's device.
        uniform: optional U[0, 1) noise of shape ``noise_shape``; a unit is dropped where
            ``uniform < rate``.
        inplace: write the result into ``x``.

    Returns:
        ``x * mask / (1 - rate)``: same shape, dtype and device as ``x``.
    """
    rate = check_rate(rate)
    x = _as_float_tensor(x)
    if noise_shape is None:
        shape = tuple(x.shape)
    else:
        shape = tuple(x.shape[a] if s is None else check_int(s, "noise_shape entries")
                      for a, s in enumerate(noise_shape))
        if len(shape) != x.ndim or any(s not in (1, n) for s, n in zip(shape, x.shape)):
            raise ValueError(f"noise_shape must have x's rank {x.ndim} with each entry 1 or the "
                             f"size of x on that axis {tuple(x.shape)}, got {tuple(noise_shape)}")
    return _dropout(x, rate, shape, training, seed, uniform, inplace)


def _dropout(x, rate: float, shape: tuple, training, seed, uniform, inplace) -> torch.Tensor:
    """:func:`dropout` after its checks (``rate`` a float in [0, 1], ``shape`` the noise shape)."""
    inplace = check_bool(inplace, "inplace")
    if not training or rate == 0.0:
        return x
    if inplace:
        _check_inplace(x)
    if rate == 1.0:
        return _zeros(x, inplace)
    u = _uniform(shape, seed, uniform, x.device)
    scale = 1.0 / (1.0 - rate)
    if uniform is None and u.dtype == x.dtype and u.numel() != x.numel():
        # a fresh draw for a small mask, already in x's dtype: compare and scale it in place
        # (the values of (u >= rate).to(x.dtype) * scale, two fewer tensors), one multiply of x
        factor = u.ge_(rate).mul_(scale)
        return x.mul_(factor) if inplace else x * factor
    return _keep_scaled(x, u >= rate, scale, inplace)


def spatial_dropout(x, rate, data_format="channels_first", *, training=True, seed: Seed = None,
                    uniform=None, inplace=False):
    """Spatial dropout (Tompson et al. 2015): whole channels of each sample are dropped.

    Args:
        x: tensor of rank 3, 4 or 5: ``(N, C, *spatial)`` (``"channels_first"``, default) or
            ``(N, *spatial, C)`` (``"channels_last"``). Unlike ``torch.nn.Dropout2d`` the rank
            is checked, never guessed: a rank-3 input has one spatial axis.
        rate: probability of dropping a channel of a sample, in [0, 1].
        uniform: optional noise of the ``"spatial"`` noise shape: ``(N, C, 1, ...)`` for
            channels_first, ``(N, 1, ..., C)`` for channels_last.

    Returns:
        Tensor of x's shape and dtype; survivors are scaled by ``1 / (1 - rate)``.
    """
    check_data_format(data_format)
    x = _as_float_tensor(x)
    check_n_spatial(x.ndim)
    return _dropout(x, check_rate(rate), _noise_shape("spatial", tuple(x.shape), data_format),
                    training, seed, uniform, inplace)


# --------------------------------------------------------------------------- DropBlock
def dropblock_keep_mask(uniform, gamma, block_size, data_format="channels_first", seeds="valid"):
    """The deterministic core of DropBlock: seeds from noise, blocks from seeds.

    Args:
        uniform: one U[0, 1) draw per seed position (tensor or array), shaped like the input
            but with each spatial axis ``map - block + 1`` long (``seeds="valid"``) or
            ``map + block - 1`` (``seeds="padded"``).
        gamma: seed probability; a seed is where ``uniform < gamma``.
        block_size: int or one int per spatial axis, already clipped to the map.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        seeds: ``"valid"`` (seed ``s`` drops ``s .. s + b - 1``) or ``"padded"`` (seed ``s``
            drops ``s - b + 1 .. s``, clipped to the map).

    Returns:
        Boolean keep mask (True = kept) with the map's spatial size, on uniform's device.
    """
    check_choice(seeds, "seeds", SEEDS)
    check_data_format(data_format)
    uniform = torch.as_tensor(uniform)
    n_spatial = check_n_spatial(uniform.ndim, "uniform")
    block = check_block_size(block_size, n_spatial)
    if not isinstance(gamma, torch.Tensor):  # a number (tensors broadcast against uniform)
        gamma = _check_gamma(gamma)
    dropped = uniform < gamma
    for axis, b in zip(spatial_axes(uniform.ndim, data_format), block):
        if seeds == "valid":
            pad_shape = list(dropped.shape)
            pad_shape[axis] = b - 1
            pad = dropped.new_zeros(pad_shape)
            dropped = torch.cat([pad, dropped, pad], dim=axis)
        elif uniform.shape[axis] - b + 1 < b:
            raise ValueError(f"block_size {block_size} does not fit a map of "
                             f"{uniform.shape[axis] - b + 1} from a padded seed grid")
        dropped = window_or(dropped, axis, b)
    return ~dropped


def _batch_scale(keep: torch.Tensor, dtype: torch.dtype):
    """``mask.numel() / kept`` (0 when nothing is kept): a float on the CPU, else a 0-d tensor
    (no device synchronization)."""
    total = keep.numel()
    kept = count_true(keep)
    if keep.device.type == "cpu":
        kept = int(kept)
        return total / kept if kept else 0.0
    return scale_from_count(kept, total, dtype)


def _dropblock_plan_uncached(shape, rate, block_size, data_format, gamma, seeds, share, normalize):
    """Checked arguments of :func:`dropblock`: ``(rate, share, spatial, block, gamma)``; block and
    gamma are None where the call returns before using them (rate 0 or 1, an empty map)."""
    rate = check_rate(rate)
    share = check_dropblock_options(data_format, seeds, normalize, share)
    n_spatial = check_n_spatial(len(shape))
    spatial = tuple(int(shape[a]) for a in spatial_axes(len(shape), data_format))
    check_block_size(block_size, n_spatial)
    check_gamma(gamma)  # also where the call returns before using it
    if rate in (0.0, 1.0) or 0 in spatial:
        return rate, share, spatial, None, None
    block = clip_block(block_size, spatial)
    return rate, share, spatial, block, resolve_gamma(gamma, rate, block, spatial, seeds)


_PLAIN = (int, float, str, type(None))
_PLANS: dict = {}  # (args, their types with tuples' item types) -> plan, for plain arguments
_MAX_PLANS = 512


def _dropblock_plan(shape, rate, block_size, data_format, gamma, seeds, share, normalize):
    """:func:`_dropblock_plan_uncached`, cached when every argument is a plain Python value (the
    checks and the exact gamma cost more than a GPU kernel launch). The key holds the types as
    well (7 and 7.0 are equal keys, but only the int is a valid block size)."""
    args = (shape, rate, block_size, data_format, gamma, seeds, share, normalize)
    if _compiling():  # dynamo traces through caches (and warns): plain checks there
        return _dropblock_plan_uncached(*args)
    types = tuple(tuple(map(type, a)) if type(a) is tuple else type(a) for a in args)
    key = (args, types)
    try:
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable argument (a list, an array): plain checks
        return _dropblock_plan_uncached(*args)
    if plan is not None:
        return plan
    plan = _dropblock_plan_uncached(*args)
    if all(t in _PLAIN or (type(t) is tuple and all(u in _PLAIN for u in t)) for t in types):
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def dropblock(x, rate, block_size, data_format="channels_first", *, gamma="exact", seeds="valid",
              share=(), normalize="batch", training=True, seed: Seed = None, uniform=None,
              inplace=False):
    """DropBlock (Ghiasi et al. 2018, arXiv:1810.12890) over 1, 2 or 3 spatial axes.

    Args:
        x: tensor of rank 3, 4 or 5, ``(N, C, *spatial)`` or ``(N, *spatial, C)``.
        rate: target fraction of dropped units, in [0, 1].
        block_size: int or one int per spatial axis; clipped to the map per axis. Even sizes
            work (blocks are indexed by their first unit).
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        gamma: ``"exact"`` (expected drop fraction equals ``rate``), ``"paper"`` (the paper's
            formula) or a number used as the seed probability.
        seeds: ``"valid"`` (blocks inside the map, as in the paper) or ``"padded"``.
        share: ``()`` (one mask per sample and channel, as in the paper), or any of
            ``"channels"`` and ``"batch"`` to share the mask over those axes.
        normalize: ``"batch"`` scales by ``mask.numel() / kept`` (zeros when all is dropped) or
            ``"rate"`` by ``1 / (1 - rate)``.
        training, seed, uniform, inplace: as in :func:`dropout`. ``uniform`` has the shape
            :func:`structdrop_tutorial.shapes.seed_grid_shape` gives and selects the reference
            path; without it the seeds are drawn sparsely (same distribution, much faster), on
            CUDA inside a Triton kernel (see the module docstring).

    Returns:
        Tensor of x's shape, dtype and device.
    """
    if training and uniform is None and _compiling():  # see _dropblock_untraced
        return _dropblock_untraced(x, rate, block_size, data_format, gamma, seeds, share,
                                   normalize, training, seed, uniform, inplace)
    return _dropblock_call(x, rate, block_size, data_format, gamma, seeds, share, normalize,
                           training, seed, uniform, inplace)


def _dropblock_call(x, rate, block_size, data_format, gamma, seeds, share, normalize, training,
                    seed, uniform, inplace):
    """:func:`dropblock`'s work: through the signature's plan where it has one (see
    :mod:`._prepared`), else :func:`_dropblock` after the ``inplace`` check."""
    if (training and uniform is None and type(share) is tuple and not share and _prepared._PLANS
            and (inplace is False or inplace is True)):
        plan = _prepared.find(x, rate, block_size, data_format, gamma, seeds, normalize, inplace)
        if plan is not None:
            if inplace:
                _check_inplace(x)
            return _prepared.dropblock(plan, x, _generator(seed, plan.device), inplace)
    return _dropblock(x, rate, block_size, data_format, gamma, seeds, share, normalize, training,
                      seed, uniform, check_bool(inplace, "inplace"))


def _dropblock(x, rate, block_size, data_format, gamma, seeds, share, normalize, training, seed,
               uniform, inplace):
    """:func:`dropblock` after its ``inplace`` check and the plan lookup."""
    call = (rate, block_size, data_format, gamma, seeds, normalize)
    x = _as_float_tensor(x)
    rate, share, spatial, block, g = _dropblock_plan(
        tuple(x.shape), rate, block_size, data_format, gamma, seeds, share, normalize)
    if not training or rate == 0.0:
        return x
    if inplace:
        _check_inplace(x)
    if rate == 1.0:
        return _zeros(x, inplace)
    if 0 in spatial:
        return x if inplace else x.clone()
    if uniform is None and _triton.usable(x, data_format, share):  # CUDA: two fused kernels
        out = _triton.dropblock(x, g, block, seeds, normalize, rate, _generator(seed, x.device),
                                inplace)
        if out is not None:
            _prepared.remember(x, *call, g, block)
            return out
    elif uniform is None and _triton.usable_in_nchw(x, data_format, share):
        out = _triton_in_nchw(x, data_format, g, block, seeds, normalize, rate,
                              _generator(seed, x.device), inplace, call)
        if out is not None:
            return out
    axes = spatial_axes(x.ndim, data_format)
    grid = seed_grid_shape(tuple(x.shape), block, data_format, seeds, share)
    with torch.no_grad():
        if uniform is not None:
            u = _uniform(grid, seed, uniform, x.device)
            keep = dropblock_keep_mask(u, g, block, data_format, seeds)
        else:
            total = math.prod(grid)
            flat = bernoulli_positions(total, g, _generator(seed, x.device), x.device)
            # On the CPU, small maps with few seeds each copy a precomputed single-seed mask per
            # map; other cases write every block by index (see _paint for both and the
            # measurements).
            if use_table(grid, axes, block, spatial, seeds, flat.numel(), x.device):
                keep = seeds_to_keep_from_table(flat, grid, axes, block, spatial, seeds)
            else:
                keep = seeds_to_dropped(flat, grid, axes, block, spatial, seeds, keep=True)
        if normalize == "batch":
            scale = _batch_scale(keep, x.dtype)
        else:
            scale = 1.0 / (1.0 - rate)
    return masked_scale(x, keep, scale, inplace)


# Under torch.compile, dropblock's samplers (no ``uniform``) are not traced: dynamo breaks the
# graph there and calls _dropblock_call eagerly (plans included: dynamo never reads them), which
# then gives the masks an eager call gives for the same seed. Traced, the CPU sampler reads the
# number of seeds on the host (a graph break and a recompilation per count, up to dynamo's limit)
# and the CUDA path's Triton launches recompiled dynamo's frames up to that limit as well.
# Measured on an H100 (book chapter 8, ``benchmarks/compile_torch.py``): a compiled
# forward+backward of DropBlock alone cost 2.1 to 2.7 times a compiled ``x * mask`` traced, 0.49
# to 0.76 times it untraced (that compiled multiply itself cost 3.3 to 5.9 times its eager step).
# torch._disable_dynamo imports dynamo on first use, not with this module (a second at import);
# non-strict torch.export, for which _compiling() is true but dynamo does not run, traces
# _dropblock as before.
_disable = getattr(torch, "_disable_dynamo", None) or getattr(
    getattr(torch, "compiler", None), "disable", None)
_dropblock_untraced = _disable(_dropblock_call) if _disable is not None else _dropblock_call


# --------------------------------------------------------------------------- the family
def _triton_in_nchw(x, data_format, g, block, seeds, normalize, rate, generator, inplace, call):
    """The Triton kernels for an input they do not take as it is (channels_last data or memory
    format, a strided view): run on its contiguous channels_first copy (or view, where that is
    already contiguous), so that a seed gives the same mask in every layout, and return the
    result in x's layout (and strides, where x is dense; a strided slice gets a contiguous
    result, as from PyTorch's own elementwise operations). Each copy moves two thirds of the
    bytes of the floor's multiply: an eager step on an H100 cost 2.2 to 2.7 floors (a contiguous
    input 1.1 to 1.5 in the same probe), where the tensor-operation path costs 10 to 13 floors
    (chapter 8). Channels innermost in memory (channels_last data or memory format) with row
    words skip the copies once their geometry is checked (:mod:`._triton_channels_last`). None
    where the kernels do not serve the shape. ``call``: dropblock's arguments, for the plan of
    a channels-innermost signature (:mod:`._prepared`)."""
    v = x.movedim(-1, 1) if data_format == "channels_last" else x
    if (not inplace and not v.is_contiguous()
            and v.permute(0, *range(2, v.ndim), 1).is_contiguous()):
        geo = _triton_channels_last.checked_rows(v, block, seeds)
        if geo is not None:  # channels innermost: the product reads them where they are
            out = _triton_channels_last.dropblock(v, geo, g, normalize, rate, generator)
            if out is not None:  # (None: the kernel failed on its first use; copies below)
                out = out.movedim(1, -1) if data_format == "channels_last" else out
                _prepared.remember(x, *call, g, block)
                return out if out.stride() == x.stride() else torch.empty_like(x).copy_(out)
    copied = not v.is_contiguous()
    if copied:
        v = v.contiguous()
    out = _triton.dropblock(v, g, block, seeds, normalize, rate, generator, inplace or copied)
    if out is None:
        return None
    if data_format == "channels_last":
        out = out.movedim(1, -1)
    if inplace:
        return x if not copied else x.copy_(out)
    if out.stride() != x.stride():  # x's strides where they describe dense memory (empty_like)
        out = torch.empty_like(x).copy_(out)
    return out


def cutout(x, size, data_format="channels_first", *, fill=0.0, training=True, seed: Seed = None,
           uniform=None):
    """Cutout (DeVries & Taylor 2017): one patch per sample set to ``fill`` in every channel.

    The centre is uniform over the whole map, so the patch may hang over the border and is
    clipped there; it covers ``c - size // 2 .. c - size // 2 + size - 1`` per axis. No rescaling.
    ``fill`` is a finite Python or NumPy number (not a tensor). ``uniform`` has shape
    ``(N, n_spatial)``; the centre is ``floor(uniform * map)``.
    """
    check_data_format(data_format)
    x = _as_float_tensor(x)
    n_spatial = check_n_spatial(x.ndim)
    size = check_block_size(size, n_spatial, "size")
    fill = check_fill(fill)
    if not training:
        return x
    axes = spatial_axes(x.ndim, data_format)
    u = _uniform((x.shape[0], n_spatial), seed, uniform, x.device)
    if not u.is_floating_point():
        u = u.to(torch.float64)
    inside = torch.ones((x.shape[0],) + (1,) * (x.ndim - 1), dtype=torch.bool, device=x.device)
    for k, (axis, s) in enumerate(zip(axes, size)):
        n = x.shape[axis]
        start = torch.floor(u[:, k] * n).to(torch.long) - s // 2
        pos = torch.arange(n, device=x.device)
        along = (pos >= start[:, None]) & (pos < start[:, None] + s)  # (N, n)
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[axis] = n
        inside = inside & along.reshape(shape)
    return torch.where(inside, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def drop_path(x, rate, *, mode="sample", batch_axis=0, training=True, seed: Seed = None,
              uniform=None, scale=True):
    """Stochastic depth / DropPath (Huang et al. 2016) for a residual branch's output.

    ``mode="sample"`` drops the branch for each sample independently (mask shape 1 on every axis
    but ``batch_axis``); ``mode="batch"`` drops it for the whole batch. ``scale=True`` divides
    survivors by ``1 - rate``; with ``scale=False`` multiply by ``1 - rate`` at inference instead.
    """
    scale = check_bool(scale, "scale")
    rate = check_rate(rate)
    x = _as_float_tensor(x)
    shape = drop_path_noise_shape(tuple(x.shape), mode, batch_axis)
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return _zeros(x, False)
    keep = _uniform(shape, seed, uniform, x.device) >= rate
    return _keep_scaled(x, keep, 1.0 / (1.0 - rate) if scale else 1.0, False)


def dropconnect_dense(x, kernel, bias=None, rate=0.5, *, training=True, seed: Seed = None,
                      uniform=None):
    """A dense layer with DropConnect (Wan et al. 2013): the mask falls on the weights.

    ``x`` is ``(..., in)`` and ``kernel`` is ``(in, out)`` (the transpose of
    ``nn.Linear.weight``). One weight mask is drawn per call, shared by the batch, and survivors
    are scaled by ``1 / (1 - rate)`` so that inference is the plain layer. The bias is never
    dropped (the paper masks it too). ``uniform`` has the kernel's shape.
    """
    rate = check_rate(rate)
    x = _as_float_tensor(x)
    kernel = _as_float_tensor(kernel, "kernel")
    check_dense_shapes(tuple(x.shape), tuple(kernel.shape),
                       None if bias is None else tuple(torch.as_tensor(bias).shape))
    if kernel.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        # (under torch.autocast the matmul below casts both, as nn.Linear's does)
        raise ValueError(f"kernel must have x's dtype {x.dtype}, got {kernel.dtype}")
    if training and rate > 0.0:
        if rate == 1.0:
            kernel = _zeros(kernel, False)
        else:
            keep = _uniform(kernel.shape, seed, uniform, kernel.device) >= rate
            kernel = _keep_scaled(kernel, keep, 1.0 / (1.0 - rate), False)
    out = x @ kernel
    if bias is None:
        return out
    if torch.is_autocast_enabled(out.device.type):  # the bias joins the matmul's dtype there,
        bias = torch.as_tensor(bias, device=out.device).to(out.dtype)  # as in nn.Linear
    return out + bias
