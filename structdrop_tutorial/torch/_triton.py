"""DropBlock on CUDA in two Triton kernels, when Triton is installed (it ships with CUDA PyTorch).

The tensor-operation path (:mod:`._fast`, :mod:`._paint`) launches a dozen small kernels per call
and synchronizes with the host twice (to size the seed list); on a GPU those fixed costs dwarf
the memory traffic. Here one call is:

1. a 63-bit key: eagerly, made on the host from the generator's seed and Philox offset (which
   it advances as a random op does, so ``torch.manual_seed`` and ``seed=`` behave as for any
   random op, and nothing is queued on the device); under CUDA-graph capture, an 8-byte key
   drawn on the device (``Tensor.random_``), so that each replay draws a fresh key from the
   default generator, which a GPU-only test checks (it passed on an H100 and an H200);
2. a mask kernel: every program draws its seeds from a counter-based generator (Philox-4x32-10,
   four grid positions per call), expands them into blocks, and counts its kept units. Where
   rows are at most 64 units wide (every ResNet stage DropBlock is used in) the mask is one
   64-bit word per row, bit ``w`` set when unit ``w`` is dropped
   (:func:`._triton_kernels.dropblock_rows_kernel`: a block's width is shifted ORs of a word,
   its height an OR of neighbouring rows' words), and the last program to finish writes the
   total after the words; the programs meet in an accumulator that each launch leaves at zero,
   one per device and stream, so no counter is filled per call. Wider rows get a boolean mask,
   one byte per unit, with the blocks expanded by two small band-matrix products
   (:func:`._triton_kernels.dropblock_mask_kernel`), and a zeroed counter per call;
3. a product kernel, ``x * keep * scale`` with the scale ``numel / kept`` read from the count
   on the device (no host synchronization), reading the words or the bytes.

The backward pass runs kernel 3 on the upstream gradient; autograd keeps the mask: 8 bytes per
row and the count (0.14-0.57 bytes per unit at 56 to 14 units wide) or 1 byte per unit and the
count.

Seeds are i.i.d. Bernoulli(``p``) per seed position with ``p = round(gamma * 2**32) / 2**32``
(within ``2**-33`` of gamma). Given the seeds, the mask is exactly the one
:func:`structdrop_tutorial.torch.dropblock_keep_mask` builds: :func:`seed_grid` returns the seeds
a key produces, and the tests compare the masks of both kernels with it.

Used for per-channel masks (``share=()``), the paper's setting, on ``"channels_first"``
contiguous tensors, PyTorch's layout; inputs in other layouts are run as their contiguous
channels_first copies (``functional._triton_in_nchw``). Shared masks take the tensor-operation
path, and so does a device where the kernels fail on their first use (with a warning, see
:func:`dropblock`). The
first use of each row-word geometry on a device is compared with the byte-mask kernel on a fixed
key; a device where they disagree uses byte masks (with a warning).

Measured on an NVIDIA H100 (``data/timings/gpu_nvidia_h100_80gb_hbm3*``, book chapter 8; the
tests of this path passed there, compiled): at 32x1024x14x14 / 32x512x28x28 / 16x256x56x56 the
row-word mask kernel takes 13 / 23 / 24 us and its product kernel 25 / 44 / 44 us, against
32 / 57 / 57 us for the floor ``x * mask`` (the byte-mask kernel: 41 / 88 / 103 us). Replayed
from a CUDA graph, where the host's costs are gone, forward+backward is 1.08 / 1.00 / 0.99 times
the floor's. Eagerly it is 1.4 to 2.0 times in the benchmark (1.82 / 2.03 / 1.80 in the
committed file, 1.86 / 1.78 / 1.44 in the round before; 1.1 to 2.2 in other loops and machines): the host's
work per call (two launches and an autograd function forward, a backward in Python on the
autograd engine's thread) costs 1.25 to 2.4 times the floor's on a tiny input, although the
kernels are launched through their compiled launchers (:mod:`._launch`), the key is made on the
host, the count goes to a shared accumulator (no fill kernel per call) and, after the first
calls of a signature, :mod:`._prepared` launches both kernels from a plan without the per-call
checks and lookups. No part of a call waits for the device; the eager step asks the host for
more than the device needs, spread over the autograd function (a quarter to a third of a floor),
the key, the buffer, the mask launch and the argument handling (book chapter 8). On an NVIDIA
H200 (``data/timings/gpu_nvidia_h200*``; its memory is about 1.4 times faster) the row-word
mask kernel takes 11 / 21 / 22 us and its product kernel 20 / 33 / 32 us against 24 / 42 / 42 us
for the floor; replayed, forward+backward is 1.21 / 1.14 / 1.13 times the floor's (the kernels
alone add up to 1.02 to 1.06 floors there, 0.96 to 0.98 on the H100). Eagerly it is 1.28 /
1.17 / 1.32 in the latest round's file, where the planned call runs in C++ (:mod:`._native`),
against 1.92 / 1.96 / 1.80 through the Python plan in the same run; with the Python plan alone,
earlier rounds measured 1.48 to 1.88 on three machines: the host sets the eager figure.

Without a GPU the tests run these kernels in Triton's interpreter, and
``tests/test_torch_triton_compile.py`` compiles every variant for sm_75, sm_80 and sm_90
(``benchmarks/triton_sass.py --check``), so code the compiler rejects cannot pass CI.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import struct
import warnings
from typing import Dict, NamedTuple, Optional

import torch

from ..shapes import seed_grid_shape
from . import _launch
from ._fast import _compiling, scale_from_count

#: Use the Triton path on CUDA when it applies (tests switch it off to compare the paths).
ENABLED = True
#: Run the kernels on CPU tensors too: only meaningful under ``TRITON_INTERPRET=1`` (tests).
FORCE = False
#: Units per program the mask kernel aims for when a tile covers whole maps (rounded down to a
#: power of two maps per program).
TILE_UNITS = 1024
#: Elements per program of the product kernel and its warps per program.
APPLY_BLOCK = 2048
APPLY_WARPS = 4
#: Warps per program of the mask kernel; None: one warp for tiles of up to 1024 units, else 4.
#: Measured on an H200 (mask kernel alone, rate 0.1, block 7; 1 / 2 / 4 warps, microseconds):
#: 32x1024x14x14 (4 maps of 16x16 per program) 35.8 / 36.5 / 42.0; 32x512x28x28 (one 32x32
#: tile) 82.6 / 74.6 / 97.6; 16x256x56x56 (one 64x64 tile) 217.9 / 114.2 / 103.5 (the default
#: choice sums to 222 us, one fixed count at best to 225). On an H100: 40.5 / 37.4 / 41.9;
#: 87.6 / 74.4 / 94.2; 298 / 120 / 103.
MASK_WARPS = None
#: Keep the mask as one 64-bit word per row (bit ``w`` set: unit ``w`` dropped) where rows and
#: rows of seeds are at most 64 wide; one byte per unit otherwise (tests switch it off to run
#: both kernels on every geometry).
ROW_WORDS = True
#: Grid rows per program of the row-word mask kernel (whole maps batched up to this many) and
#: its warps: the lowest summed device time over the three ResNet-50 shapes in
#: ``benchmarks/gpu_tune.py``'s sweep on an H100 (256 rows, 4 warps: 13.1 / 23.4 / 23.5 us at
#: 14x14 / 28x28 / 56x56; 2 warps 20.5 / 23.9 / 23.4; the floor ``x * mask`` 32 / 57 / 57).
ROW_ITEMS = 256
ROW_WARPS = 4
# Largest tile side (64 x 64 units) and largest seed window side: blocks too large for a
# 128-wide window (about 62 units and more) take the tensor path, whose cost does not grow with
# the block's area in registers.
_MAX_TILE = 64
_MAX_WINDOW = 128
_GRID_LIMIT = 65535  # CUDA's limit on the second and third launch-grid dimensions


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _kernels():
    from . import _triton_kernels
    return _triton_kernels


def usable_in_nchw(x: torch.Tensor, data_format: str, share) -> bool:
    """Whether :func:`dropblock` serves this call once x is seen (and, where needed, copied)
    as a contiguous channels_first tensor: CUDA, per-channel masks, any layout."""
    if not ENABLED or not (x.is_cuda or FORCE):
        return False
    return not share and x.numel() > 0 and has_triton()


def usable(x: torch.Tensor, data_format: str, share) -> bool:
    """Whether :func:`dropblock` serves this call as it is: :func:`usable_in_nchw`, and x a
    contiguous channels_first tensor."""
    return (usable_in_nchw(x, data_format, share) and data_format == "channels_first"
            and x.is_contiguous())


_NULL = contextlib.nullcontext()


def _on(device):
    """A context that makes ``device`` current for Triton's launch: Triton launches on the
    current CUDA device, whatever device the tensors are on. Nothing to do in the common case."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cuda" and device.index is not None and device.index != _current_device():
        return torch.cuda.device(device)
    return _NULL


def _current_device() -> int:
    return torch._C._cuda_getDevice()  # torch.cuda.current_device without its lazy-init check


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


class Geometry(NamedTuple):
    dims: tuple       # M, D, H, W, GD, GH, GW, GW4, PD, PH, PW, BD, BH, BW
    n_mblocks: int
    launch: tuple     # launch grid of the mask kernel
    bm: int
    th: int
    tw: int
    gth: int
    gtw: int


def _maps(shape: tuple, block: tuple, seeds: str):
    """The kernels' view of a channels_first input: ``M`` maps of ``D x H x W`` units, the block
    and seed padding per axis, and the seed grid of one map."""
    n, c, *spatial = shape
    if len(spatial) == 1:  # fold the maps into the rows of one map: the same seeds, see kernels
        m, (d, h, w), blk = 1, (1, n * c, spatial[0]), (1, 1, block[0])
    else:
        m = n * c
        d, h, w = ([1] + list(spatial)) if len(spatial) == 2 else spatial
        blk = ((1,) + tuple(block)) if len(spatial) == 2 else tuple(block)
    pads = tuple(b - 1 if seeds == "padded" else 0 for b in blk)
    gd, gh, gw = seed_grid_shape((1, 1, d, h, w), blk, "channels_first", seeds)[2:]
    return m, d, h, w, blk, pads, gd, gh, gw


@functools.lru_cache(maxsize=256)
def geometry(shape: tuple, block: tuple, seeds: str, tile_units: int = TILE_UNITS) -> Optional[Geometry]:
    """Launch geometry of the mask kernel for a channels_first input, or None when the input is
    too large for the launch grid or the block too large for the seed window (the caller falls
    back to tensor operations)."""
    m, d, h, w, blk, pads, gd, gh, gw = _maps(shape, block, seeds)
    th = min(max(_pow2(h), 16), _MAX_TILE)
    tw = min(max(_pow2(w), 16), _MAX_TILE)
    gth = max(_pow2(min(th + blk[1] - 1, gh)), 16)
    gtw = max(_pow2(min(tw + blk[2] + 2, gw)), 16)  # + up to 3 for the 4-aligned start
    if gth > _MAX_WINDOW or gtw > _MAX_WINDOW:
        return None
    bm = 1
    if th >= h and tw >= w:  # one tile per map: batch maps up to tile_units units
        per = max(1, tile_units // (th * tw))
        bm = min(1 << (per.bit_length() - 1), _pow2(m))  # a power of two, as tl.arange needs
    n_mblocks = -(-m // bm)
    launch = (n_mblocks * d, -(-h // th), -(-w // tw))
    if launch[0] >= 2 ** 31 or max(launch[1:]) > _GRID_LIMIT:
        return None
    dims = (m, d, h, w, gd, gh, gw, -(-gw // 4)) + pads + blk
    return Geometry(dims, n_mblocks, launch, bm, th, tw, gth, gtw)


class RowGeometry(NamedTuple):
    dims: tuple       # M, D, H, W, GD, GH, GW, GW4
    consts: tuple     # PD, PH, PW, BD, BH, BW, BM, TH, GTH, GQ (compile-time constants)
    n_mblocks: int
    launch: tuple     # launch grid of the row-word mask kernel
    rows: int         # M * D * H: one word per row
    scratch: int      # int64 entries of scratch memory the kernel needs


@functools.lru_cache(maxsize=256)
def row_geometry(shape: tuple, block: tuple, seeds: str,
                 items: int = ROW_ITEMS) -> Optional[RowGeometry]:
    """Launch geometry of the row-word mask kernel, or None when rows or rows of seeds are
    wider than 64 (one word), the seed window is taller than the byte kernel's, or the input
    exceeds the launch grid."""
    m, d, h, w, blk, pads, gd, gh, gw = _maps(shape, block, seeds)
    th = min(_pow2(h), _MAX_TILE)
    gth = _pow2(min(th + blk[1] - 1, gh))
    if w > 64 or gw > 64 or gth > _MAX_WINDOW or m * d * h * w >= 2 ** 31:
        return None  # (the kernel's count of kept units must stay below 2**31)
    bm = 1
    if th >= h:  # one tile per map: batch maps up to ``items`` grid rows
        per = max(1, items // gth)
        bm = min(1 << (per.bit_length() - 1), _pow2(m))
    n_mblocks = -(-m // bm)
    launch = (n_mblocks * d, -(-h // th))
    if launch[0] >= 2 ** 31 or launch[1] > _GRID_LIMIT:
        return None
    dims = (m, d, h, w, gd, gh, gw, -(-gw // 4))
    consts = pads + blk + (bm, th, gth, -(-gw // 4))
    return RowGeometry(dims, consts, n_mblocks, launch, m * d * h,
                       launch[0] * launch[1] * bm * gth)


def mask_warps(geo: Geometry) -> int:
    if MASK_WARPS is not None:
        return MASK_WARPS
    return 1 if geo.bm * geo.th * geo.tw <= 1024 else 4


def threshold(gamma: float) -> int:
    """The 32-bit threshold: a position is a seed when its word is below it."""
    return min(max(int(round(float(gamma) * 2.0 ** 32)), 0), 2 ** 32)


#: Make eager keys on the host from the generator's seed and Philox offset (no device work);
#: tests switch it off to check the device-drawn keys that CUDA-graph capture uses.
HOST_KEYS = True
_M64 = (1 << 64) - 1


def _mix(seed: int, offset: int) -> int:
    """A 63-bit key from a generator's seed and offset (splitmix64's finalizer); bit 62 is set
    so that Triton always receives it as a 64-bit integer."""
    z = (seed + 0x9E3779B97F4A7C15 * (offset + 1)) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return ((z ^ (z >> 31)) & ((1 << 62) - 1)) | (1 << 62)


def _eager(device: torch.device) -> bool:
    """Neither a CUDA graph being captured on ``device`` nor ``torch.compile`` tracing."""
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()) \
        and not _compiling()


def new_key(device, generator: Optional[torch.Generator], eager: Optional[bool] = None):
    """A fresh Philox key for one call, from ``generator`` (or ``device``'s default generator).

    Eagerly on CUDA it is a Python int made from the generator's seed and Philox offset, which
    it advances by 4 as a random op would (so ``torch.manual_seed`` and ``seed=`` give the same
    masks again, and no device work is queued). While a CUDA graph is captured or
    ``torch.compile`` traces, on other devices, or where the generator has no offset, it is a
    1-element int64 tensor drawn on the device (``random_``: a captured graph draws a fresh key
    on every replay). ``eager`` is :func:`_eager` of ``device`` where the caller knows it."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if HOST_KEYS and device.type == "cuda" and (_eager(device) if eager is None else eager):
        gen = generator
        if gen is None:
            index = device.index if device.index is not None else _current_device()
            gen = torch.cuda.default_generators[index]
        key = host_key(gen)
        if key is not None:
            return key
    return torch.empty(1, dtype=torch.int64, device=device).random_(generator=generator)


def host_key(gen: torch.Generator) -> Optional[int]:
    """:func:`new_key`'s key on the host from ``gen``'s seed and Philox offset (which it
    advances by 4), or None where the generator has no offset."""
    try:
        seed, offset = gen.initial_seed(), gen.get_offset()
        gen.set_offset(offset + 4)
    except (AttributeError, RuntimeError):  # a generator without a Philox offset
        return None
    return _mix(seed, offset)


def _key_args(key):
    """The kernels' key parameters ``(key_ptr, key_value, KEY_PTR)`` and the part of the launch
    key they decide: a device tensor is read in the kernel, an int is passed by value."""
    if isinstance(key, torch.Tensor):  # Triton specializes pointers on 16-byte alignment
        return (key, 0, True), ("ptr", key.data_ptr() % 16 == 0)
    key = int(key)
    if not 0 <= key < 2 ** 63:
        raise ValueError(f"key must be in [0, 2**63), got {key}")
    return (None, key, False), ("i32" if key < 2 ** 31 else "i64")


def _fitting_geometry(shape, block, seeds) -> Geometry:
    geo = geometry(tuple(shape), tuple(block), seeds, TILE_UNITS)
    if geo is None:
        raise ValueError(f"input of shape {tuple(shape)} with block {tuple(block)} does not fit "
                         "the Triton launch grid or seed window")
    return geo


def keep_mask(shape, device, gamma, block, seeds, key):
    """Boolean keep mask of a channels_first input of ``shape`` and the int64 count of kept
    units (a 1-element tensor), for the seeds ``key`` selects (an int, or an int64 tensor of
    one element on ``device``)."""
    return _mask_bytes(_fitting_geometry(shape, block, seeds), shape, device, gamma, key)


def _mask_bytes(geo: Geometry, shape, device, gamma, key):
    keep = torch.empty(tuple(shape), dtype=torch.bool, device=device)
    count = torch.zeros(1, dtype=torch.int64, device=device)
    thresh = threshold(gamma)
    key_args, kind = _key_args(key)
    with _on(keep.device):
        _launch.launch(_kernels().dropblock_mask_kernel, geo.launch, (geo, thresh, kind),
                       (keep.view(torch.uint8), count, *key_args[:2], thresh, geo.n_mblocks,
                        *geo.dims, geo.bm, geo.th, geo.tw, geo.gth, geo.gtw, key_args[2]),
                       mask_warps(geo))
    return keep, count


# (device index, stream) -> (accumulator, scratch) of the row-word kernel for eager calls: the
# accumulator (one int64) is 0 between launches, as the kernel leaves it, so no call has to
# fill a counter (on an H100 ``zeros(1)`` cost the host about 10 us per call); the scratch
# (int64) grows to the largest launch seen, up to _MAX_KEPT_SCRATCH entries (16 MiB; the
# ResNet-50 stages need 2 MiB), beyond which each call allocates its own. Launches on one
# stream run in order, so they can share both; another stream gets its own.
_STATE: Dict[tuple, tuple] = {}
_MAX_STATES = 16
_MAX_KEPT_SCRATCH = 1 << 21


def _row_state(device: torch.device, scratch: int, eager: bool):
    """The row-word kernel's accumulator and scratch memory (at least ``scratch`` entries):
    kept per device and current stream for eager calls; fresh ones (a zeroed accumulator)
    while a CUDA graph is captured or ``torch.compile`` traces, so that a graph owns its own."""
    if not eager:
        return (torch.zeros(1, dtype=torch.int64, device=device),
                torch.empty(scratch, dtype=torch.int64, device=device))
    if device.type == "cuda":
        index = device.index if device.index is not None else _current_device()
        where = (index, torch._C._cuda_getCurrentRawStream(index))
    else:  # Triton's interpreter (CPU tests)
        where = (device.type, 0)
    state = _STATE.get(where)
    if state is None:
        if len(_STATE) >= _MAX_STATES:  # many streams: start again (allocations are
            _STATE.clear()                # stream-ordered, so queued launches are safe)
        state = _STATE[where] = (torch.zeros(1, dtype=torch.int64, device=device),
                                 torch.empty(0, dtype=torch.int64, device=device))
    if state[1].numel() >= scratch:
        return state
    grown = torch.empty(scratch, dtype=torch.int64, device=device)
    if scratch > _MAX_KEPT_SCRATCH:  # a large launch: its scratch is freed after the call
        return state[0], grown
    state = _STATE[where] = (state[0], grown)
    return state


def _row_buffer(geo: RowGeometry, device: torch.device, gamma, key,
                eager: bool = True) -> torch.Tensor:
    """The row words (int64, one per row) followed by the count of kept units: ``geo.rows + 1``
    entries in one buffer."""
    words = torch.empty(geo.rows + 1, dtype=torch.int64, device=device)
    acc, scratch = _row_state(device, geo.scratch, eager)
    thresh = threshold(gamma)
    key_args, kind = _key_args(key)
    with _on(device):
        _launch.launch(_kernels().dropblock_rows_kernel, geo.launch, (geo, thresh, kind),
                       (words, scratch, acc, *key_args[:2], thresh, geo.n_mblocks, *geo.dims,
                        *geo.consts, key_args[2]), ROW_WARPS)
    return words


def _row_words(geo: RowGeometry, device, gamma, key):
    """Row words (int64) and the count (a 1-element view of the same buffer)."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    words = _row_buffer(geo, device, gamma, key, _eager(device))
    return words[:geo.rows], words[geo.rows:]


def row_words(shape, device, gamma, block, seeds, key):
    """The row words (int64, one per row of the ``(N*C*D*H, W)`` view, bit ``w`` set when unit
    ``w`` is dropped) and the int64 count of kept units, for the seeds ``key`` selects: the
    mask :func:`keep_mask` returns, as :func:`words_keep_mask` expands it."""
    geo = row_geometry(tuple(shape), tuple(block), seeds, ROW_ITEMS)
    if geo is None:
        raise ValueError(f"rows of input shape {tuple(shape)} with block {tuple(block)} are "
                         "wider than one 64-bit word")
    return _row_words(geo, device, gamma, key)


def words_keep_mask(words: torch.Tensor, shape) -> torch.Tensor:
    """The boolean keep mask of ``shape`` that row words describe (a buffer of
    :func:`_row_buffer`, with the count after the words, is cut to the rows)."""
    words = words[:math.prod(shape) // shape[-1]]
    bits = (words[:, None] >> torch.arange(shape[-1], device=words.device)) & 1
    return (bits == 0).reshape(shape)


def seed_grid(shape, device, gamma, block, seeds, key) -> torch.Tensor:
    """The seeds (bool, shaped like the seed grid) that :func:`keep_mask` draws for ``key``."""
    geo = _fitting_geometry(shape, block, seeds)
    m, _, _, _, gd, gh, gw, gw4 = geo.dims[:8]
    out = torch.zeros((m, gd, gh, gw), dtype=torch.uint8, device=device)
    launch = (m * gd, -(-gh // geo.gth), -(-gw // geo.gtw))
    with _on(out.device):
        (key_ptr, key_value, from_ptr), _ = _key_args(key)
        _kernels().seed_grid_kernel[launch](out, key_ptr, key_value, threshold(gamma), m, gd, gh,
                                            gw, gw4, GTH=geo.gth, GTW=geo.gtw, KEY_PTR=from_ptr)
    return out.view(seed_grid_shape(tuple(shape), block, "channels_first", seeds)).bool()


def _apply(x: torch.Tensor, mask: torch.Tensor, param, from_count: bool,
           out: torch.Tensor) -> torch.Tensor:
    """``out = x * keep * scale``; ``mask`` is the boolean keep mask or a buffer of x's row
    words followed by the count of kept units (int64, see :func:`_row_buffer`); ``param`` is
    the kept-unit count of a boolean mask (a device tensor) when ``from_count`` (unused with
    row words), else the scale as a Python float (passed by value as its float64 bits)."""
    n = x.numel()
    launch = (-(-n // APPLY_BLOCK),)
    count, bits = (param, 0) if from_count else (None, _float64_bits(param))
    wide = x.dtype == torch.float64
    key = product_key(x.dtype, x.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0, n, from_count)
    with _on(x.device):
        if mask.dtype == torch.int64:
            w = x.shape[-1]
            check_row_words(mask, n, w)
            grid, tail = rows_launch_args(n, w, bits, from_count, wide)
            _launch.launch(_kernels().masked_rows_kernel, grid, key + (w,), (x, mask, out) + tail,
                           APPLY_WARPS)
        else:
            _launch.launch(_kernels().masked_scale_kernel, launch, key,
                           (x, mask.view(torch.uint8), out, count, bits, n, n, from_count, wide,
                            APPLY_BLOCK), APPLY_WARPS)
    return out


def rows_launch_args(n: int, w: int, bits: int, from_count: bool, wide: bool) -> tuple:
    """:func:`._triton_kernels.masked_rows_kernel`'s launch grid and its arguments after the
    three pointers, for ``n`` units in rows of ``w`` (the plans of :mod:`._prepared` launch it
    with these too)."""
    return (-(-n // APPLY_BLOCK),), (bits, n, n, w, from_count, wide, APPLY_BLOCK)


def check_row_words(words: torch.Tensor, n: int, w: int) -> None:
    """The product kernels read the count of kept units after the words of ``n // w`` rows."""
    if words.numel() != n // w + 1:
        raise ValueError(f"row words of {n // w} rows need the count after them "
                         f"({n // w + 1} entries), got {words.numel()}")


def product_key(dtype, x_aligned: bool, out_aligned: bool, n: int, from_count: bool) -> tuple:
    """The launch key (:func:`._launch.launch`) of the product kernels, which the row-word
    kernel extends by the row width: what decides their specialization, the compile-time
    constant ``APPLY_BLOCK`` included. (Without it, a direct launch after ``APPLY_BLOCK`` had
    changed ran the kernel compiled for the old block over a grid sized for the new one: with a
    larger block, part of the output was never written.)"""
    return (dtype, x_aligned, out_aligned, n, from_count, APPLY_BLOCK)


def _float64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _scale(keep: torch.Tensor, param, from_count: bool, dtype) -> torch.Tensor:
    """The scale as a 0-d tensor (for the double-backward fallback), divided as in the kernel."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if not from_count:  # the float64 scale rounded to the kernel's arithmetic type
        return torch.tensor(param, dtype=torch.float64, device=keep.device).to(acc)
    return scale_from_count(param, keep.numel(), dtype)


def _keep(mask: torch.Tensor, shape) -> torch.Tensor:
    return words_keep_mask(mask, shape) if mask.dtype == torch.int64 else mask


def differentiable_product(grad: torch.Tensor, mask: torch.Tensor, param,
                           from_count: bool) -> torch.Tensor:
    """``grad * keep * scale`` in differentiable tensor operations (double backward); ``mask``
    and ``param`` as for :func:`_apply`."""
    if from_count and mask.dtype == torch.int64:
        param = mask[-1:]  # the count after the row words
    keep = _keep(mask, grad.shape)
    scale = _scale(keep, param, from_count, grad.dtype)
    return grad * (keep.to(grad.dtype) * scale).to(grad.dtype)


class MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` by :func:`._triton_kernels.masked_scale_kernel` (or
    ``masked_rows_kernel``); saves the mask (1 byte per unit, or a word per row with the count
    after them) and the 8-byte count of a byte mask (or keeps the scale as a float) for the
    backward pass."""

    @staticmethod
    def forward(ctx, x, keep, param, from_count, inplace):
        out = x if inplace else torch.empty_like(x)
        _apply(x, keep, param, from_count, out)
        if inplace:
            ctx.mark_dirty(x)
        if from_count and keep.dtype == torch.bool:
            ctx.save_for_backward(keep, param)
            ctx.scale = None
        else:  # row words carry their count; a scale is a float
            ctx.save_for_backward(keep)
            ctx.scale = param
        ctx.from_count = from_count
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        keep, param = saved if len(saved) == 2 else (saved[0], ctx.scale)
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if grad.requires_grad:  # double backward: differentiable tensor operations
            return (differentiable_product(grad, keep, param, ctx.from_count),
                    None, None, None, None)
        grad = grad.contiguous()
        out = _apply(grad, keep, param, ctx.from_count, torch.empty_like(grad))
        return out, None, None, None, None


# Combinations (device, geometry, dtype, normalization) whose kernels compiled and ran, and
# devices where a first use failed (a GPU that Triton cannot target, a broken Triton install):
# those fall back to tensor operations from then on, after one warning. Failures of a
# combination that already ran are not caught.
_CHECKED: set = set()
_FAILED: Dict[str, str] = {}
# Row-word geometries whose first use on a device gave the byte-mask kernel's mask, and devices
# where they did not (or failed): those use byte masks from then on, after one warning.
_ROWS_CHECKED: set = set()
_ROWS_FAILED: Dict[str, str] = {}
_CHECK_KEY = 0x2545F4914F6CDD1D  # a fixed key: the check draws nothing from any generator


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _rows_problem(x: torch.Tensor, gamma: float, geo: RowGeometry, block: tuple, seeds: str):
    """None when the row-word kernel gives the byte-mask kernel's mask and count for this
    geometry (same key, on x's device), else what went wrong."""
    try:
        with torch.no_grad():
            words, count = _row_words(geo, x.device, gamma, _CHECK_KEY)
            keep, expected = keep_mask(x.shape, x.device, gamma, block, seeds, _CHECK_KEY)
            if not torch.equal(words_keep_mask(words, x.shape), keep):
                return "its mask differs from the byte-mask kernel's"
            if not torch.equal(count, expected):
                return "its count of kept units differs from the byte-mask kernel's"
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def dropblock(x: torch.Tensor, gamma: float, block: tuple, seeds: str, normalize: str,
              rate: float, generator: Optional[torch.Generator], inplace: bool):
    """DropBlock of a channels_first contiguous input (see :func:`usable`), or None when the
    caller should use tensor operations: the input does not fit the launch grid or the seed
    window, or the kernels failed on their first use on this device (with a warning).

    The first use of a row-word geometry on a device is checked against the byte-mask kernel
    (the older one, which wider rows use anyway); should they disagree, or the row-word kernel fail, the device
    uses byte masks from then on (with a warning). While a CUDA graph is being captured nothing
    may synchronize, so an unchecked row-word geometry uses byte masks there."""
    shape, block = tuple(x.shape), tuple(block)
    device = str(x.device)
    geo = None
    if ROW_WORDS and device not in _ROWS_FAILED:
        geo = row_geometry(shape, block, seeds, ROW_ITEMS)
        if geo is not None and (device, geo) not in _ROWS_CHECKED:
            if _capturing(x):  # the check synchronizes, which capture forbids: bytes this time
                geo = None
            else:
                problem = _rows_problem(x, gamma, geo, block, seeds)
                if problem is None:
                    _ROWS_CHECKED.add((device, geo))
                else:
                    _ROWS_FAILED[device] = problem
                    warnings.warn(f"structdrop: the Triton DropBlock row-word kernel failed its "
                                  f"check on {device} ({problem[:300]}); DropBlock uses byte "
                                  "masks on this device from now on", RuntimeWarning, stacklevel=3)
                    geo = None
    if geo is None:
        geo = geometry(shape, block, seeds, TILE_UNITS)
    if geo is None or device in _FAILED:
        return None
    signature = (device, geo, x.dtype, normalize)
    if signature in _CHECKED:
        return _dropblock(x, gamma, geo, normalize, rate, generator, inplace)
    try:
        out = _dropblock(x, gamma, geo, normalize, rate, generator, inplace)
    except Exception as exc:  # first use on this device: compile or launch failed
        _FAILED[device] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"structdrop: the Triton DropBlock kernels failed on {device} "
                      f"({_FAILED[device][:300]}); DropBlock uses tensor operations on this "
                      "device from now on", RuntimeWarning, stacklevel=3)
        return None
    _CHECKED.add(signature)
    return out


def _dropblock(x, gamma, geo, normalize, rate, generator, inplace):
    # Nothing here records autograd history (fresh buffers, Triton launches), so no no_grad.
    keep, param, from_count = drawn_mask(x, gamma, geo, normalize, rate, generator)
    return apply_masked_scale(x, keep, param, from_count, inplace)


def drawn_mask(x, gamma, geo, normalize, rate, generator):
    """One call's mask for x's device (row words then the count, or a byte mask and its count)
    from a key drawn from ``generator``, with the product kernel's ``param`` and
    ``from_count``: what every Triton route draws, so a seed gives the same mask in each."""
    device = x.device
    eager = _eager(device)
    key = new_key(device, generator, eager)
    if isinstance(geo, RowGeometry):  # the count comes after the words: nothing to pass
        keep, count = _row_buffer(geo, device, gamma, key, eager), None
    else:
        keep, count = _mask_bytes(geo, x.shape, device, gamma, key)
    if normalize == "batch":
        return keep, count, True
    return keep, 1.0 / (1.0 - rate), False  # passed by value: no device tensor to fill


# ``MaskedScale.apply`` is a Python wrapper (functorch bookkeeping) around the C++ apply; on a
# GPU its cost is a visible share of a call's host time, so plain calls use the C++ one.
_BASE_APPLY = super(torch.autograd.Function, MaskedScale).apply


def apply_masked_scale(x, keep, param, from_count: bool, inplace: bool) -> torch.Tensor:
    """``MaskedScale.apply(x, keep, param, from_count, inplace)``, through the C++ apply where
    no functorch transform is active, ``x`` is a plain tensor and nothing is being compiled."""
    if (torch._C._are_functorch_transforms_active() or _compiling()
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return MaskedScale.apply(x, keep, param, from_count, inplace)
    return _BASE_APPLY(x, keep, param, from_count, inplace)
