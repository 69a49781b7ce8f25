"""Triton kernels of the CUDA DropBlock path (imported only by :mod:`._triton`, on first use).

Layout: the input is viewed as ``(M, D, H, W)`` maps (``M = N * C``; a 2-D input has ``D = 1``,
a 1-D input is folded into one ``(M, W)`` map with a block of height 1, which draws the same
seeds). The seed grid is ``(M, GD, GH, GW)``; seed ``g`` covers the units ``u`` with
``u + P - B + 1 <= g <= u + P`` on each axis, where ``P = 0`` for valid seeds and ``B - 1`` for
padded ones (the same sets :func:`structdrop_tutorial.torch.dropblock_keep_mask` paints).

Seeds come from Philox-4x32-10, a counter-based generator: grid position ``(m, gd, gh, gw)`` reads
lane ``(0, 2, 1, 3)[gw % 4]`` of the counter ``((m * GD + gd) * GH + gh) * ceil(GW / 4) + gw // 4``
under the call's 64-bit key (passed by value, or read from memory where it is drawn on the device,
``KEY_PTR``), and is a seed when that 32-bit word is below
``round(gamma * 2**32)``. Every position has its own word whatever the tiling, so the mask does
not depend on the launch configuration, both mask kernels (bytes and row words) draw the same
seeds, and :func:`seed_grid_kernel` can write the very seeds the mask kernels used.
"""
import triton
import triton.language as tl


@triton.jit
def _seed_tile(key, thresh, m, gd, gh0, gw0, M, GD, GH, GW, GW4,
               BM: tl.constexpr, GTH: tl.constexpr, GTW: tl.constexpr):
    """Seeds (bool ``[BM, GTH, GTW]``) of maps ``m``, depth ``gd``, grid rows ``gh0 ..`` and
    columns ``gw0 ..`` (``gw0 % 4 == 0``); positions outside the grid are never seeds."""
    rows = gh0 + tl.arange(0, GTH)
    quads = gw0 // 4 + tl.arange(0, GTW // 4)
    first_row = (m.to(tl.int64) * GD + gd) * GH
    counter = (first_row[:, None, None] + rows[None, :, None]) * GW4 + quads[None, None, :]
    r0, r1, r2, r3 = tl.randint4x(key, counter)
    words = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BM, GTH, GTW))
    cols = gw0 + tl.arange(0, GTW)
    inside = (m < M)[:, None, None] & (rows < GH)[None, :, None] & (cols < GW)[None, None, :]
    return (words.to(tl.int64) < thresh) & inside


@triton.jit
def _key(key_ptr, key_value, KEY_PTR: tl.constexpr):
    """The call's Philox key: loaded from ``key_ptr`` (drawn on the device) or ``key_value``."""
    if KEY_PTR:
        return tl.load(key_ptr)
    else:
        return key_value


@triton.jit(do_not_specialize=["key_value"])
def dropblock_mask_kernel(keep_ptr, count_ptr, key_ptr, key_value, thresh, n_mblocks,
                          M, D, H, W, GD, GH, GW, GW4, PD, PH, PW, BD: tl.constexpr, BH, BW,
                          BM: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                          GTH: tl.constexpr, GTW: tl.constexpr, KEY_PTR: tl.constexpr):
    """Keep mask (uint8, ``(M, D, H, W)``) of one tile: ``BM`` maps, one depth slice, ``TH x TW``
    units; adds the number of kept units to ``count_ptr``.

    The seeds of the grid window that reaches the tile are drawn in registers (OR-ed over the
    depth window), then the block expansion is two band-matrix products: ``seeds @ Bw`` counts
    the seeds that reach each column, ``Ah @ (that > 0)`` those that reach each unit. With one
    map per program they are 2-D products: compiled for sm_90 at 56x56 (4 warps) that is 3.1
    instead of 5.6 warp-instructions per unit, and wgmma instead of mma
    (``benchmarks/triton_sass.py``).
    """
    pid = tl.program_id(0)
    mb = pid % n_mblocks
    d = pid // n_mblocks
    h0 = tl.program_id(1) * TH
    w0 = tl.program_id(2) * TW
    key = _key(key_ptr, key_value, KEY_PTR)
    m = mb * BM + tl.arange(0, BM)
    gh0 = tl.maximum(h0 + PH - BH + 1, 0)
    gw0 = (tl.maximum(w0 + PW - BW + 1, 0) // 4) * 4
    seeds = tl.zeros((BM, GTH, GTW), dtype=tl.float16)
    for k in range(0, BD):  # the depth window: grid slices d + PD - BD + 1 .. d + PD
        gd = d + PD - BD + 1 + k
        hit = _seed_tile(key, thresh, m, gd, gh0, gw0, M, GD, GH, GW, GW4, BM, GTH, GTW)
        hit = hit & (gd >= 0) & (gd < GD)
        seeds = tl.maximum(seeds, hit.to(tl.float16))
    rows = gh0 + tl.arange(0, GTH)
    cols = gw0 + tl.arange(0, GTW)
    i = h0 + tl.arange(0, TH)
    j = w0 + tl.arange(0, TW)
    bw = (cols[:, None] >= j[None, :] + PW - BW + 1) & (cols[:, None] <= j[None, :] + PW)
    ah = (rows[None, :] >= i[:, None] + PH - BH + 1) & (rows[None, :] <= i[:, None] + PH)
    if BM == 1:  # one map: plain 2-D products (batched ones of one map compile to more code)
        across = tl.dot(tl.reshape(seeds, (GTH, GTW)), bw.to(tl.float16))
        down = tl.reshape(tl.dot(ah.to(tl.float16), (across > 0).to(tl.float16)), (1, TH, TW))
    else:
        across = tl.dot(seeds, tl.broadcast_to(bw.to(tl.float16)[None, :, :], (BM, GTW, TW)))
        down = tl.dot(tl.broadcast_to(ah.to(tl.float16)[None, :, :], (BM, TH, GTH)),
                      (across > 0).to(tl.float16))
    valid = (m < M)[:, None, None] & (i < H)[None, :, None] & (j < W)[None, None, :]
    keep = (down == 0) & valid
    offs = (((m.to(tl.int64) * D + d) * H)[:, None, None] + i[None, :, None]) * W + j[None, None, :]
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=valid)
    kept = tl.sum(tl.sum(tl.sum(keep.to(tl.int32), axis=2), axis=1), axis=0)
    tl.atomic_add(count_ptr, kept.to(tl.int64))


@triton.jit(do_not_specialize=["key_value"])
def seed_grid_kernel(seeds_ptr, key_ptr, key_value, thresh, M, GD, GH, GW, GW4,
                     GTH: tl.constexpr, GTW: tl.constexpr, KEY_PTR: tl.constexpr):
    """The seeds :func:`dropblock_mask_kernel` draws for the same key, written as uint8 into
    an ``(M, GD, GH, GW)`` tensor (tests compare the masks built from them)."""
    pid = tl.program_id(0)
    m_gd = pid // GD
    gd = pid % GD
    gh0 = tl.program_id(1) * GTH
    gw0 = tl.program_id(2) * GTW
    key = _key(key_ptr, key_value, KEY_PTR)
    m = m_gd + tl.arange(0, 1)
    hit = _seed_tile(key, thresh, m, gd, gh0, gw0, M, GD, GH, GW, GW4, 1, GTH, GTW)
    rows = gh0 + tl.arange(0, GTH)
    cols = gw0 + tl.arange(0, GTW)
    inside = (m < M)[:, None, None] & (rows < GH)[None, :, None] & (cols < GW)[None, None, :]
    offs = (((m.to(tl.int64) * GD + gd) * GH)[:, None, None] + rows[None, :, None]) * GW \
        + cols[None, None, :]
    tl.store(seeds_ptr + offs, hit.to(tl.uint8), mask=inside)


@triton.jit(do_not_specialize=["total", "scale_bits"])
def masked_scale_kernel(x_ptr, keep_ptr, out_ptr, count_ptr, scale_bits, n, total,
                        FROM_COUNT: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """``out = x * keep * s``: with ``FROM_COUNT``, ``s = total / kept`` where ``count_ptr`` holds
    the int64 number of kept units (``s = 0`` when nothing is kept); otherwise ``s`` is the
    float64 whose bits are the integer ``scale_bits`` (a kernel argument: no device tensor to
    fill). Arithmetic in float32 (float64 when ``WIDE``), rounded once."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    inb = offs < n
    k = tl.load(keep_ptr + offs, mask=inb)
    _store_scaled(x_ptr, out_ptr, offs, inb, k, count_ptr, scale_bits, total, FROM_COUNT, WIDE)


@triton.jit
def _store_scaled(x_ptr, out_ptr, offs, inb, keep, count_ptr, scale_bits, total,
                  FROM_COUNT: tl.constexpr, WIDE: tl.constexpr):
    """``out = x * keep * s`` at ``offs`` (``keep`` 0 or 1), the scale as the product kernels'
    docstrings say."""
    x = tl.load(x_ptr + offs, mask=inb)
    acc = tl.float64 if WIDE else tl.float32
    if FROM_COUNT:
        kept = tl.load(count_ptr).to(acc)
        if WIDE:  # float64 ``/`` is IEEE division
            s = total.to(acc) / tl.maximum(kept, 1.0)
        else:  # float32 ``/`` compiles to an approximate division (div.full.f32, up to 2 ulp)
            s = tl.math.div_rn(total.to(acc), tl.maximum(kept, 1.0))
        s = tl.where(kept > 0, s, 0.0)
    else:
        s = scale_bits.to(tl.int64).to(tl.float64, bitcast=True).to(acc)
    y = x.to(acc) * (keep.to(acc) * s)
    tl.store(out_ptr + offs, y.to(x.dtype), mask=inb)


# --------------------------------------------------------------------------- row words
# Maps at most 64 units wide (with seed rows at most 64 positions wide) keep their mask as one
# 64-bit word per row: bit ``w`` of row ``(m, d, h)`` is set when unit ``(m, d, h, w)`` is
# dropped. The mask kernel draws the same Philox words as above, so given a key both
# representations hold the same mask.

@triton.jit
def _popcount(v):
    """Set bits of each uint64 (SWAR)."""
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (v * 0x0101010101010101) >> 56


@triton.jit
def _low_bits(n):
    """A uint64 with its ``n`` low bits set, 1 <= n <= 64 (``n`` may be a constexpr 1)."""
    return (tl.full((), 2, tl.uint64) << (tl.cast(n, tl.uint64) - 1)) - 1


@triton.jit(do_not_specialize=["key_value"])
def dropblock_rows_kernel(words_ptr, scratch_ptr, acc_ptr, key_ptr, key_value, thresh,
                          n_mblocks, M, D, H, W, GD, GH, GW, GW4, PD: tl.constexpr,
                          PH: tl.constexpr, PW: tl.constexpr, BD: tl.constexpr,
                          BH: tl.constexpr, BW: tl.constexpr, BM: tl.constexpr,
                          TH: tl.constexpr, GTH: tl.constexpr, GQ: tl.constexpr,
                          KEY_PTR: tl.constexpr):
    """Row words (int64, ``(M, D, H)``) of ``BM`` maps, one depth slice and ``TH`` rows; the
    number of kept units goes to ``words_ptr[M * D * H]``, one past the last word.

    The count needs no zeroed counter per call: ``acc_ptr`` is one int64 that is 0 when the
    launch starts. Every program adds ``kept * 2**32 + 1`` to it in one atomic operation, so
    the value it gets back says how many programs came before it (low 32 bits) and what they
    kept (high bits); the last one writes the total and sets the accumulator back to 0 for the
    next launch on the stream. (The caller keeps one accumulator per device and stream, or a
    zeroed one per call where a CUDA graph is captured; totals stay below ``2**31`` because
    inputs of ``2**31`` units and more use byte masks.)

    Each thread packs the seeds of grid rows into words, ``GQ`` Philox draws (four columns
    each) per row and depth of the window; a block's width is ``BW`` shifted ORs of a word.
    Its height is an OR over ``BH`` grid rows, which live in other threads: the widened words
    go to this program's own slice of ``scratch_ptr``, and after a barrier each unit row reads
    the ``BH`` it needs."""
    pid = tl.program_id(0)
    mb = pid % n_mblocks
    d = pid // n_mblocks
    h0 = tl.program_id(1) * TH
    key = _key(key_ptr, key_value, KEY_PTR)
    bm = tl.arange(0, BM)
    m = mb * BM + bm
    gh0 = tl.maximum(h0 + PH - BH + 1, 0)
    rows = gh0 + tl.arange(0, GTH)
    last = tl.maximum(thresh - 1, 0).to(tl.uint32)  # a word is a seed when <= last (thresh > 0)
    seeds = tl.zeros((BM, GTH), dtype=tl.uint64)
    for k in range(0, BD):  # the depth window: grid slices d + PD - BD + 1 .. d + PD
        gd = d + PD - BD + 1 + k
        counter = ((m.to(tl.int64) * GD + gd) * GH)[:, None] + rows[None, :]
        counter = counter * GW4
        low = tl.zeros((BM, GTH), dtype=tl.uint32)  # columns 0 .. 31, 32-bit arithmetic
        high = tl.zeros((BM, GTH), dtype=tl.uint32)  # columns 32 .. 63
        for q in tl.static_range(GQ):  # columns 4q .. 4q + 3 read lanes 0, 2, 1, 3
            r0, r1, r2, r3 = tl.randint4x(key, counter + q)
            nib = ((r0 <= last).to(tl.uint32) | ((r2 <= last).to(tl.uint32) << 1)
                   | ((r1 <= last).to(tl.uint32) << 2) | ((r3 <= last).to(tl.uint32) << 3))
            if q < 8:
                low |= nib << (4 * q)
            else:
                high |= nib << (4 * q - 32)
        inside = (m < M)[:, None] & (rows < GH)[None, :] & ((gd >= 0) & (gd < GD))
        row = (high.to(tl.uint64) << 32) | low.to(tl.uint64)
        seeds |= tl.where(inside, row, tl.zeros_like(row))
    seeds &= _low_bits(GW)  # no seeds past the grid's last column
    seeds = tl.where(thresh > 0, seeds, tl.zeros_like(seeds))
    across = tl.zeros((BM, GTH), dtype=tl.uint64)
    for k in tl.static_range(BW):  # seed column g covers units g - PW .. g - PW + BW - 1
        if k >= PW:
            across |= seeds << (k - PW)
        else:
            across |= seeds >> (PW - k)
    prog = (pid.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * (BM * GTH)
    scratch = scratch_ptr + prog + bm[:, None] * GTH
    tl.store(scratch + tl.arange(0, GTH)[None, :], across.to(tl.int64, bitcast=True))
    tl.debug_barrier()  # the stores above are visible to the whole program after this
    i = h0 + tl.arange(0, TH)
    words = tl.zeros((BM, TH), dtype=tl.int64)
    for k in tl.static_range(BH):  # unit row i: grid rows i + PH - BH + 1 .. i + PH
        g = i + (PH - BH + 1 + k) - gh0
        ok = (g >= 0) & (g < GTH)
        words |= tl.load(scratch + g[None, :], mask=ok[None, :], other=0, cache_modifier=".cg")
    words = words.to(tl.uint64, bitcast=True) & _low_bits(W)
    valid = (m < M)[:, None] & (i < H)[None, :]
    offs = ((m.to(tl.int64) * D + d) * H)[:, None] + i[None, :]
    tl.store(words_ptr + offs, words.to(tl.int64, bitcast=True), mask=valid)
    dropped = tl.sum(tl.sum(tl.where(valid, _popcount(words), 0).to(tl.int64), axis=1), axis=0)
    units = tl.sum(tl.sum(valid.to(tl.int64), axis=1), axis=0) * W
    kept = units - dropped
    before = tl.atomic_add(acc_ptr, kept * 4294967296 + 1)  # kept << 32, one ticket
    high = before >> 32
    if before - (high << 32) == tl.num_programs(0) * tl.num_programs(1) - 1:  # the last one
        tl.store(words_ptr + M * D * H, high + kept)  # below 2**31 (see the caller)
        tl.atomic_xchg(acc_ptr, 0)


@triton.jit(do_not_specialize=["total", "scale_bits"])
def masked_rows_kernel(x_ptr, words_ptr, out_ptr, scale_bits, n, total,
                       W: tl.constexpr, FROM_COUNT: tl.constexpr, WIDE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """``out = x * keep * s`` as :func:`masked_scale_kernel`, the keep mask read from row words:
    ``x`` is viewed as rows of ``W`` units, unit ``(r, w)`` kept when bit ``w`` of word ``r`` is
    clear; the count of kept units is the word after the last row's (where
    :func:`dropblock_rows_kernel` writes it)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    row0 = start // W
    local = (start - row0 * W).to(tl.int32) + tl.arange(0, BLOCK)  # division by a constant
    offs = start + tl.arange(0, BLOCK)
    inb = offs < n
    word = tl.load(words_ptr + (row0 + local // W), mask=inb, other=0)
    k = ((word >> (local % W).to(tl.int64)) & 1) == 0
    _store_scaled(x_ptr, out_ptr, offs, inb, k, words_ptr + n // W, scale_bits, total,
                  FROM_COUNT, WIDE)


@triton.jit(do_not_specialize=["total", "scale_bits"])
def masked_rows_cl_kernel(x_ptr, words_ptr, out_ptr, scale_bits, n, total, C: tl.constexpr,
                          DH: tl.constexpr, W: tl.constexpr, FROM_COUNT: tl.constexpr,
                          WIDE: tl.constexpr, WP: tl.constexpr, CB: tl.constexpr):
    """:func:`masked_rows_kernel` for inputs whose channels are innermost in memory: ``x`` and
    ``out`` hold unit ``(s, c, r, w)`` (sample, channel, row of the ``DH`` rows of depth times
    height, column of ``W``) at offset ``((s * DH + r) * W + w) * C + c``, and the row words
    are the channels_first rows' (word ``(s * C + c) * DH + r``), so the mask is the one a
    channels_first copy of x would get.

    A program takes one row ``s * DH + r`` (axis 0 of the grid) and ``CB`` channels of it (axis
    1): a ``WP x CB`` tile (``WP``, a power of two, at least ``W``) whose lines along the
    channels are contiguous in memory. It loads each channel's word once for the whole row
    (neighbouring channels' words lie ``DH`` words apart)."""
    r = tl.program_id(0)  # s * DH + row
    c = tl.program_id(1) * CB + tl.arange(0, CB)
    w = tl.arange(0, WP)
    s = r // DH
    word = tl.load(words_ptr + ((s * C + c) * DH + (r - s * DH)), mask=c < C, other=0)
    offs = ((r.to(tl.int64) * W + w) * C)[:, None] + c[None, :]
    inb = (w < W)[:, None] & (c < C)[None, :]
    k = ((word[None, :] >> w[:, None].to(tl.int64)) & 1) == 0
    _store_scaled(x_ptr, out_ptr, offs, inb, k, words_ptr + n // W, scale_bits, total,
                  FROM_COUNT, WIDE)
