"""The fast DropBlock path: sparse seed sampling, direct block writes, a 1-byte autograd mask.

Seeds are rare (gamma is of the order of 0.001 to 0.02 for usual rates and blocks), so drawing one
uniform per seed position wastes most of the work. Here the seed positions are drawn directly as a
Bernoulli(gamma) process over the flattened seed grid: the gaps between consecutive seeds are
i.i.d. geometric variables (``Tensor.geometric_``), so the positions are exactly those of
independent Bernoulli(gamma) trials, one per position. Each seed's block is then written into a
boolean "dropped" buffer with one scattered write per unit of the block, and the input is
multiplied once by the result.

Everything here works on any device; nothing is synchronized except where a Python loop needs
the last drawn position (only when the first batch of gaps falls short, which is rare).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

# Above this seed probability a dense draw (one uniform per position) is cheaper than the gaps.
DENSE_THRESHOLD = 0.05


def _contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= int(n)
    return tuple(reversed(strides))


def bernoulli_positions(total: int, p: float, generator: Optional[torch.Generator] = None,
                        device=None) -> torch.Tensor:
    """Sorted flat indices of the successes of ``total`` i.i.d. Bernoulli(``p``) trials.

    For small ``p`` the gaps between successes are drawn as geometric variables (number of trials
    up to and including the next success), whose running sum gives the positions; this costs
    O(number of successes) rather than O(total). For larger ``p`` one uniform per trial is drawn.
    Returns an int64 tensor on ``device``.
    """
    device = torch.device(device if device is not None else "cpu")
    total = int(total)
    if total <= 0 or p <= 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p >= DENSE_THRESHOLD:
        u = torch.rand(total, generator=generator, device=device)
        return torch.nonzero(u < p).reshape(-1)
    mean = total * p
    n_draw = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)
    gaps = torch.empty(n_draw, dtype=torch.float64, device=device).geometric_(p, generator=generator)
    pos = torch.cumsum(gaps, 0)
    chunks = [pos]
    last = float(pos[-1])  # one synchronization: did we cover all trials?
    while last < total:  # rare: draw more gaps, continuing from the last success
        more = torch.empty(n_draw, dtype=torch.float64, device=device).geometric_(p, generator=generator)
        more = torch.cumsum(more, 0) + last
        chunks.append(more)
        last = float(more[-1])
    pos = torch.cat(chunks) if len(chunks) > 1 else pos
    pos = pos[pos <= total]  # positions are 1-based here
    return pos.to(torch.long) - 1


def seeds_to_dropped(flat_seeds: torch.Tensor, grid_shape: Sequence[int], axes: Sequence[int],
                     block: Sequence[int], spatial: Sequence[int], seeds: str) -> torch.Tensor:
    """Boolean "dropped" mask (True = dropped) painted from seed positions.

    Args:
        flat_seeds: int64 flat indices into a C-contiguous tensor of shape ``grid_shape``.
        grid_shape: the seed grid's shape (see :func:`structdrop_tutorial.shapes.seed_grid_shape`).
        axes: the spatial axes; ``block`` the clipped block per axis; ``spatial`` the map size.
        seeds: ``"valid"`` (seed ``s`` drops ``s .. s + b - 1``) or ``"padded"`` (seed ``s``
            drops ``s - b + 1 .. s``, clipped to the map).

    Returns:
        A bool tensor with the map's spatial sizes and the grid's other sizes. For padded seeds
        it is a view into a larger buffer (the part that hangs over the border is cut off).
    """
    device = flat_seeds.device
    buf_shape = list(grid_shape)
    for a, b, n in zip(axes, block, spatial):
        buf_shape[a] = n if seeds == "valid" else n + 2 * (b - 1)
    buf = torch.zeros(buf_shape, dtype=torch.bool, device=device)
    if flat_seeds.numel():
        buf_strides = _contiguous_strides(buf_shape)
        # Unravel the grid index and re-ravel it in the buffer (which differs on spatial axes).
        rest = flat_seeds
        base = torch.zeros_like(flat_seeds)
        for d in range(len(grid_shape) - 1, -1, -1):
            n = int(grid_shape[d])
            coord = rest % n
            rest = rest // n
            base += coord * buf_strides[d]
        offsets = torch.zeros(1, dtype=torch.long, device=device)
        for a, b in zip(axes, block):
            step = torch.arange(b, dtype=torch.long, device=device) * buf_strides[a]
            offsets = (offsets[:, None] + step[None, :]).reshape(-1)
        index = (base[:, None] + offsets[None, :]).reshape(-1)
        buf.view(-1)[index] = True
    if seeds == "valid":
        return buf
    crop = [slice(None)] * len(buf_shape)
    for a, b, n in zip(axes, block, spatial):
        crop[a] = slice(b - 1, b - 1 + n)
    return buf[tuple(crop)]


class MaskedScale(torch.autograd.Function):
    """``y = where(dropped, 0, x * scale)`` saving only the boolean mask for the backward pass.

    Autograd of ``x * float_mask`` keeps the float mask (the input's element size per unit);
    this keeps 1 byte per unit (or less when the mask is broadcast over shared axes). The
    gradient is ``grad * scale`` with dropped units zeroed, i.e. ``mask * scale``.
    """

    @staticmethod
    def forward(ctx, x, dropped, scale, inplace):
        if inplace:
            ctx.mark_dirty(x)
            out = x.mul_(scale).masked_fill_(dropped, 0)
        else:
            out = torch.mul(x, scale).masked_fill_(dropped, 0)
        ctx.save_for_backward(dropped, scale if isinstance(scale, torch.Tensor) else None)
        ctx.scale = None if isinstance(scale, torch.Tensor) else scale
        return out

    @staticmethod
    def backward(ctx, grad):
        dropped, scale_t = ctx.saved_tensors
        scale = scale_t if scale_t is not None else ctx.scale
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return torch.mul(grad, scale).masked_fill_(dropped, 0), None, None, None


def masked_scale(x: torch.Tensor, dropped: torch.Tensor, scale, inplace: bool = False) -> torch.Tensor:
    """``x`` with dropped units zeroed and survivors multiplied by ``scale`` (float or 0-d tensor)."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(device=x.device, dtype=x.dtype if x.dtype == torch.float64 else torch.float32)
    return MaskedScale.apply(x, dropped, scale, inplace)
