"""Triton kernels of the CUDA DropBlock path (imported only by :mod:`._triton`, on first use).

Layout: the input is viewed as ``(M, D, H, W)`` maps (``M = N * C``; a 2-D input has ``D = 1``,
a 1-D input is folded into one ``(M, W)`` map with a block of height 1, which draws the same
seeds). The seed grid is ``(M, GD, GH, GW)``; seed ``g`` covers the units ``u`` with
``u + P - B + 1 <= g <= u + P`` on each axis, where ``P = 0`` for valid seeds and ``B - 1`` for
padded ones (the same sets :func:`structdrop_tutorial.torch.dropblock_keep_mask` paints).

Seeds come from Philox-4x32-10, a counter-based generator: grid position ``(m, gd, gh, gw)`` reads
lane ``gw % 4`` of the counter ``((m * GD + gd) * GH + gh) * ceil(GW / 4) + gw // 4`` under the
call's 64-bit key, and is a seed when that 32-bit word is below ``round(gamma * 2**32)``. Every
position has its own word whatever the tiling, so the mask does not depend on the launch
configuration, and :func:`seed_grid_kernel` can write the very seeds the mask kernel used.
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
def dropblock_mask_kernel(keep_ptr, count_ptr, key_ptr, thresh, n_mblocks,
                          M, D, H, W, GD, GH, GW, GW4, PD, PH, PW, BD: tl.constexpr, BH, BW,
                          BM: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                          GTH: tl.constexpr, GTW: tl.constexpr):
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
    key = tl.load(key_ptr)
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


@triton.jit
def seed_grid_kernel(seeds_ptr, key_ptr, thresh, M, GD, GH, GW, GW4,
                     GTH: tl.constexpr, GTW: tl.constexpr):
    """The seeds :func:`dropblock_mask_kernel` draws for the same key, written as uint8 into
    an ``(M, GD, GH, GW)`` tensor (tests compare the masks built from them)."""
    pid = tl.program_id(0)
    m_gd = pid // GD
    gd = pid % GD
    gh0 = tl.program_id(1) * GTH
    gw0 = tl.program_id(2) * GTW
    key = tl.load(key_ptr)
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
    x = tl.load(x_ptr + offs, mask=inb)
    k = tl.load(keep_ptr + offs, mask=inb)
    acc = tl.float64 if WIDE else tl.float32
    if FROM_COUNT:
        kept = tl.load(count_ptr).to(acc)
        s = tl.where(kept > 0, total.to(acc) / tl.maximum(kept, 1.0), 0.0)
    else:
        s = scale_bits.to(tl.int64).to(tl.float64, bitcast=True).to(acc)
    y = x.to(acc) * (k.to(acc) * s)
    tl.store(out_ptr + offs, y.to(x.dtype), mask=inb)
