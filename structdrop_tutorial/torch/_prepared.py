"""The eager CUDA DropBlock call, prepared once per signature.

A call of :func:`structdrop_tutorial.torch.dropblock` that takes the Triton row-word path
(:mod:`._triton`) spends most of its host time on work whose result is the same from one call
to the next: checking the arguments, resolving gamma, finding the launch geometry, confirming
that this geometry was checked on this device, building launch keys and looking the compiled
kernels up. On a GPU the eager step is bound by that host time (book chapter 8).

Once a signature (input shape, dtype and device, and the arguments of ``dropblock``) has come
back to the ordinary path, which has checked and compiled everything for it, :func:`remember`
keeps a :class:`Plan`:
the compiled launchers of the mask and product kernels (:func:`._launch.prepared`) and every
argument they take that does not change between calls. Later calls with the same signature
(:func:`find`) make the key, allocate the row words, launch the mask kernel and apply the product
through :class:`PlannedProduct`, whose forward and backward launch the product kernel from the
plan too. On a GPU the pointers go to the launcher as integers, so it does not ask
the driver about each tensor. Inputs whose channels are innermost in memory (channels_last data,
or the channels_last memory format) that :mod:`._triton_channels_last` has served get plans of
their own: the same mask kernel, and that module's product kernel on x's memory as it is (the
key holds x's strides, so each layout has its own plan); an ``inplace`` call of such a layout
takes the ordinary path.

The masks, outputs, gradients and the generator's state after a call are those of the ordinary
path: the same key from the same generator (:func:`._triton.new_key`), the same kernels with
the same arguments. A plan is only used while nothing it depends on has changed: the module
switches of :mod:`._triton` and :mod:`._launch`, their tuning constants, the sets of checked
geometries (tests replace them), the current CUDA device; never while a CUDA graph is captured,
``torch.compile`` traces, a functorch transform is active, launch hooks are installed or
launches are verified. Anything else (byte masks, ``share``, ``uniform``, other strided or
subclassed inputs, a rate or block size that is not a plain float or int) takes the ordinary
path.

Where the C++ extension of :mod:`._native` is built (on a CUDA machine with a compiler, in the
background by default), a plan also holds its native plan, and :func:`dropblock` runs the call
there (not ``inplace`` ones): the same key, kernels and arguments, without Python between the
launches.

Measured on the 2-core CPU of the book's timings with the launchers replaced by no-ops (so that
only Python, autograd and allocations are timed; ``benchmarks/host_probe.py --stub``, the
minimum of 15 interleaved rounds, three runs): a forward+backward on a tiny input costs the
host 31 us for the floor ``x * mask``, 74-75 us through the ordinary path and 47-49 us through a
plan; a forward alone 5.5, 31 and 14 (on the 2-core Intel Xeon of the second CPU timings: 31, 77
and 48; 5.6, 32 and 15). On H100s (``benchmarks/host_probe.py``, PyTorch 2.11, Triton 3.6;
the committed probes, newest first, then three machines of an earlier session, before
:class:`PlannedProduct`) a tiny forward+backward cost the host 341, 163, then 156 / 227 / 329 us
through a plan and 474, 235, then 204 / 304 / 540 us through the ordinary path with direct
launches, against 141, 130, then 86 / 114 / 162 us for the floor: a plan costs 1.25 to 2.4
floors of host time, an ordinary call 1.8 to 3.4. Full-size eager steps built up part by part
(``benchmarks/eager_parts.py``) put 1.21 to 1.35 floors on :class:`PlannedProduct` alone, 1.39 to
1.78 on the planned call and 1.60 to 2.11 on the public call (book chapter 8).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from . import _launch, _native, _triton, _triton_channels_last

#: Use plans where they apply (tests and ``benchmarks/host_probe.py`` switch it off to compare).
ENABLED = True
_PLANS: Dict[tuple, "Plan"] = {}
_SEEN: set = set()  # signatures served once by the ordinary path
_BYTES: Dict[tuple, tuple] = {}  # signatures whose rows are wider than a word -> the tunables
_MAX_PLANS = 256
_GAMMA_TYPES = (str, float, int)


def _tunables() -> tuple:
    return (_triton.ROW_ITEMS, _triton.ROW_WARPS, _triton.APPLY_BLOCK, _triton.APPLY_WARPS)


class Plan:
    """What a call of one signature needs: the device, the row-word geometry and its launch,
    the product's launch, and the state of the modules the plan was made under."""

    __slots__ = ("device", "index", "geo", "gamma", "rows", "scratch", "ints", "mask_run",
                 "mask_lead", "mask_grid", "mask_tail", "prod_run", "prod_lead", "prod_grid",
                 "prod_tail", "param", "from_count", "generation", "tunables", "checked",
                 "rows_checked", "generator", "channels_last", "data_last", "strides", "native",
                 "pending")

    def fresh(self) -> bool:
        """Nothing the plan depends on has changed since it was made."""
        return (self.generation == _launch.GENERATION and self.checked is _triton._CHECKED
                and self.rows_checked is _triton._ROWS_CHECKED and self.tunables == _tunables())


def _plain_block(block_size) -> bool:
    return type(block_size) is int or (
        type(block_size) is tuple and all(type(b) is int for b in block_size))


def _key(x, rate, block_size, data_format, gamma, seeds, normalize) -> Optional[tuple]:
    """The plan key of a call, or None when an argument is not a plain value (a float rate, an
    int block size or a tuple of ints, a gamma that is a string or a number): values that
    compare equal but check differently (7 and 7.0, 1 and True) never share a plan. The key
    holds x's strides: a plan serves one memory layout."""
    if (type(x) is not torch.Tensor or type(rate) is not float or type(gamma) not in _GAMMA_TYPES
            or not _plain_block(block_size)):
        return None
    return (x.shape, x.stride(), x.dtype, x.device, rate, block_size, data_format, gamma, seeds,
            normalize)


def _usable(plan: Plan) -> bool:
    """The switches allow the plan, and the call is eager and on the plan's current device."""
    if not (ENABLED and _triton.ENABLED and _triton.ROW_WORDS and plan.fresh()):
        return False
    if _triton._FAILED or _triton._ROWS_FAILED or not _launch.ready():
        return False
    if plan.channels_last and _triton_channels_last._FAILED:
        return False
    if plan.index is None:  # Triton's interpreter (CPU tests)
        return _triton.FORCE
    return (torch._C._cuda_getDevice() == plan.index
            and not torch._C._cuda_isCurrentStreamCapturing())


def find(x, rate, block_size, data_format, gamma, seeds, normalize,
         inplace=False) -> Optional[Plan]:
    """The plan for this call of :func:`dropblock` (training, no ``uniform``, ``share=()``),
    or None: the caller takes the ordinary path (also for ``inplace`` with channels innermost,
    which that path serves through a copy)."""
    key = _key(x, rate, block_size, data_format, gamma, seeds, normalize)
    if key is None:
        return None
    try:
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable data_format, seeds or normalize: the checks will say so
        return None
    if (plan is None or (inplace and plan.channels_last) or not _usable(plan)
            or torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return None
    return plan


def _layout(x: torch.Tensor, data_format: str) -> Optional[bool]:
    """Whether a plan for ``x`` runs the channels-last product kernel (True) or the row-major
    one (False), or None where no plan serves it: False for a contiguous channels_first
    tensor, True for channels innermost in memory (contiguous channels_last data, or
    channels_first data whose channels are the innermost dimension, as in channels_last memory
    format). The kernels take the memory as it is; the output is ``torch.empty_like(x)``,
    which has x's strides."""
    if data_format == "channels_last":
        return True if x.is_contiguous() else None
    if x.is_contiguous():
        return False
    return True if x.permute(0, *range(2, x.ndim), 1).is_contiguous() else None


def remember(x, rate, block_size, data_format, gamma, seeds, normalize, g, block) -> None:
    """Keep a plan for this call's signature, which the ordinary path has just served with row
    words (``g`` and ``block``: the resolved gamma and the clipped block), once its geometry is
    checked on the device and both kernels can be launched from a plan. ``x`` is a contiguous
    channels_first tensor or has its channels innermost in memory (served by
    :mod:`._triton_channels_last`)."""
    key = _key(x, rate, block_size, data_format, gamma, seeds, normalize)
    if not ENABLED or key is None:
        return
    channels_last = _layout(x, data_format)
    if channels_last is None:
        return
    try:
        old = _PLANS.get(key)
    except TypeError:
        return
    if old is not None and old.fresh():
        return
    if _BYTES.get(key) == _tunables():  # known to take byte masks: nothing to plan
        return
    if not _launch.ready():  # direct launches off, broken or verified, launch hooks, tracing:
        return               # a plan could not be used now, so none is made (nor looked for)
    if old is None and key not in _SEEN:  # a signature seen once may not come back (a rate
        if len(_SEEN) >= _MAX_PLANS * 16:  # ramped by a schedule changes every step): plan
            _SEEN.clear()                   # on its second ordinary call
        _SEEN.add(key)
        return
    device = x.device
    shape = tuple(x.movedim(-1, 1).shape) if data_format == "channels_last" else tuple(x.shape)
    geo = _triton.row_geometry(shape, tuple(block), seeds, _triton.ROW_ITEMS)
    if geo is None:  # rows wider than a word
        if len(_BYTES) >= _MAX_PLANS * 16:
            _BYTES.clear()
        _BYTES[key] = _tunables()
        return
    name = str(device)
    signature = (name, geo, x.dtype, normalize) + (("channels last",) if channels_last else ())
    if (not _triton.ROW_WORDS or (name, geo) not in _triton._ROWS_CHECKED
            or signature not in _triton._CHECKED):
        return
    index = device.index if device.type == "cuda" else None
    kernels = _triton._kernels()
    thresh = _triton.threshold(g)
    n, w, c = x.numel(), shape[-1], shape[1]
    from_count = normalize == "batch"
    bits = 0 if from_count else _triton._float64_bits(1.0 / (1.0 - rate))
    wide = x.dtype == torch.float64
    prod_key = _triton.product_key(x.dtype, True, True, n, from_count)
    if channels_last:  # _triton_channels_last.product's launch
        rows = math.prod(shape[2:-1])
        product_kernel = kernels.masked_rows_cl_kernel
        prod_key += ("channels last", c, rows, w)
        prod_grid, prod_tail = _triton_channels_last.launch_args(n, c, rows, w, bits, from_count,
                                                                   wide)
    else:  # _triton._apply's
        product_kernel, prod_key = kernels.masked_rows_kernel, prod_key + (w,)
        prod_grid, prod_tail = _triton.rows_launch_args(n, w, bits, from_count, wide)
    # the keys _row_buffer and _apply launch these kernels with (host keys are 64-bit ints,
    # fresh buffers are 16-byte aligned)
    mask = _launch.prepared(kernels.dropblock_rows_kernel, _triton.ROW_WARPS, index,
                            (geo, thresh, "i64"))
    prod = _launch.prepared(product_kernel, _triton.APPLY_WARPS, index, prod_key)
    if mask is None or prod is None or mask[2] != prod[2]:
        return
    plan = Plan()
    plan.device, plan.index, plan.geo, plan.gamma = device, index, geo, g
    # the device's default generator, for keys made on the host (None: Triton's interpreter)
    plan.generator = None if index is None else torch.cuda.default_generators[index]
    plan.rows, plan.scratch, plan.ints = geo.rows, geo.scratch, mask[2]
    plan.mask_run, plan.mask_lead = mask[0], mask[1]
    plan.mask_grid = tuple(geo.launch) + (1,) * (3 - len(geo.launch))
    plan.mask_tail = (thresh, geo.n_mblocks) + tuple(geo.dims) + tuple(geo.consts)
    plan.prod_run, plan.prod_lead = prod[0], prod[1]
    plan.prod_grid = prod_grid + (1,) * (3 - len(prod_grid))
    plan.prod_tail = prod_tail
    plan.param = None if from_count else 1.0 / (1.0 - rate)
    plan.from_count = from_count
    plan.channels_last, plan.strides = channels_last, x.stride()
    plan.data_last = data_format == "channels_last"  # x is (N, *spatial, C)
    plan.generation, plan.tunables = _launch.GENERATION, _tunables()
    plan.checked, plan.rows_checked = _triton._CHECKED, _triton._ROWS_CHECKED
    plan.native = plan.pending = None
    if _native.ENABLED and index is not None and plan.ints:
        _native.attach(plan, x, _launch.compiled(kernels.dropblock_rows_kernel, _triton.ROW_WARPS,
                                                 index, (geo, thresh, "i64")),
                       _launch.compiled(product_kernel, _triton.APPLY_WARPS, index, prod_key))
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan


def dropblock(plan: Plan, x: torch.Tensor, generator, inplace: bool) -> torch.Tensor:
    """DropBlock of ``x`` through ``plan`` (from :func:`find`): the ordinary path's result."""
    if plan.pending is not None and _native._MODULE:  # built in the background since
        _native.attach(plan, x, *plan.pending)        # the plan was made
    if plan.native is not None and not inplace and _native.ENABLED and _triton.HOST_KEYS:
        state = _triton._STATE.get((plan.index, torch._C._cuda_getCurrentRawStream(plan.index)))
        if state is not None and state[1].numel() >= plan.scratch:
            out = _native._MODULE[0].call(plan.native, x,
                                          plan.generator if generator is None else generator,
                                          state[1].data_ptr(), state[0].data_ptr())
            if out is not None:
                return out
    device = plan.device
    key = None
    if plan.generator is not None and _triton.HOST_KEYS:  # new_key's key, without its checks
        key = _triton.host_key(plan.generator if generator is None else generator)
    if key is None:
        key = _triton.new_key(device, generator, True)
    return _APPLY(x, mask_words(plan, key), plan, inplace)


def mask_words(plan: Plan, key) -> torch.Tensor:
    """The row words (then the count of kept units) of ``plan``'s mask for ``key`` (an int made
    on the host, or an int64 tensor drawn on the device), from the plan's mask kernel."""
    device = plan.device
    words = torch.empty(plan.rows + 1, dtype=torch.int64, device=device)
    if plan.index is None:
        stream, where = 0, (device.type, 0)
    else:
        stream = torch._C._cuda_getCurrentRawStream(plan.index)
        where = (plan.index, stream)
    state = _triton._STATE.get(where)
    if state is None or state[1].numel() < plan.scratch:
        state = _triton._row_state(device, plan.scratch, True)
    acc, scratch = state
    g = plan.mask_grid
    if type(key) is not int:  # a key drawn on the device (a generator without an offset)
        if plan.ints:
            words = _triton._row_buffer(plan.geo, device, plan.gamma, key)
        else:
            plan.mask_run(g[0], g[1], g[2], stream, words, scratch, acc, key, 0,
                          *plan.mask_tail, True)
    elif plan.ints:
        plan.mask_run(g[0], g[1], g[2], stream, *plan.mask_lead, words.data_ptr(),
                      scratch.data_ptr(), acc.data_ptr(), None, key, *plan.mask_tail, False)
    else:
        plan.mask_run(g[0], g[1], g[2], stream, words, scratch, acc, None, key,
                      *plan.mask_tail, False)
    return words


def product(plan: Plan, x: torch.Tensor, words: torch.Tensor, out: torch.Tensor) -> None:
    """``out = x * keep * scale`` from the plan's row words: the kept launcher where x and out
    are 16-byte aligned, as it was compiled for, else the ordinary launch."""
    g = plan.prod_grid
    if not plan.ints:
        plan.prod_run(g[0], g[1], g[2], 0, x, words, out, *plan.prod_tail)
        return
    px, po = x.data_ptr(), out.data_ptr()
    if (px | po) & 15:
        _fallback(plan, x, words, out)
        return
    plan.prod_run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(plan.index),
                  *plan.prod_lead, px, words.data_ptr(), po, *plan.prod_tail)


class PlannedProduct(torch.autograd.Function):
    """:class:`._triton.MaskedScale` for a planned call: ``x * keep * scale`` from the row
    words (saved for the backward pass, 8 bytes per row and the count), launched from the
    plan, which also gives the scale. Nothing else is checked or looked up: on a GPU a call's
    host time is the step's (see the module docstring). The backward pass launches from the
    plan while it still applies, else through the ordinary launch."""

    @staticmethod
    def forward(ctx, x, words, plan, inplace):
        out = x if inplace else torch.empty_like(x)
        product(plan, x, words, out)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(words)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad):
        (words,) = ctx.saved_tensors
        plan = ctx.plan
        if grad.requires_grad:  # double backward: differentiable tensor operations
            if plan.data_last:  # on the channels_first view
                out = _triton.differentiable_product(grad.movedim(-1, 1), words, plan.param,
                                                     plan.from_count).movedim(1, -1)
            else:
                out = _triton.differentiable_product(grad, words, plan.param, plan.from_count)
            return out, None, None, None
        if not plan.channels_last:
            grad = grad.contiguous()
        elif grad.stride() != plan.strides:  # the input's memory order, which the kernel reads
            grad = torch.empty_strided(grad.shape, plan.strides, dtype=grad.dtype,
                                       device=grad.device).copy_(grad)
        out = torch.empty_like(grad)
        if _launchable(plan):
            product(plan, grad, words, out)
        else:
            _fallback(plan, grad, words, out)
        return out, None, None, None


def _fallback(plan: Plan, x: torch.Tensor, words: torch.Tensor, out: torch.Tensor) -> None:
    """The product through the ordinary launch (:func:`product` where the plan's launcher does
    not apply): the kernel of the plan's layout."""
    if plan.channels_last:  # the kernel's (N, *spatial, C) view of the same memory
        if not plan.data_last:
            x, out = x.movedim(1, -1), out.movedim(1, -1)
        _triton_channels_last.product(x, words, plan.param, plan.from_count, out)
    else:
        _triton._apply(x, words, plan.param, plan.from_count, out)


def _launchable(plan: Plan) -> bool:
    """Whether the backward pass may launch the product from ``plan``: fewer checks than
    :func:`_usable`, which a forward pass needs to draw its key and mask. The plan's launcher,
    grid and arguments were made together, so a tunable or a switch of :mod:`._triton` changed
    since then does not make them wrong; a launch while a CUDA graph is captured is captured
    like any other. What does matter: the launcher still exists (:data:`_launch.GENERATION`),
    direct launches are allowed now (:func:`_launch.ready`: not verified, no launch hooks,
    nothing compiled), the current device is the plan's (autograd's worker thread for it), and
    plans are on (:data:`ENABLED`)."""
    if not ENABLED or plan.generation != _launch.GENERATION or not _launch.ready():
        return False
    if plan.index is None:  # Triton's interpreter (CPU tests)
        return _triton.FORCE
    return torch._C._cuda_getDevice() == plan.index


# the C++ apply: find() has ruled out functorch transforms and compilation, for which
# ``PlannedProduct.apply`` (a Python wrapper around it) exists
_APPLY = super(torch.autograd.Function, PlannedProduct).apply


def clear() -> None:
    """Forget every plan (and every signature seen)."""
    _PLANS.clear()
    _SEEN.clear()
    _BYTES.clear()
