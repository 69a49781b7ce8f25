"""Painting DropBlock masks from seed positions (PyTorch).

Given the flat positions of the seeds in the seed grid (see
:func:`structdrop_tutorial.shapes.seed_grid_shape`), these functions return the boolean mask
:func:`structdrop_tutorial.torch.dropblock_keep_mask` would build from the same seeds, bit for
bit, without a dense pass over the grid:

* :func:`seeds_to_dropped` writes every block into a buffer filled with ones (or zeros): on the
  CPU with one index per seed through a view of overlapping block-sized windows
  (:func:`_write_windows`), elsewhere unit by unit (about ``block**d`` indices per seed).
* :func:`seeds_to_keep_from_table` serves small maps: the keep mask of a map with a single seed
  at position ``s`` is precomputed for every ``s`` (a table of ``grid positions x map units``
  bytes, cached). Each map's mask starts as a copy of the table row of its *first* seed (or the
  all-ones row when it has none): one sequential row gather writes the whole mask. Only the
  seeds that share a map with an earlier one are written by index. On a 32x1024x14x14 input
  with 7x7 blocks at rate 0.1 about 80% of the seeds are first in their map, and this measured
  2-3 times faster than writing every block by index.
* :func:`seeds_to_dropped_separable` writes each block's first row and grows it by window ORs;
  it is kept as a tested alternative (it measured slower than both on the CPU).

All three agree with the reference on every layout, block, share mode and seed mode
(tests/test_torch_functional.py).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

from ._fast import _compiling, reusable_mask

# Largest index tensor built at once when painting blocks unit by unit (entries).
WRITE_GROUP = 1 << 22
# Paint each block with one index through a view of overlapping windows (CPU, see
# _write_windows); tests switch it off to run the unit writes.
WINDOW_WRITES = True
# Largest single-seed table (grid positions x map units, bytes) the table painter builds.
TABLE_MAX_BYTES = 1 << 21
# Most seeds per map, on average, for which the table painter is used.
TABLE_MAX_SEEDS_PER_MAP = 1.0

_TABLES: Dict[tuple, torch.Tensor] = {}


def _contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= int(n)
    return tuple(reversed(strides))


def _buffer_shape(grid_shape, axes, block, spatial, seeds):
    """The painted buffer: the map for valid seeds; for padded seeds the map plus ``b - 1`` on
    both sides of every spatial axis (cropped at the end)."""
    shape = [int(n) for n in grid_shape]
    for a, b, n in zip(axes, block, spatial):
        shape[a] = n if seeds == "valid" else n + 2 * (b - 1)
    return shape


def _crop(buf: torch.Tensor, axes, block, spatial, seeds) -> torch.Tensor:
    if seeds == "valid":
        return buf
    index = [slice(None)] * buf.ndim
    for a, b, n in zip(axes, block, spatial):
        index[a] = slice(b - 1, b - 1 + n)
    return buf[tuple(index)]


def _seed_offsets(grid_shape, buf_shape, device) -> torch.Tensor:
    """``table[i]``: where grid position ``i`` of one sample (all axes but the batch axis) lies
    in the flattened buffer of one sample. Cached per geometry and device."""
    key = ("seed", tuple(grid_shape[1:]), tuple(buf_shape[1:]), str(device))
    table = _TABLES.get(key)
    if table is None:
        strides = _contiguous_strides(buf_shape)
        table = torch.zeros((), dtype=torch.long, device=device)
        for n, stride in zip(grid_shape[1:], strides[1:]):
            step = torch.arange(int(n), dtype=torch.long, device=device) * stride
            table = (table[..., None] + step).reshape(-1)
        table = _TABLES[key] = table.reshape(-1)
    return table


def _block_offsets(buf_shape, axes, block, device) -> torch.Tensor:
    """Offsets of a block's units from its first unit in the flattened buffer (cached)."""
    key = ("block", tuple(buf_shape[1:]), tuple(axes), tuple(block), str(device))
    offsets = _TABLES.get(key)
    if offsets is None:
        strides = _contiguous_strides(buf_shape)
        offsets = torch.zeros(1, dtype=torch.long, device=device)
        for a, b in zip(axes, block):
            step = torch.arange(b, dtype=torch.long, device=device) * strides[a]
            offsets = (offsets[:, None] + step[None, :]).reshape(-1)
        offsets = _TABLES[key] = offsets
    return offsets


# Largest per-sample seed grid whose offsets are tabulated (larger ones are unravelled).
SEED_TABLE_MAX = 1 << 20


def _write_blocks(flat_buf: torch.Tensor, flat_seeds: torch.Tensor, grid_shape, buf_shape, axes,
                  block, value: bool) -> None:
    """Set every unit of the block of each seed to ``value`` in the flattened buffer."""
    if not flat_seeds.numel():
        return
    device = flat_seeds.device
    per_sample = math.prod(int(n) for n in grid_shape[1:])
    if per_sample <= SEED_TABLE_MAX:
        # sample index times the buffer's sample size, plus the tabulated offset in the sample
        sample = torch.div(flat_seeds, per_sample, rounding_mode="floor")
        base = torch.index_select(_seed_offsets(grid_shape, buf_shape, device), 0,
                                  flat_seeds - sample * per_sample)
        base += sample * math.prod(int(n) for n in buf_shape[1:])
    else:  # unravel the grid index and re-ravel it in the buffer
        buf_strides = _contiguous_strides(buf_shape)
        rest = flat_seeds
        base = torch.zeros_like(flat_seeds)
        for d in range(len(grid_shape) - 1, -1, -1):
            n = int(grid_shape[d])
            coord = rest % n
            rest = rest // n
            base += coord * buf_strides[d]
    if _write_windows(flat_buf, base, buf_shape, axes, block, value):
        return
    offsets = _block_offsets(buf_shape, axes, block, device)
    # Write in groups of block offsets so that no index tensor exceeds WRITE_GROUP entries
    # (large temporaries cost page faults on every call; small ones are reused).
    per_group = max(1, WRITE_GROUP // base.numel())
    for start in range(0, offsets.numel(), per_group):
        index = (base[:, None] + offsets[None, start:start + per_group]).reshape(-1)
        flat_buf.index_fill_(0, index, value)


def _write_windows(flat_buf: torch.Tensor, base: torch.Tensor, buf_shape, axes, block,
                   value: bool) -> bool:
    """Write whole blocks with one index per seed, or return False where this is not done.

    ``windows[p]`` below is the block whose first unit is ``flat_buf[p]``: a view of shape
    ``(positions, *block)`` with strides ``(1, *axis strides)``, so neighbouring windows share
    memory, and ``index_fill_`` along its first axis sets every unit of each seed's block. This
    builds no per-unit index tensor (``block**d`` int64 entries per seed for the unit writes),
    and measured about twice as fast as the unit writes on the 2-core CPU (32x512x28x28, block
    7: 1.9-2.1 ms against 3.7-3.9 ms). Overlapping blocks write the same value twice, as the
    unit writes do. Used on the CPU, outside torch.compile, while :data:`WINDOW_WRITES` is set;
    a PyTorch that refuses writes through self-overlapping views turns it off for the process.
    """
    global WINDOW_WRITES
    if not WINDOW_WRITES or flat_buf.device.type != "cpu" or _compiling():
        return False
    strides = _contiguous_strides(buf_shape)
    step = tuple(strides[a] for a in axes)
    span = sum((b - 1) * st for b, st in zip(block, step))
    windows = flat_buf.as_strided((flat_buf.numel() - span,) + tuple(block), (1,) + step,
                                  flat_buf.storage_offset())
    try:
        windows.index_fill_(0, base, value)
    except RuntimeError:  # e.g. a future check against internal overlap: unit writes from now on
        WINDOW_WRITES = False
        return False
    return True


def seeds_to_dropped(flat_seeds: torch.Tensor, grid_shape: Sequence[int], axes: Sequence[int],
                     block: Sequence[int], spatial: Sequence[int], seeds: str,
                     keep: bool = False) -> torch.Tensor:
    """Boolean "dropped" mask (True = dropped) painted from seed positions.

    Args:
        flat_seeds: int64 flat indices into a C-contiguous tensor of shape ``grid_shape``.
        grid_shape: the seed grid's shape (see :func:`structdrop_tutorial.shapes.seed_grid_shape`).
        axes: the spatial axes; ``block`` the clipped block per axis; ``spatial`` the map size.
        seeds: ``"valid"`` (seed ``s`` drops ``s .. s + b - 1``) or ``"padded"`` (seed ``s``
            drops ``s - b + 1 .. s``, clipped to the map).
        keep: return the keep mask (True = kept) instead, painted directly (no inversion pass).

    Returns:
        A bool tensor with the map's spatial sizes and the grid's other sizes. For padded seeds
        it is a view into a larger buffer (the part that hangs over the border is cut off).
    """
    buf_shape = _buffer_shape(grid_shape, axes, block, spatial, seeds)
    buf = reusable_mask(buf_shape, flat_seeds.device).fill_(keep)
    _write_blocks(buf.view(-1), flat_seeds, grid_shape, buf_shape, axes, block, not keep)
    return _crop(buf, axes, block, spatial, seeds)


def table_bytes(grid_shape, axes, block, spatial, seeds) -> int:
    """Size of the single-seed table :func:`seeds_to_keep_from_table` needs."""
    buf_shape = _buffer_shape(grid_shape, axes, block, spatial, seeds)
    positions = math.prod(int(grid_shape[a]) for a in axes)
    return (positions + 1) * math.prod(buf_shape[a] for a in axes)


def use_table(grid_shape, axes, block, spatial, seeds, n_seeds: int, device) -> bool:
    """Whether the table painter is expected to beat writing every block by index.

    It runs on the CPU only: it selects seeds with ``nonzero``/``masked_select``, which would
    synchronize a GPU, and it was measured on the CPU. It needs ``channels_first``-like layouts
    (the spatial axes last, so a map is one contiguous row), a table of at most
    :data:`TABLE_MAX_BYTES`, and at most
    :data:`TABLE_MAX_SEEDS_PER_MAP` seeds per map on average: with more, most seeds are not
    first in their map and the gain is lost (measured: 0.6x the time of index writes at 0.4
    seeds per map, 0.97x at 1.1, 1.08x at 1.7).
    """
    n_sp = len(axes)
    if torch.device(device).type != "cpu":
        return False
    if tuple(axes) != tuple(range(len(grid_shape) - n_sp, len(grid_shape))):
        return False
    if table_bytes(grid_shape, axes, block, spatial, seeds) > TABLE_MAX_BYTES:
        return False
    maps = math.prod(int(n) for n in grid_shape[:len(grid_shape) - n_sp])
    return n_seeds <= TABLE_MAX_SEEDS_PER_MAP * maps


def _single_seed_table(grid_shape, axes, block, spatial, seeds, device) -> torch.Tensor:
    """Row ``s``: the (uncropped) keep buffer of one map with a single seed at grid position
    ``s``; the last row is all ones (no seed). Cached per geometry and device."""
    n_sp = len(axes)
    grid_sp = tuple(int(grid_shape[a]) for a in axes)
    key = (grid_sp, tuple(block), tuple(spatial), seeds, str(device))
    table = _TABLES.get(key)
    if table is None:
        positions = math.prod(grid_sp)
        one_per_map = (positions,) + grid_sp  # map s holds the seed at position s
        sp_axes = tuple(range(1, 1 + n_sp))
        flat = torch.arange(positions, dtype=torch.long, device=device) * (positions + 1)
        buf_shape = _buffer_shape(one_per_map, sp_axes, block, spatial, seeds)
        rows = torch.ones(positions + 1, math.prod(buf_shape[1:]), dtype=torch.bool, device=device)
        _write_blocks(rows[:positions].reshape(-1), flat, one_per_map, buf_shape, sp_axes, block,
                      False)
        table = _TABLES[key] = rows
    return table


def seeds_to_keep_from_table(flat_seeds: torch.Tensor, grid_shape: Sequence[int],
                             axes: Sequence[int], block: Sequence[int], spatial: Sequence[int],
                             seeds: str) -> torch.Tensor:
    """Boolean keep mask (True = kept): each map copies the table row of its first seed, the
    other seeds are written by index. Same arguments and result as :func:`seeds_to_dropped`
    with ``keep=True``; the spatial axes must be the last ones (see :func:`use_table`)."""
    device = flat_seeds.device
    n_sp = len(axes)
    lead = [int(n) for n in grid_shape[:len(grid_shape) - n_sp]]
    table = _single_seed_table(grid_shape, axes, block, spatial, seeds, device)
    positions = table.shape[0] - 1
    maps = math.prod(lead)
    which = torch.full((maps,), positions, dtype=torch.long, device=device)  # the no-seed row
    later = flat_seeds[:0]
    if flat_seeds.numel():
        map_of = torch.div(flat_seeds, positions, rounding_mode="floor")
        first = torch.ones(flat_seeds.shape, dtype=torch.bool, device=device)
        first[1:] = map_of[1:] != map_of[:-1]  # positions are sorted: a new map starts a run
        index = torch.nonzero(first).reshape(-1)
        first_maps = map_of.index_select(0, index)
        which.index_copy_(0, first_maps, flat_seeds.index_select(0, index) - first_maps * positions)
        later = torch.masked_select(flat_seeds, ~first)
    buf_shape = _buffer_shape(grid_shape, axes, block, spatial, seeds)
    buf = reusable_mask(buf_shape, device)
    torch.index_select(table, 0, which, out=buf.view(maps, table.shape[1]))
    _write_blocks(buf.view(-1), later, grid_shape, buf_shape, axes, block, False)
    return _crop(buf, axes, block, spatial, seeds)


def seeds_to_dropped_separable(flat_seeds: torch.Tensor, grid_shape: Sequence[int],
                               axes: Sequence[int], block: Sequence[int],
                               spatial: Sequence[int]) -> torch.Tensor:
    """Valid-seed "dropped" mask, painted separably: rows by writes, the other axes by ORs.

    Each seed writes its block's extent along the *last* spatial axis (``b`` writes per seed)
    into a buffer whose other spatial axes are padded by ``b - 1`` on both sides; a window OR of
    width ``b`` along each of those axes (a stride-1 max pool on booleans, done by doubling
    shifts) then grows the rows into blocks. The ORs run on the buffer reinterpreted as wider
    integers where the innermost size allows it (bitwise OR is bytewise), so they touch 2, 4 or
    8 units per operation. The result equals :func:`seeds_to_dropped` with ``seeds="valid"``.
    """
    device = flat_seeds.device
    last = axes[-1]
    buf_shape = list(grid_shape)
    for a, b, n in zip(axes, block, spatial):
        buf_shape[a] = n if a == last else n + b - 1
    buf = torch.zeros(buf_shape, dtype=torch.bool, device=device)
    if flat_seeds.numel():
        buf_strides = _contiguous_strides(buf_shape)
        rest = flat_seeds
        base = torch.zeros_like(flat_seeds)
        pad = {a: b - 1 for a, b in zip(axes, block) if a != last}
        for d in range(len(grid_shape) - 1, -1, -1):
            n = int(grid_shape[d])
            coord = rest % n
            rest = rest // n
            if d in pad:
                coord = coord + pad[d]
            base += coord * buf_strides[d]
        b_last = block[-1]
        step = torch.arange(b_last, dtype=torch.long, device=device) * buf_strides[last]
        index = (base[:, None] + step[None, :]).reshape(-1)
        buf.view(-1).index_fill_(0, index, True)
    inner = buf_shape[-1]
    word = next(w for w, dt in ((8, torch.int64), (4, torch.int32), (2, torch.int16), (1, None))
                if inner % w == 0)
    out = buf
    for a, b in zip(axes, block):
        if a == last or b == 1:
            continue
        view = out.view(torch.uint8)
        if word > 1:
            view = view.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[word])
        view = window_or(view, a, b)
        out = view.view(torch.uint8).view(torch.bool) if word > 1 else view.view(torch.bool)
    return out


def window_or(a: torch.Tensor, axis: int, b: int) -> torch.Tensor:
    """OR over every window of ``b`` consecutive entries along ``axis`` (n -> n - b + 1)."""
    width = 1
    while 2 * width <= b:
        n = a.shape[axis]
        a = torch.bitwise_or(a.narrow(axis, 0, n - width), a.narrow(axis, width, n - width))
        width *= 2
    if width < b:
        n, shift = a.shape[axis], b - width
        a = torch.bitwise_or(a.narrow(axis, 0, n - shift), a.narrow(axis, shift, n - shift))
    return a
