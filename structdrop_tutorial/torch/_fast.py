"""The fast DropBlock path: sparse seed sampling, cheap mask painting, a 1-byte autograd mask.

Seeds are rare (gamma is of the order of 0.001 to 0.02 for usual rates and blocks), so drawing one
uniform per seed position wastes most of the work. Here the seed positions are drawn directly as a
Bernoulli(gamma) process over the flattened seed grid: the gaps between consecutive seeds are
i.i.d. geometric variables (:func:`geometric_gaps`), so the positions are exactly those of
independent Bernoulli(gamma) trials, one per position. The blocks are then painted into a
boolean keep mask (:mod:`structdrop_tutorial.torch._paint`), and the input is multiplied once by
the result.

The product keeps only the 1-byte mask for the backward pass (:class:`MaskedScale`). On the CPU it
runs in cache-sized chunks: each chunk of the mask is converted to x's dtype into a small buffer
and multiplied with a fused ``addcmul``, so no full-size float mask is ever allocated. The number
of kept units (for ``normalize="batch"``) is counted by :func:`count_true`, which sums the mask
eight bytes at a time.

Everything works on any device. The only synchronization is one read of the last drawn seed
position (to check that the gaps covered the whole grid); on the CPU the batch-normalization
scale is also read as a Python float.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch

# Above this seed probability a dense draw (one uniform per position) is cheaper than the gaps.
DENSE_THRESHOLD = 0.05


def rand(size, generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
    """``torch.rand``, leaving ``generator`` out when it is None: ``torch.compile`` cannot trace
    ``rand(generator=None)`` once the sizes are symbolic (a batch size that changed)."""
    if generator is None:
        return torch.rand(size, **kwargs)
    return torch.rand(size, generator=generator, **kwargs)


def geometric_gaps(n: int, p: float, generator: Optional[torch.Generator] = None,
                   device=None) -> torch.Tensor:
    """``n`` i.i.d. Geometric(``p``) variables (trials up to and including the first success,
    so 1, 2, ...) as a float64 tensor on ``device``: ``Tensor.geometric_``'s numbers.

    On the CPU they are computed by inversion, ``ceil(log(u) / log1p(-p))`` from one float64
    uniform ``u`` per variable: that is how PyTorch's CPU ``geometric_`` computes each of them,
    from the same draws of the generator, but one element at a time, while ``rand``, ``log``
    and ``div`` here run over the whole tensor: 0.96 ms against 1.87 for the 127,458 gaps of the
    1-D benchmark case on the 2-core Intel Xeon of the book's timings, 2 threads
    (``benchmarks/cpu_details.py``, committed in ``data/timings``). The tests
    check that the numbers, and the generator's state after them, are ``geometric_``'s with the
    pinned PyTorch; so the masks drawn from a seed did not change with this sampler. ``u`` may
    be 0, which gives an infinite gap: :func:`bernoulli_positions` then has all it needs. On
    other devices this is ``geometric_`` itself.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cpu":
        out = torch.empty(n, dtype=torch.float64, device=device)
        return out.geometric_(p) if generator is None else out.geometric_(p, generator=generator)
    u = rand(n, generator, dtype=torch.float64)
    return u.log_().div_(math.log1p(-p)).ceil_()


def gaps_to_draw(total: int, p: float) -> int:
    """Gaps :func:`bernoulli_positions` draws at first for ``total`` trials: the mean number of
    successes plus six standard deviations and 16, so that a second draw is rarely needed."""
    mean = total * p
    return int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)


def bernoulli_positions(total: int, p: float, generator: Optional[torch.Generator] = None,
                        device=None, *, batch: Optional[int] = None) -> torch.Tensor:
    """Sorted flat indices of the successes of ``total`` i.i.d. Bernoulli(``p``) trials.

    For small ``p`` the gaps between successes are drawn as geometric variables (number of trials
    up to and including the next success), whose running sum gives the positions; this costs
    O(number of successes) rather than O(total). For larger ``p`` one uniform per trial is drawn.
    ``batch`` overrides how many gaps are drawn at a time (tests use it to exercise the
    top-up loop). Returns an int64 tensor on ``device``.
    """
    device = torch.device(device if device is not None else "cpu")
    total = int(total)
    if total <= 0 or p <= 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p >= DENSE_THRESHOLD:
        u = rand(total, generator, device=device)
        return torch.nonzero(u < p).reshape(-1)
    n_draw = batch or gaps_to_draw(total, p)
    gaps = geometric_gaps(n_draw, p, generator, device)
    pos = torch.cumsum(gaps, 0)
    chunks = [pos]
    last = float(pos[-1])  # one synchronization: did we cover all trials?
    while last < total:  # rare: draw more gaps, continuing from the last success
        more = geometric_gaps(n_draw, p, generator, device)
        more = torch.cumsum(more, 0) + last
        chunks.append(more)
        last = float(more[-1])
    pos = torch.cat(chunks) if len(chunks) > 1 else pos
    # positions are 1-based and sorted: keep those <= total (a binary search, no boolean mask)
    n_in = int(torch.searchsorted(pos, float(total), right=True))
    return pos[:n_in].to(torch.long) - 1


# Words summed per group by count_true: each byte lane of the sum stays below 256.
_LANE_GROUP = 255


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Number of True entries of a boolean tensor, as a 0-d int64 tensor.

    On the CPU a contiguous mask is read as 64-bit words (eight 0/1 bytes each) and summed in
    groups of 255 words, so each byte of a group's sum counts the True entries of one byte lane
    without carrying into the next; the lanes are then added up. This reads the mask once with
    vectorized integer adds and measured about 3 times faster than ``torch.count_nonzero`` on
    the 2-core CPU. Elsewhere (or for strided masks) it is ``torch.count_nonzero``.
    """
    if (mask.device.type != "cpu" or mask.dtype != torch.bool or not mask.is_contiguous()
            or mask.storage_offset() % 8 or mask.numel() < 8 * _LANE_GROUP):
        return torch.count_nonzero(mask)
    flat = mask.view(-1).view(torch.uint8)
    n_words = flat.numel() // 8
    words = flat[:n_words * 8].view(torch.int64)
    groups = n_words // _LANE_GROUP
    lanes = words[:groups * _LANE_GROUP].view(groups, _LANE_GROUP).sum(1)
    total = lanes.view(torch.uint8).sum(dtype=torch.int64)
    return total + torch.count_nonzero(flat[groups * _LANE_GROUP * 8:])


def scale_from_count(kept: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """``total / kept`` as a 0-d tensor on kept's device (0 when nothing is kept), computed in
    float32 (float64 for float64 inputs) as a true division, without synchronizing."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kept = kept.reshape(()).to(acc)
    return torch.where(kept > 0, torch.full_like(kept, total) / kept.clamp_min(1),
                       torch.zeros_like(kept))


class MaskedScale(torch.autograd.Function):
    """``y = x * keep * scale`` saving only the boolean keep mask for the backward pass.

    Autograd of ``x * float_mask`` keeps the float mask (the input's element size per unit);
    this keeps 1 byte per unit (or less when the mask is broadcast over shared axes) and
    rebuilds the float mask in the backward pass. The gradient is ``grad * keep * scale``.
    The product is a fused ``addcmul`` with the mask converted to x's dtype (chunk by chunk on
    the CPU, see :func:`_apply_chunked`), which measured faster here than ``where`` or
    ``masked_fill`` (neither is vectorized on the CPU).
    """

    @staticmethod
    def forward(ctx, x, keep, scale, inplace):
        out = _apply(x, keep, scale, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(keep, scale if isinstance(scale, torch.Tensor) else None)
        ctx.scale = None if isinstance(scale, torch.Tensor) else scale
        return out

    @staticmethod
    def backward(ctx, grad):
        keep, scale_t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        scale = scale_t if scale_t is not None else ctx.scale
        if grad.requires_grad:  # double backward: stay with differentiable out-of-place ops
            return grad * (keep.to(grad.dtype) * scale), None, None, None
        return _apply(grad, keep, scale, False), None, None, None


# Elements per chunk of the CPU product: the float copy of the mask chunk (2 MiB in float32)
# stays in cache, so memory traffic is x, the 1-byte mask and the output only. Measured on the
# 2-core AMD EPYC CI machine (forward, ratio to the plain ``x * mask`` floor, 3 rounds of
# torch.utils.benchmark): 2^16 elements 1.6, 2^18 1.14-1.74, 2^19 1.09-1.48, 2^22 2.3 at
# 32x1024x14x14; 2^19 was also the best at 16x256x56x56 (1.09).
CHUNK = 1 << 19


def _apply(x: torch.Tensor, keep: torch.Tensor, scale, inplace: bool) -> torch.Tensor:
    """``x * keep * scale`` in x's dtype; ``keep`` is bool and broadcasts against ``x``."""
    if isinstance(scale, torch.Tensor):  # a device scalar: fold it into the (converted) mask
        if x.dtype in (torch.float16, torch.bfloat16):  # in float32, rounded once
            factor = keep.view(torch.uint8).to(torch.float32).mul_(scale)
            return x.copy_(x * factor) if inplace else (x * factor).to(x.dtype)
        factor = keep.view(torch.uint8).to(x.dtype).mul_(scale)
        return x.mul_(factor) if inplace else torch.mul(x, factor)
    if (x.device.type == "cpu" and x.numel() > 2 * CHUNK and keep.shape == x.shape
            and x.is_contiguous() and keep.is_contiguous()):
        return _apply_chunked(x, keep, scale, inplace)
    # uint8 -> float converts faster than bool -> float (same bytes, reinterpreted)
    factor = keep.view(torch.uint8).to(x.dtype)
    if inplace:
        return x.mul_(factor).mul_(scale)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.addcmul(zero, x, factor, value=scale)


_LOCAL = threading.local()


def _scratch(dtype: torch.dtype) -> torch.Tensor:
    """A per-thread CPU buffer of CHUNK elements, reused across calls (fresh pages are costly)."""
    cache = getattr(_LOCAL, "buffers", None)
    if cache is None:
        cache = _LOCAL.buffers = {}
    buf = cache.get(dtype)
    if buf is None or buf.numel() != CHUNK:
        buf = cache[dtype] = torch.empty(CHUNK, dtype=dtype)
    return buf


# Most bytes of masks kept for reuse per thread (see reusable_mask); beyond it, plain allocation.
POOL_MAX_BYTES = 1 << 28
POOL_MAX_PER_SIZE = 4


# PyTorch's count of the references to a storage (private; absent from some versions).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _storage_use_count(t: torch.Tensor) -> Optional[int]:
    """How many tensors share t's storage (plus one for the temporary storage object), or None
    where this PyTorch does not say."""
    return None if _USE_COUNT is None else _USE_COUNT(t.untyped_storage()._cdata)


def reusable_mask(shape, device) -> torch.Tensor:
    """An uninitialized bool tensor of ``shape`` for a DropBlock mask; on the CPU its memory is
    recycled from an earlier call when no tensor uses it any more.

    A fresh multi-megabyte mask costs a page fault per 4 KiB on first touch (glibc returns large
    freed blocks to the system), about as much as painting it. The pool (per thread, at most
    :data:`POOL_MAX_PER_SIZE` masks per size and :data:`POOL_MAX_BYTES` in all) hands out a
    buffer only when the storage's use count shows that no tensor but the pool's holds it: not
    the caller's mask, not a view of it, not the copy autograd saved for a backward pass that
    has not run. The result is always a new view, so a caller's reference counts. Elsewhere
    (other devices, PyTorch without the use count, inside torch.compile) it is ``torch.empty``.
    """
    device = torch.device(device)
    numel = math.prod(int(n) for n in shape)
    if device.type != "cpu" or _USE_COUNT is None or _compiling():
        return torch.empty(shape, dtype=torch.bool, device=device)
    pool = getattr(_LOCAL, "masks", None)
    if pool is None:
        pool = _LOCAL.masks = {}
    bufs = pool.setdefault(numel, [])
    for buf in bufs:
        if _storage_use_count(buf) == 2:  # the pool's tensor and the temporary storage object
            return buf.view(shape)
    buf = torch.empty(numel, dtype=torch.bool)
    held = sum(b.numel() for group in pool.values() for b in group)
    if len(bufs) < POOL_MAX_PER_SIZE and held + numel <= POOL_MAX_BYTES:
        bufs.append(buf)
    return buf.view(shape)


_IS_COMPILING = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _compiling() -> bool:
    """Whether ``torch.compile`` (dynamo) is tracing the caller (False on a torch without it)."""
    return _IS_COMPILING is not None and bool(_IS_COMPILING())


def _apply_chunked(x: torch.Tensor, keep: torch.Tensor, scale: float, inplace: bool) -> torch.Tensor:
    """CPU product in cache-sized chunks: convert a chunk of the mask, then one fused addcmul."""
    out = x if inplace else torch.empty_like(x, memory_format=torch.contiguous_format)
    factor = _scratch(x.dtype)
    zero = torch.zeros((), dtype=x.dtype)
    chunks = zip(x.view(-1).split(CHUNK), keep.view(-1).view(torch.uint8).split(CHUNK),
                 out.view(-1).split(CHUNK))
    for xc, kc, oc in chunks:
        f = factor if kc.numel() == CHUNK else factor[:kc.numel()]
        f.copy_(kc)
        torch.addcmul(zero, xc, f, value=scale, out=oc)
    return out


def masked_scale(x: torch.Tensor, keep: torch.Tensor, scale, inplace: bool = False) -> torch.Tensor:
    """``x * keep * scale`` (``keep`` a bool mask broadcasting against x, ``scale`` a float or a
    0-d tensor) through :class:`MaskedScale`."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(device=x.device, dtype=x.dtype if x.dtype == torch.float64 else torch.float32)
    return MaskedScale.apply(x, keep, scale, inplace)
