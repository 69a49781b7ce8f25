"""The Triton DropBlock path (structdrop_tutorial.torch._triton): exact masks, seed statistics,
determinism, the product kernels and their gradients, fallbacks. Both mask representations are
covered: row words (maps at most 64 units wide) and one byte per unit; tests of the public
function run with each (the ``mask_kind`` fixture).

On a GPU the kernels run compiled on CUDA tensors. Without one, tests/conftest.py sets
TRITON_INTERPRET=1 and the autouse fixture sets ``_triton.FORCE`` so that CPU tensors take the
Triton path in Triton's interpreter (slow per program: inputs stay small). Every statistical
test uses a fixed key or seed, so it is deterministic; each states its bound.
"""
import math

import numpy as np
import pytest

import structdrop_tutorial as sd

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
from structdrop_tutorial import timing  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import (_launch, _prepared, _triton,  # noqa: E402
                                       _triton_channels_last)

from helpers import five_sigma_fraction_bound, interpreted_bfloat16, triton_test_device  # noqa: E402

DEVICE = triton_test_device()


@pytest.fixture(autouse=True)
def triton_path(monkeypatch):
    """The Triton path on, and forced for CPU tensors when there is no GPU (restored after);
    afterwards, no device may have been marked as failed."""
    monkeypatch.setattr(_triton, "ENABLED", True)
    monkeypatch.setattr(_triton, "FORCE", DEVICE == "cpu")
    # on a GPU every direct launch is checked against Triton's own choice of compiled kernel
    monkeypatch.setattr(_launch, "VERIFY", DEVICE == "cuda")
    yield
    # a kernel failing on first use would be caught and replaced by tensor operations (with a
    # warning), row words failing their check by byte masks: no test may pass that way
    assert not _triton._FAILED, _triton._FAILED
    assert not _triton._ROWS_FAILED, _triton._ROWS_FAILED


@pytest.fixture(params=["rows", "bytes"])
def mask_kind(request, monkeypatch):
    """Public calls with row words where rows fit a word ("rows"; wider inputs use bytes), or
    with byte masks everywhere ("bytes", where the row-word kernel must not run)."""
    monkeypatch.setattr(_triton, "ROW_WORDS", request.param == "rows")
    if request.param == "bytes":
        monkeypatch.setattr(_triton, "_row_buffer", lambda *a: pytest.fail("row words used"))
    return request.param


def key(value):
    return torch.tensor([value], dtype=torch.int64, device=DEVICE)


def counting_dropblock(monkeypatch, channels_last=True):
    """Replace _triton.dropblock (and, with ``channels_last``, the channels-last route's
    dropblock) by wrappers that record their calls; returns the list. Plans are off, so that
    every call goes through them (see _prepared)."""
    monkeypatch.setattr(_prepared, "ENABLED", False)
    calls = []
    for module in (_triton, _triton_channels_last) if channels_last else (_triton,):
        monkeypatch.setattr(module, "dropblock", lambda *a, real=module.dropblock, **k:
                            calls.append(a) or real(*a, **k))
    return calls


def recording_mask_kernels(monkeypatch):
    """Wrap both mask kernels' launchers so that each call appends "rows" or "bytes" to the
    returned list (every call through them: no prepared calls, see _prepared)."""
    monkeypatch.setattr(_prepared, "ENABLED", False)
    used, real_rows, real_bytes = [], _triton._row_buffer, _triton._mask_bytes
    monkeypatch.setattr(_triton, "_row_buffer", lambda *a: used.append("rows") or real_rows(*a))
    monkeypatch.setattr(_triton, "_mask_bytes", lambda *a: used.append("bytes") or real_bytes(*a))
    return used


def is_union_of_blocks(keep, block):
    """Whether the dropped units of a ``(N, C, *spatial)`` mask are a union of whole blocks with
    valid seeds: the set equals its opening (blocks fully dropped, painted again)."""
    n, c, *spatial = keep.shape
    pool = getattr(torch.nn.functional, f"avg_pool{len(spatial)}d")
    dropped = (~keep).double().reshape(n * c, 1, *spatial)
    full = pool(dropped, block, 1).reshape(n, c, *[s - b + 1 for s, b in zip(spatial, block)])
    return torch.equal(keep, sdt.dropblock_keep_mask(torch.where(full > 1 - 1e-9, 0.0, 1.0),
                                                     0.5, block, "channels_first", "valid"))


# --------------------------------------------------------------------------- exact masks
GEOMETRIES = [  # (shape, block before clipping)
    ((2, 3, 20), 4), ((37, 1, 9), 9), ((5, 7, 130), 3), ((3, 30, 11), 2),       # 1-D
    ((2, 3, 9, 9), 3), ((2, 2, 10, 11), (2, 4)), ((1, 2, 7, 5), (7, 9)),       # 2-D
    ((1, 1, 70, 33), 3), ((1, 1, 100, 130), (2, 3)), ((37, 1, 5, 7), 3),
    ((1, 1, 70, 130), (60, 100)),
    ((2, 2, 5, 6, 7), (2, 3, 3)), ((1, 2, 4, 4, 4), 5), ((1, 1, 3, 70, 9), 2),  # 3-D
    ((3, 3, 2, 3, 4), 2),
    ((2, 2, 9, 64), 7), ((1, 2, 5, 62), 3), ((3, 2, 64), 5),  # rows of a whole word (or 64 seeds)
    ((2, 3, 6, 1), 3),  # maps one unit wide (a width the compiler makes a constant)
]
IDS = [f"{s}-{b}".replace(" ", "") for s, b in GEOMETRIES]
HIGH = (1, 4, 7, 9, 13)  # 1-D, 2-D one and several tiles, 37 maps, 3-D taller than 64


def check_keep_mask(shape, block, seeds, gamma):
    """keep_mask equals dropblock_keep_mask painted from seed_grid's seeds; count == keep.sum()."""
    blk = sd.clip_block(block, shape[2:])
    k = key(20240601)
    if _triton.geometry(shape, blk, seeds) is None:  # window over 128: the tensor path's case
        assert max(_triton._pow2(min(n + b - 1, 64 + b + 2)) for n, b in zip(shape[2:], blk)) > 128
        with pytest.raises(ValueError, match="seed window"):
            _triton.keep_mask(shape, DEVICE, gamma, blk, seeds, k)
        return None, None
    seeds_grid = _triton.seed_grid(shape, DEVICE, gamma, blk, seeds, k)
    assert tuple(seeds_grid.shape) == sd.seed_grid_shape(shape, blk, "channels_first", seeds)
    keep, count = _triton.keep_mask(shape, DEVICE, gamma, blk, seeds, k)
    ref = sdt.dropblock_keep_mask(torch.where(seeds_grid, 0.0, 1.0), 0.5, blk, "channels_first",
                                  seeds)
    assert keep.dtype == torch.bool and keep.shape == shape and keep.device == ref.device
    assert torch.equal(keep, ref)
    assert count.dtype == torch.int64 and int(count) == int(keep.sum())
    if _triton.row_geometry(shape, blk, seeds) is not None:  # the row-word kernel, same seeds
        words, count = _triton.row_words(shape, DEVICE, gamma, blk, seeds, k)
        w = shape[-1]
        assert words.dtype == torch.int64 and words.numel() == keep.numel() // w
        assert torch.equal(_triton.words_keep_mask(words, shape), ref)
        assert int(count) == int(keep.sum())
        if w < 64:  # no bit past the row's end
            assert int((words >> w).abs().sum()) == 0
    else:
        assert shape[-1] > 64 or sd.seed_grid_shape(shape, blk, "channels_first", seeds)[-1] > 64
    return seeds_grid, count


@pytest.mark.parametrize("gamma", [0.05, 0.3])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("shape, block", GEOMETRIES, ids=IDS)
def test_keep_mask_equals_reference_given_its_seeds(shape, block, seeds, gamma):
    """Exact masks: 1-, 2- and 3-D; several tiles per map (sides over 64); maps batched per
    program with a partial last batch (N*C = 37, 9); even blocks; blocks clipped to the map."""
    check_keep_mask(shape, block, seeds, gamma)


@pytest.mark.parametrize("gamma", [0.7, 1.0])  # 0.7: threshold above 2**31; 1.0: all seeds
@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("shape, block", [GEOMETRIES[i] for i in HIGH],
                         ids=[IDS[i] for i in HIGH])
def test_keep_mask_high_gamma(shape, block, seeds, gamma):
    """As above for gamma 0.7 and 1.0 (other threshold types: a kernel compile each on a GPU)."""
    seeds_grid, count = check_keep_mask(shape, block, seeds, gamma)
    if gamma == 1.0:
        assert bool(seeds_grid.all()) and int(count) == 0


@pytest.mark.parametrize("shape, block", [((13, 1, 5, 7), (3, 3)), ((6, 5, 3, 9), (2, 2)),
                                          ((5, 2, 2, 6, 7), (2, 2, 3))])
def test_mask_does_not_depend_on_the_tiling(monkeypatch, shape, block):
    """Every grid position has its own Philox word: 1, 4 or 16-32 maps per program (a partial
    last batch) give one mask."""
    masks = []
    for units in (256, 1024, 8192):
        monkeypatch.setattr(_triton, "TILE_UNITS", units)
        masks.append(_triton.keep_mask(shape, DEVICE, 0.2, block, "padded", key(5))[0])
    for items in (16, 64, 512):  # row words: 1 to 16-64 maps per program
        monkeypatch.setattr(_triton, "ROW_ITEMS", items)
        words = _triton.row_words(shape, DEVICE, 0.2, block, "padded", key(5))[0]
        masks.append(_triton.words_keep_mask(words, shape))
    assert all(torch.equal(m, masks[0]) for m in masks[1:])
    assert 0 < int(masks[0].sum()) < masks[0].numel()


def test_row_count_needs_no_zeroed_counter(monkeypatch):
    """Eager row-word launches share one accumulator per device and stream, which each launch
    leaves at 0: consecutive launches of different geometries (2-D, 1-D; maps batched or one
    per program; 1 to 120 programs) and keys each get their own exact count, after the words.
    The kept scratch grows to the largest launch up to a cap (beyond it a launch gets its
    own). Where a graph is captured (or torch.compile traces) a fresh zeroed accumulator is
    used and the shared one is not touched."""
    monkeypatch.setattr(_triton, "_STATE", {})
    cases = [((2, 3, 9, 9), (3, 3), 256), ((40, 3, 5, 7), (3, 3), 4),
             ((1, 1, 70, 33), (5, 2), 256), ((5, 7, 30), (4,), 256), ((2, 3, 9, 9), (3, 3), 256)]
    need, n_programs = 0, []
    for i, (shape, block, items) in enumerate(cases):
        geo = _triton.row_geometry(shape, block, "valid", items)
        n_programs.append(geo.launch[0] * geo.launch[1])
        buffer = _triton._row_buffer(geo, torch.device(DEVICE), 0.2, 1000 + i)
        keep, count = _triton.keep_mask(shape, DEVICE, 0.2, block, "valid", 1000 + i)
        assert buffer.numel() == geo.rows + 1 and 0 < int(count) < keep.numel()
        assert torch.equal(_triton.words_keep_mask(buffer, shape), keep)
        assert int(buffer[-1]) == int(count), shape
        (acc, scratch), = _triton._STATE.values()
        need = max(need, geo.scratch)
        assert int(acc) == 0 and scratch.numel() == need
    assert min(n_programs) == 1 and max(n_programs) == 120, n_programs
    monkeypatch.setattr(_triton, "_MAX_KEPT_SCRATCH", 8)  # larger launches: scratch per call
    geo = _triton.row_geometry((1, 1, 70, 33), (5, 2), "valid", 256)
    buffer = _triton._row_buffer(geo, torch.device(DEVICE), 0.2, 77)
    keep, count = _triton.keep_mask((1, 1, 70, 33), DEVICE, 0.2, (5, 2), "valid", 77)
    assert int(buffer[-1]) == int(count) and geo.scratch > 8
    (acc, scratch), = _triton._STATE.values()
    assert int(acc) == 0 and scratch.numel() == need
    (acc, _), = _triton._STATE.values()
    acc.fill_(7)  # a shared accumulator must not be used where a graph is captured
    geo = _triton.row_geometry((2, 3, 9, 9), (3, 3), "valid", _triton.ROW_ITEMS)
    expected = int(_triton.keep_mask((2, 3, 9, 9), DEVICE, 0.2, (3, 3), "valid", 1000)[1])
    buffer = _triton._row_buffer(geo, torch.device(DEVICE), 0.2, 1000, eager=False)
    assert int(acc) == 7 and int(buffer[-1]) == expected
    monkeypatch.setattr(_triton, "_eager", lambda device: False)
    words, count = _triton._row_words(geo, DEVICE, 0.2, 1000)
    assert int(acc) == 7 and int(count) == expected


def test_row_count_limit():
    """The row kernel's packed count (kept units above bit 32) stays below 2**31: inputs of
    2**31 units and more take byte masks."""
    assert _triton.row_geometry((2 ** 24 - 1, 1, 8, 16), (3, 3), "valid") is not None
    assert _triton.row_geometry((2 ** 24, 1, 8, 16), (3, 3), "valid") is None
    assert _triton.geometry((2 ** 24, 1, 8, 16), (3, 3), "valid") is not None


def test_row_product_needs_the_count_after_the_words():
    """The row-word product reads the count one past the last word: a buffer without it is
    refused before anything is launched."""
    x = torch.ones(2, 3, 4, 5, device=DEVICE)
    words, count = _triton.row_words(x.shape, DEVICE, 0.2, (3, 3), "valid", 7)
    with pytest.raises(ValueError, match="need the count after them"):
        _triton._apply(x, words, count, True, torch.empty_like(x))
    buffer = torch.cat([words, count])
    keep = _triton.words_keep_mask(buffer, x.shape)
    y = _triton._apply(x, buffer, None, True, torch.empty_like(x))
    assert torch.equal(y, keep * (x.numel() / int(count)))


# --------------------------------------------------------------------------- public API
@pytest.mark.parametrize("normalize", ["batch", "rate"])
@pytest.mark.parametrize("shape, block, seeds", [((2, 3, 9, 9), 3, "valid"),
                                                 ((4, 3, 20), 5, "padded"),
                                                 ((1, 2, 4, 6, 7), (2, 3, 3), "valid")])
def test_public_dropblock_takes_triton_path(monkeypatch, mask_kind, shape, block, seeds, normalize):
    """sdt.dropblock(seed=int) calls _triton.dropblock once; y == x * keep * scale with
    keep = (y != 0) for x = ones, scale numel / kept ("batch") or 1 / (1 - rate); keep is the
    mask dropblock_keep_mask paints from the seeds of the key that seed=11 draws."""
    calls = counting_dropblock(monkeypatch)
    rate = 0.3
    ones = torch.ones(shape, dtype=torch.float64, device=DEVICE)
    y = sdt.dropblock(ones, rate, block, seeds=seeds, normalize=normalize, seed=11)
    assert len(calls) == 1 and y.device == ones.device and y.dtype == torch.float64
    keep = y != 0
    gamma, blk = calls[0][1], calls[0][2]
    assert blk == sd.clip_block(block, shape[2:])  # the kernels get the exact gamma
    assert gamma == sd.resolve_gamma("exact", rate, blk, shape[2:], seeds)
    k = _triton.new_key(DEVICE, torch.Generator(device=DEVICE).manual_seed(11))
    grid = _triton.seed_grid(shape, DEVICE, gamma, blk, seeds, k)
    assert torch.equal(keep, sdt.dropblock_keep_mask(torch.where(grid, 0.0, 1.0), 0.5, blk,
                                                     "channels_first", seeds))
    assert 0 < int(keep.sum()) < keep.numel()
    scale = keep.numel() / int(keep.sum()) if normalize == "batch" else 1.0 / (1.0 - rate)
    assert torch.equal(y, ones * keep * scale)
    x = torch.randn(shape, device=DEVICE)  # float32, same seed: same key, same mask
    y32 = sdt.dropblock(x, rate, block, seeds=seeds, normalize=normalize, seed=11)
    torch.testing.assert_close(y32, x * keep * scale, rtol=1e-6, atol=0)
    if seeds == "valid":
        assert is_union_of_blocks(keep, sd.clip_block(block, shape[2:]))


def test_other_calls_do_not_take_triton_path(monkeypatch):
    calls = counting_dropblock(monkeypatch)
    x = torch.ones(2, 3, 8, 8, device=DEVICE)
    sdt.dropblock(x, 0.3, 3, share="channels", seed=1)
    sdt.dropblock(x, 0.3, 3, uniform=torch.rand(2, 3, 6, 6, device=DEVICE))
    assert calls == []


@pytest.mark.parametrize("spatial", [(9, 10), (7, 6, 5), (40,)])
def test_every_layout_takes_the_kernels_with_the_same_masks(monkeypatch, spatial):
    """channels_last data or memory format and strided views run the kernels on x seen as a
    contiguous channels_first tensor (copied where it is not one): the same seed gives the same
    output and gradient in every layout (on CUDA they took the tensor-operation path, other
    masks, at ten floors), the output has x's strides (a slice that is not dense gets a
    contiguous one), and inplace writes into x, also where x requires grad."""
    calls = counting_dropblock(monkeypatch)
    shape = (2, 3) + spatial
    x = torch.randn(shape, device=DEVICE)
    g = torch.randn(shape, device=DEVICE)

    def run(t, fmt="channels_first"):
        t = t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        y = sdt.dropblock(t, 0.3, 3, fmt, seed=torch.Generator(DEVICE).manual_seed(5))
        (gt,) = torch.autograd.grad(y, t, g if fmt == "channels_first" else g.movedim(1, -1))
        assert y.stride() == t.stride()
        # inplace into a tensor that requires grad (not a leaf): same values and gradient
        leaf = t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        w = leaf * 1
        out = sdt.dropblock(w, 0.3, 3, fmt, seed=torch.Generator(DEVICE).manual_seed(5),
                            inplace=True)
        (gw,) = torch.autograd.grad(out, leaf, g if fmt == "channels_first" else g.movedim(1, -1))
        assert out is w and torch.equal(w, y) and torch.equal(gw, gt)
        return (y, gt) if fmt == "channels_first" else (y.movedim(-1, 1), gt.movedim(-1, 1))

    ref, ref_grad = run(x)
    last = x.movedim(1, -1)
    memory = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    layouts = {"channels_last data": (last.contiguous(), "channels_last"),
               "channels_last data, a view of NCHW memory": (last, "channels_last"),
               "strided view": (x.transpose(1, -1).contiguous().transpose(1, -1), "channels_first")}
    if memory is not None:
        layouts["channels_last memory"] = (x.contiguous(memory_format=memory), "channels_first")
    for name, (t, fmt) in layouts.items():
        y, grad = run(t, fmt)
        assert torch.equal(y, ref) and torch.equal(grad, ref_grad), name
        z = t.clone(memory_format=torch.preserve_format)
        out = sdt.dropblock(z, 0.3, 3, fmt, seed=torch.Generator(DEVICE).manual_seed(5),
                            inplace=True)
        assert out is z and torch.equal(z if fmt == "channels_first" else z.movedim(-1, 1), ref)
    assert len(calls) == 2 + 3 * len(layouts)
    # a slice that is not dense (every other unit of the last axis) gets a contiguous result
    wide = torch.randn(shape[:-1] + (2 * shape[-1],), device=DEVICE)
    sliced = sdt.dropblock(wide[..., ::2], 0.3, 3, seed=torch.Generator(DEVICE).manual_seed(5))
    dense = sdt.dropblock(wide[..., ::2].contiguous(), 0.3, 3,
                          seed=torch.Generator(DEVICE).manual_seed(5))
    assert sliced.is_contiguous() and torch.equal(sliced, dense)


@pytest.mark.parametrize("channels, spatial", [(3, (9, 10)), (3, (7, 6, 5)), (3, (40,)),
                                               (70, (3, 33))])
def test_channels_innermost_in_memory_skip_the_copies(monkeypatch, channels, spatial):
    """Channels innermost in memory (channels_last data or memory format) take their own product
    kernel once the row-word geometry is checked: nothing is copied to channels_first, and the
    output (in x's layout), the gradient and the double-backward gradient equal a contiguous
    channels_first input's for the same seed, in both normalizations. (70 channels of rows 33
    wide: three channel blocks of the kernel's tile, the last one partly outside.)"""
    if channels > 3:
        assert _triton_channels_last.tile(spatial[-1], channels) == (64, 32)
    used, real = [], _triton_channels_last.product
    monkeypatch.setattr(_triton_channels_last, "product",
                        lambda *a: used.append(a[0].shape) or real(*a))
    copies = counting_dropblock(monkeypatch, channels_last=False)
    shape = (2, channels) + spatial
    x = torch.randn(shape, device=DEVICE)
    g = torch.randn(shape, device=DEVICE)

    def run(t, fmt, normalize):
        def call(t):
            return sdt.dropblock(t, 0.3, 3, fmt, normalize=normalize,
                                 seed=torch.Generator(DEVICE).manual_seed(5))
        t = t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        upstream = g if fmt == "channels_first" else g.movedim(1, -1).contiguous()
        y = call(t)
        (grad,) = torch.autograd.grad(y, t, upstream)
        assert y.stride() == t.stride()
        upstream = upstream.clone().requires_grad_()  # double backward: grad of the gradient
        (again,) = torch.autograd.grad(call(t), t, upstream, create_graph=True)
        (twice,) = torch.autograd.grad(again.square().sum(), upstream)
        out = (y, grad, twice)
        return out if fmt == "channels_first" else tuple(v.movedim(-1, 1) for v in out)

    memory = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    layouts = [(x.movedim(1, -1).contiguous(), "channels_last")]
    if memory is not None:
        layouts.append((x.contiguous(memory_format=memory), "channels_first"))
    for normalize in ("batch", "rate"):
        ref = run(x, "channels_first", normalize)  # also checks the row-word geometry
        for t, fmt in layouts:
            before = (len(used), len(copies))
            out = run(t, fmt, normalize)
            assert all(torch.equal(a, b) for a, b in zip(out, ref)), (fmt, normalize)
            # two forward passes, one backward by the kernel, none through a copy
            assert (len(used) - before[0], len(copies) - before[1]) == (3, 0), (fmt, normalize)


def test_channels_innermost_take_the_copies_first_and_inplace(monkeypatch):
    """An unchecked row-word geometry goes through the copy route (which checks it), and so does
    ``inplace``; byte masks (rows wider than 64) always do. Same values either way."""
    used, real = [], _triton_channels_last.product
    monkeypatch.setattr(_triton_channels_last, "product",
                        lambda *a: used.append(a[0].shape) or real(*a))
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    x = torch.randn(2, 3, 9, 10, device=DEVICE).contiguous(memory_format=torch.channels_last)
    first = sdt.dropblock(x, 0.3, 3, seed=7)
    assert used == [] and first.stride() == x.stride()
    second = sdt.dropblock(x, 0.3, 3, seed=7)
    assert len(used) == 1 and torch.equal(first, second)
    z = x.clone(memory_format=torch.preserve_format)
    assert sdt.dropblock(z, 0.3, 3, seed=7, inplace=True) is z and len(used) == 1
    assert torch.equal(z, first)
    wide = torch.randn(2, 3, 9, 70, device=DEVICE).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        sdt.dropblock(wide, 0.3, 3, seed=7)
    assert len(used) == 1


def test_channels_innermost_one_sample_half_precision_and_a_failing_kernel(monkeypatch):
    """One sample in float16 (and bfloat16 where the device has it) gives the contiguous input's
    values through the kernel; should the kernel fail on its first use, one warning, and the
    inputs take the copy route on that device from then on, with the same values. (No
    signature is checked yet: other tests' calls of these shapes would make this one's failure
    a failure after a first use, which propagates.)"""
    monkeypatch.setattr(_triton_channels_last, "_FAILED", {})
    monkeypatch.setattr(_triton, "_CHECKED", set())
    dtypes = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
    for dtype in dtypes:
        x = torch.randn(1, 5, 9, 10, device=DEVICE).to(dtype)
        ref = sdt.dropblock(x, 0.3, 3, seed=9)
        y = sdt.dropblock(x.contiguous(memory_format=torch.channels_last), 0.3, 3, seed=9)
        assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, ref), dtype
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    ref = sdt.dropblock(x, 0.3, 3, seed=9)
    real = _triton_channels_last.product

    def broken(*args):
        raise RuntimeError("no such kernel here")

    monkeypatch.setattr(_triton_channels_last, "product", broken)
    xc = x.contiguous(memory_format=torch.channels_last)
    with pytest.warns(RuntimeWarning, match="channels-last kernel failed"):
        y = sdt.dropblock(xc, 0.3, 3, seed=9)
    assert list(_triton_channels_last._FAILED) == [str(x.device)] and not _triton._FAILED
    monkeypatch.setattr(_triton_channels_last, "product", real)
    used = counting_dropblock(monkeypatch, channels_last=False)
    assert torch.equal(sdt.dropblock(xc, 0.3, 3, seed=9), ref) and len(used) == 1
    # the failed call drew a key before the copy route drew another (another mask), but its
    # output is still a DropBlock of x: zeros, and x times one scale elsewhere
    kept = y != 0
    scale = y[kept] / xc[kept]
    assert y.stride() == xc.stride() and kept.any() and not kept.all()
    torch.testing.assert_close(scale, torch.full_like(scale, scale[0].item()))


def test_usable():
    x = torch.ones(2, 3, 8, 8, device=DEVICE)
    assert _triton.usable(x, "channels_first", ())
    assert not _triton.usable(x, "channels_last", ())
    assert not _triton.usable(x, "channels_first", ("channels",))
    assert not _triton.usable(x.transpose(2, 3), "channels_first", ())
    assert not _triton.usable(torch.ones(0, 3, 8, 8, device=DEVICE), "channels_first", ())
    assert _triton.usable_in_nchw(x.transpose(2, 3), "channels_first", ())
    assert _triton.usable_in_nchw(x, "channels_last", ())
    assert not _triton.usable_in_nchw(x, "channels_first", ("batch",))
    assert not _triton.usable_in_nchw(torch.ones(0, 3, 8, 8, device=DEVICE), "channels_last", ())
    _triton.ENABLED = False  # restored by the fixture
    assert not _triton.usable(x, "channels_first", ())
    assert not _triton.usable_in_nchw(x, "channels_last", ())
    _triton.ENABLED, _triton.FORCE = True, False  # a CPU tensor needs FORCE
    assert not _triton.usable(x.cpu(), "channels_first", ())
    assert not _triton.usable_in_nchw(x.cpu(), "channels_last", ())


@pytest.mark.parametrize("shape, rows", [((2, 3, 9, 64), True), ((2, 3, 9, 65), False),
                                         ((2, 3, 40), True), ((2, 3, 2, 5, 70), False)])
def test_row_words_where_rows_fit(monkeypatch, shape, rows):
    """dropblock keeps row words for rows up to 64 wide and byte masks beyond; what autograd
    saves is then 8 bytes per row or 1 byte per unit, and the 8-byte count."""
    used = recording_mask_kernels(monkeypatch)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    sdt.dropblock(x, 0.2, 3, seed=1)  # a first use of row words also runs their check
    used.clear()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = sdt.dropblock(x, 0.2, 3, seed=1)
    assert used == ["rows" if rows else "bytes"]
    nbytes = sum(t.untyped_storage().nbytes() for t in saved)
    if rows:
        assert nbytes == 8 * x.numel() // shape[-1] + 8
    else:
        assert nbytes == x.numel() + 8
    keep = y != 0
    assert 0 < int(keep.sum()) < keep.numel()


def test_row_words_are_checked_against_bytes_on_first_use(monkeypatch):
    """The first call with a row-word geometry on a device runs both mask kernels on a fixed key
    (drawing nothing from the generator) and compares them; later calls run row words only."""
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    used = recording_mask_kernels(monkeypatch)
    x = torch.randn(2, 3, 10, 12, device=DEVICE)
    first = sdt.dropblock(x, 0.2, 3, seed=5)
    assert used == ["rows", "bytes", "rows"] and len(_triton._ROWS_CHECKED) == 1
    used.clear()
    assert torch.equal(sdt.dropblock(x, 0.2, 3, seed=5), first)  # the check drew no numbers
    assert used == ["rows"]


def test_unchecked_row_words_are_not_used_while_capturing(monkeypatch):
    """The check synchronizes, which a CUDA graph capture forbids: an unchecked row-word
    geometry takes byte masks during capture (and stays unchecked); a checked one row words."""
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    monkeypatch.setattr(_triton, "_capturing", lambda x: True)
    real_rows = _triton._row_buffer
    monkeypatch.setattr(_triton, "_row_buffer", lambda *a: pytest.fail("row words used"))
    x = torch.ones(2, 3, 10, 12, dtype=torch.float64, device=DEVICE)
    keep = sdt.dropblock(x, 0.2, 3, seed=5) != 0
    assert 0 < int(keep.sum()) < keep.numel() and not _triton._ROWS_CHECKED
    geo = _triton.row_geometry(tuple(x.shape), (3, 3), "valid", _triton.ROW_ITEMS)
    _triton._ROWS_CHECKED.add((str(x.device), geo))
    used = []
    monkeypatch.setattr(_triton, "_row_buffer", lambda *a: used.append(1) or real_rows(*a))
    assert torch.equal(sdt.dropblock(x, 0.2, 3, seed=5) != 0, keep) and used == [1]


@pytest.mark.parametrize("fault", ["wrong words", "wrong count", "exception"])
def test_row_words_failing_their_check_fall_back_to_bytes(monkeypatch, fault):
    """Row words that differ from the byte mask (or a row-word kernel that raises): one
    warning, byte masks on that device from then on, and a correct DropBlock output."""
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    monkeypatch.setattr(_triton, "_ROWS_FAILED", {})
    real_rows = _triton._row_words

    def faulty(*args):
        if fault == "exception":
            raise RuntimeError("barrier broken")
        words, count = real_rows(*args)
        return (words ^ 1, count) if fault == "wrong words" else (words, count + 1)

    monkeypatch.setattr(_triton, "_row_words", faulty)
    x = torch.ones(3, 2, 9, 9, dtype=torch.float64, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="row-word kernel failed its check"):
        y = sdt.dropblock(x, 0.3, 3, seed=1)
    assert list(_triton._ROWS_FAILED) == [str(x.device)] and not _triton._FAILED
    keep = y != 0
    assert 0 < int(keep.sum()) < keep.numel() and is_union_of_blocks(keep, (3, 3))
    assert torch.equal(y, x * keep * (keep.numel() / int(keep.sum())))
    monkeypatch.setattr(_triton, "_row_buffer", lambda *a: pytest.fail("row words used"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sdt.dropblock(x, 0.3, 3, seed=2).shape == x.shape
    _triton._ROWS_FAILED.clear()  # this test's own dict (monkeypatched); the fixture checks it


def test_geometry_limits_and_fallback(monkeypatch):
    """geometry is None past CUDA's grid limits (65535 tiles on axes 1, 2; 2**31 on axis 0),
    and dropblock then falls back to tensor operations with a valid DropBlock output."""
    assert _triton.geometry((65535, 64, 5), (3,), "valid") is not None  # 65535 row tiles
    assert _triton.geometry((65535 * 64 + 1, 1, 5), (3,), "valid") is None
    assert _triton.geometry((70000, 64, 5), (3,), "valid") is None
    assert _triton.geometry((1, 1, 10, 65535 * 64), (3, 3), "valid") is not None
    assert _triton.geometry((1, 1, 10, 65536 * 64), (3, 3), "valid") is None
    assert _triton.geometry((2 ** 26, 1, 200, 2, 2), (1, 1, 1), "valid") is None
    # a block that needs a seed window over 128 wide (its tile plus the block) falls back too
    assert _triton.geometry((1, 1, 200, 200), (62, 62), "valid") is not None
    assert _triton.geometry((1, 1, 200, 200), (3, 63), "valid") is None  # 64 + 63 + 3 columns
    assert _triton.geometry((1, 1, 200, 200), (66, 3), "valid") is None  # 64 + 65 rows
    assert _triton.geometry((1, 1, 400, 400), (200, 200), "padded") is None
    # row words: rows and rows of seeds at most 64 wide, windows as the byte kernel's
    assert _triton.row_geometry((2, 3, 9, 64), (3, 3), "valid") is not None
    assert _triton.row_geometry((2, 3, 9, 65), (3, 3), "valid") is None
    assert _triton.row_geometry((2, 3, 9, 62), (3, 3), "padded") is not None  # 64 seed columns
    assert _triton.row_geometry((2, 3, 9, 63), (3, 3), "padded") is None  # 65
    assert _triton.row_geometry((4, 8, 64), (7,), "valid").rows == 32  # 1-D: one word per map
    assert _triton.row_geometry((1, 1, 200, 20), (66, 3), "valid") is None  # 64 + 65 rows
    assert _triton.row_geometry((1, 1, 65535 * 64, 5), (3, 3), "valid") is not None
    assert _triton.row_geometry((1, 1, 65536 * 64, 5), (3, 3), "valid") is None
    monkeypatch.setattr(_triton, "geometry", lambda *a, **k: None)
    monkeypatch.setattr(_triton, "row_geometry", lambda *a, **k: None)
    monkeypatch.setattr(_triton, "_mask_bytes", lambda *a, **k: pytest.fail("Triton mask used"))
    monkeypatch.setattr(_triton, "_row_buffer", lambda *a, **k: pytest.fail("Triton mask used"))
    x = torch.ones(4, 3, 12, 12, dtype=torch.float64, device=DEVICE)
    y = sdt.dropblock(x, 0.3, 3, seed=2)
    keep = y != 0
    assert y.shape == x.shape and y.device == x.device and 0 < int(keep.sum()) < keep.numel()
    assert torch.equal(y, x * keep * (keep.numel() / int(keep.sum())))
    assert is_union_of_blocks(keep, (3, 3))


# --------------------------------------------------------------------------- statistics
def test_threshold_is_gamma_to_32_bits():
    """p = threshold(gamma) / 2**32 is within 2**-33 of gamma; 0 and 1 are exact."""
    assert _triton.threshold(0.0) == 0 and _triton.threshold(1.0) == 2 ** 32
    for gamma in (1e-9, 0.05, 0.1, 0.3, 0.5, 0.7, 1 - 1e-9):
        assert abs(_triton.threshold(gamma) / 2 ** 32 - gamma) <= 2 ** -33


@pytest.mark.parametrize("shape, block, gamma", [((40, 25, 133), (3,), 0.1),
                                                 ((4, 8, 70, 33), (3, 3), 0.3)])
def test_seed_statistics(shape, block, gamma):
    """Seeds of a fixed key as i.i.d. Bernoulli(p), p = threshold(gamma) / 2**32 (q = 1 - p),
    over M maps of G positions, every check at 5 sigma unless stated:

    * total seeds vs Binomial(M G, p): |T - M G p| <= 5 sqrt(M G p q);
    * per-map counts K ~ Binomial(G, p), sigma^2 = G p q: mean within 5 sqrt(sigma^2 / M);
      unbiased sample variance within 5 sqrt(Var s^2), Var s^2 = (mu4 - sigma^4 (M-3)/(M-1)) / M
      with the binomial mu4 = sigma^2 (1 + 3 (G - 2) p q);
    * uniform positions: sum over positions of (c_g - M p)^2 / (M p q) (about chi-square with G
      degrees of freedom) below the chi-square quantile at p-value 1e-6;
    * adjacent positions (g, g+1) on the last axis, per lane g % 4 (pairs inside one Philox call
      for 0..2, across two calls for 3): disjoint pairs, count within 5 sqrt(n p^2 (1 - p^2))
      of n p^2; the same for the last positions of a grid row against the first of the next."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    seeds = _triton.seed_grid(shape, DEVICE, gamma, block, "valid", key(987654321)).cpu()
    p = _triton.threshold(gamma) / 2 ** 32
    q = 1 - p
    maps = seeds.reshape(shape[0] * shape[1], -1).double().numpy()
    m, g = maps.shape
    assert m >= 32 and abs(maps.sum() - m * g * p) <= 5 * math.sqrt(m * g * p * q)
    counts = maps.sum(axis=1)
    sigma2 = g * p * q
    assert abs(counts.mean() - g * p) <= 5 * math.sqrt(sigma2 / m)
    mu4 = sigma2 * (1 + 3 * (g - 2) * p * q)
    assert abs(counts.var(ddof=1) - sigma2) <= 5 * math.sqrt((mu4 - sigma2 ** 2 * (m - 3) / (m - 1)) / m)
    stat = ((maps.sum(axis=0) - m * p) ** 2 / (m * p * q)).sum()
    assert stat <= chi2.ppf(1 - 1e-6, g)
    rows = seeds.reshape(-1, seeds.shape[-1]).numpy()
    pairs = rows[:, :-1] & rows[:, 1:]
    lane = np.arange(pairs.shape[1]) % 4
    for j in range(4):
        n = pairs[:, lane == j].size
        assert abs(pairs[:, lane == j].sum() - n * p * p) <= 5 * math.sqrt(n * p * p * (1 - p * p))
    # consecutive grid rows use consecutive Philox counters: the last counter of a row and the
    # first of the next must be different calls (a shared counter would repeat the lanes)
    last = 4 * ((rows.shape[1] - 1) // 4)
    for j in range(rows.shape[1] - last):
        both = rows[:-1, last + j] & rows[1:, j]
        n = both.size
        assert abs(both.sum() - n * p * p) <= 5 * math.sqrt(n * p * p * (1 - p * p))


@pytest.mark.parametrize("seeds", ["valid", "padded"])
@pytest.mark.parametrize("shape, block", [((20, 20, 14, 14), 7), ((20, 20, 9, 12), (3, 5)),
                                          ((50, 40, 20), 4), ((10, 10, 6, 7, 8), (2, 3, 3))])
def test_drop_fraction_matches_expected(monkeypatch, mask_kind, shape, block, seeds):
    """Drop fraction vs sd.expected_drop_fraction within five_sigma_fraction_bound over the
    N*C independent maps. Bigger tiles only shorten the interpreter's run (same mask)."""
    monkeypatch.setattr(_triton, "TILE_UNITS", 8192 if DEVICE == "cpu" else _triton.TILE_UNITS)
    rate, spatial = 0.15, shape[2:]
    y = sdt.dropblock(torch.ones(shape, device=DEVICE), rate, block, seeds=seeds,
                      normalize="rate", seed=123)
    frac = (y == 0).double().mean().item()
    expected = sd.expected_drop_fraction(sd.exact_gamma(rate, sd.clip_block(block, spatial),
                                                        spatial, seeds), block, spatial, seeds)
    assert expected == pytest.approx(rate, abs=1e-9)
    assert abs(frac - expected) <= five_sigma_fraction_bound(expected, shape[0] * shape[1])


# --------------------------------------------------------------------------- keys
@pytest.mark.parametrize("value", [5, 2 ** 31 + 7, 0x5DEECE66D1234567])
def test_int_key_gives_the_tensor_keys_masks(value):
    """A key passed by value (an int, as eager CUDA calls make) selects the same seeds, masks
    and counts as the same key read from a device tensor (as under CUDA-graph capture), in
    every kernel; 32-bit and 64-bit ints alike."""
    shape, block = (2, 3, 9, 11), (3, 3)
    grid = _triton.seed_grid(shape, DEVICE, 0.3, block, "padded", value)
    assert torch.equal(grid, _triton.seed_grid(shape, DEVICE, 0.3, block, "padded", key(value)))
    assert grid.any()
    for fn in (_triton.keep_mask, _triton.row_words):
        got = fn(shape, DEVICE, 0.3, block, "padded", value)
        want = fn(shape, DEVICE, 0.3, block, "padded", key(value))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_int_keys_outside_63_bits_are_rejected():
    for bad in (-1, 2 ** 63):
        with pytest.raises(ValueError, match="key must be in"):
            _triton.keep_mask((1, 1, 8, 8), DEVICE, 0.3, (3, 3), "valid", bad)


def test_host_key_mix():
    """Keys made on the host: 63 bits with bit 62 set (always a 64-bit kernel argument), a
    function of seed and offset only, and distinct over many offsets and seeds."""
    keys = {_triton._mix(seed, 4 * k) for seed in (0, 1, 2 ** 63 + 5) for k in range(2000)}
    assert len(keys) == 6000
    assert all(2 ** 62 <= k < 2 ** 63 for k in keys)
    assert _triton._mix(7, 12) == _triton._mix(7, 12) != _triton._mix(7, 16)


@pytest.mark.skipif(DEVICE != "cuda", reason="host keys are made for CUDA generators")
def test_eager_cuda_key_is_made_on_the_host(monkeypatch):
    """Eagerly on CUDA the key is an int from the generator's seed and offset, which advances
    by 4 as for any random op; with HOST_KEYS off it is a tensor drawn on the device."""
    gen = torch.Generator(device=DEVICE).manual_seed(9)
    k = _triton.new_key(torch.device(DEVICE), gen)
    assert k == _triton._mix(9, 0) and gen.get_offset() == 4
    torch.cuda.manual_seed(3)
    assert _triton.new_key(torch.device(DEVICE), None) == _triton._mix(3, 0)
    monkeypatch.setattr(_triton, "HOST_KEYS", False)
    assert isinstance(_triton.new_key(torch.device(DEVICE), gen), torch.Tensor)


# --------------------------------------------------------------------------- determinism
def test_determinism(mask_kind):
    shape, block = (2, 3, 9, 11), (3, 3)
    a = _triton.keep_mask(shape, DEVICE, 0.3, block, "valid", key(1))[0]
    assert torch.equal(a, _triton.keep_mask(shape, DEVICE, 0.3, block, "valid", key(1))[0])
    assert not torch.equal(a, _triton.keep_mask(shape, DEVICE, 0.3, block, "valid", key(2))[0])
    x = torch.randn(shape, device=DEVICE)
    assert torch.equal(sdt.dropblock(x, 0.3, 3, seed=7), sdt.dropblock(x, 0.3, 3, seed=7))
    g1 = torch.Generator(device=DEVICE).manual_seed(3)
    g2 = torch.Generator(device=DEVICE).manual_seed(3)
    first = sdt.dropblock(x, 0.3, 3, seed=g1)
    assert torch.equal(first, sdt.dropblock(x, 0.3, 3, seed=g2))
    assert not torch.equal(first, sdt.dropblock(x, 0.3, 3, seed=g1))  # the generator advanced
    torch.manual_seed(0)
    b = sdt.dropblock(x, 0.3, 3)
    torch.manual_seed(0)
    assert torch.equal(b, sdt.dropblock(x, 0.3, 3))


# --------------------------------------------------------------------------- product kernel
# 4515 elements: two full programs of the product kernel and a tail; rows wider than a word
# (byte masks) and 43 wide (row words with the "rows" mask kind)
SHAPES = [(3, 5, 301), (3, 5, 7, 43)]


@pytest.mark.parametrize("shape", SHAPES, ids=["wide", "narrow"])
@pytest.mark.parametrize("normalize", ["batch", "rate"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_product_and_gradient(mask_kind, dtype, normalize, shape):
    """y and dL/dx are x * keep * scale and g * keep * scale (float64 exact, float32 1e-6,
    half types exactly the float32 product rounded once, so a scale rounded to 16 bits first
    fails); inplace writes the same values into x."""
    ones = torch.ones(shape, dtype=torch.float64, device=DEVICE)
    keep = sdt.dropblock(ones, 0.3, 7, normalize=normalize, seed=4) != 0
    scale = keep.numel() / int(keep.sum()) if normalize == "batch" else 1 / 0.7
    exact = dict(rtol=0, atol=0)
    tol = exact if dtype == torch.float64 else (
        dict(rtol=1e-6, atol=0) if dtype == torch.float32 else exact)
    if dtype in (torch.float16, torch.bfloat16):  # the kernels' float32 scale, rounded once
        f32 = torch.float32
        scale = (torch.tensor(keep.numel(), dtype=f32) / torch.tensor(int(keep.sum()), dtype=f32)
                 if normalize == "batch" else torch.tensor(1 / 0.7, dtype=f32)).to(DEVICE)

        def product(t):
            p = t.float() * torch.where(keep, scale, torch.zeros_like(scale))
            if dtype == torch.bfloat16 and DEVICE == "cpu":  # Triton's interpreter
                return interpreted_bfloat16(p)
            return p.to(dtype)
    else:
        def product(t):
            return (t.double() * keep * scale).to(dtype)
    x = torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()
    y = sdt.dropblock(x, 0.3, 7, normalize=normalize, seed=4)
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    torch.testing.assert_close(y, product(x.detach()), **tol)
    g = torch.randn(shape, device=DEVICE).to(dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx.dtype == dtype
    torch.testing.assert_close(gx, product(g), **tol)
    x2 = x.detach().clone()
    out = sdt.dropblock(x2, 0.3, 7, normalize=normalize, seed=4, inplace=True)
    assert out.data_ptr() == x2.data_ptr() and torch.equal(x2, y.detach())


@pytest.mark.parametrize("normalize", ["batch", "rate"])
def test_gradcheck(mask_kind, normalize):
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda t: sdt.dropblock(t, 0.3, 2, normalize=normalize, seed=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: fn(t) ** 2, (x,), fast_mode=True)


@pytest.mark.parametrize("normalize", ["batch", "rate"])
def test_double_backward_is_mask_times_scale(mask_kind, normalize):
    """d/dv of (dy/dx)^T v is keep * scale (the backward's differentiable branch), bit for bit:
    that branch divides numel by kept as the kernels do (not numel * (1 / kept), which is what
    torch's ``int / tensor`` computes, 1 ulp off for seed=6)."""
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = sdt.dropblock(x, 0.3, 3, normalize=normalize, seed=6)
    mask_scale = sdt.dropblock(torch.ones_like(x), 0.3, 3, normalize=normalize, seed=6)
    assert 0 < int((mask_scale != 0).sum()) < x.numel()
    v = torch.ones_like(x, requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, v, create_graph=True)
    assert gx.requires_grad
    torch.testing.assert_close(gx.detach(), mask_scale, rtol=0, atol=0)
    (gv,) = torch.autograd.grad(gx, v, torch.ones_like(gx))
    torch.testing.assert_close(gv, mask_scale, rtol=0, atol=0)


@pytest.mark.parametrize("normalize", ["batch", "rate"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_all_dropped_gives_zeros_and_zero_gradient(mask_kind, dtype, normalize):
    x = torch.randn(2, 3, 6, 6, device=DEVICE).to(dtype).requires_grad_()
    y = sdt.dropblock(x, 0.5, 3, gamma=1.0, normalize=normalize)
    assert y.dtype == dtype and torch.equal(y, torch.zeros_like(y))
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert torch.isfinite(g).all() and torch.equal(g, torch.zeros_like(g))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_draws_a_fresh_mask_per_replay():
    """Forward+backward captured once in a CUDA graph: each replay draws a new key from the
    default generator (graph-safe), and output and gradient are x * keep * scale for that
    replay's mask. (The benchmark's "graph" mode relies on this.)"""
    x = torch.ones(4, 8, 14, 14, device=DEVICE, requires_grad=True)
    static = {}

    def step():
        static["y"] = sdt.dropblock(x, 0.2, 3)
        (static["g"],) = torch.autograd.grad(static["y"], x, torch.ones_like(x))

    replay = timing.cuda_graph(step)
    keeps = []
    for _ in range(3):
        replay()
        torch.cuda.synchronize()
        y, g = static["y"].detach().clone(), static["g"].clone()
        keep = y != 0
        scale = keep.numel() / int(keep.sum())
        torch.testing.assert_close(y, keep.float() * scale, rtol=1e-6, atol=0)
        torch.testing.assert_close(g, y, rtol=0, atol=0)
        keeps.append(keep)
    assert not torch.equal(keeps[0], keeps[1]) and not torch.equal(keeps[1], keeps[2])


@pytest.mark.skipif(DEVICE != "cuda", reason="streams need a GPU")
def test_row_count_on_two_streams(monkeypatch):
    """Eager calls alternating between two streams, queued without synchronizing: each stream
    has its own accumulator, every output is x * keep * numel / kept for its own mask, and
    both accumulators are 0 afterwards."""
    monkeypatch.setattr(_triton, "_STATE", {})
    x = torch.ones(8, 16, 14, 14, device=DEVICE)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for stream in streams:  # x is written on the current stream
        stream.wait_stream(torch.cuda.current_stream())
    outs = []
    for i in range(8):
        with torch.cuda.stream(streams[i % 2]):
            outs.append(sdt.dropblock(x, 0.2, 7, seed=i))
    torch.cuda.synchronize()
    assert len(_triton._STATE) == 2
    assert all(int(acc) == 0 for acc, _ in _triton._STATE.values())
    for y in outs:
        keep = y != 0
        torch.testing.assert_close(y, keep.float() * (keep.numel() / int(keep.sum())),
                                   rtol=1e-6, atol=0)
    assert not torch.equal(outs[0] != 0, outs[1] != 0)


def test_launches_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: _on makes the tensors' device current when
    it differs, and does nothing for the current device or a CPU tensor."""
    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    monkeypatch.setattr(_triton, "_current_device", lambda: 0)
    with _triton._on("cpu"), _triton._on("cuda:0"), _triton._on("cuda"):
        pass
    assert entered == []
    with _triton._on("cuda:1"):
        pass
    assert entered == [torch.device("cuda:1")]


def test_first_use_failure_falls_back_once_with_a_warning(monkeypatch):
    """A kernel that cannot compile on this device (e.g. a GPU Triton cannot target): the first
    call warns (for the row words' check, then for the byte-mask kernels) and falls back to
    tensor operations, later calls fall back without trying."""
    monkeypatch.setattr(_triton, "_CHECKED", set())
    monkeypatch.setattr(_triton, "_FAILED", {})
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    monkeypatch.setattr(_triton, "_ROWS_FAILED", {})

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("no kernel for this GPU")

    class Kernels:
        dropblock_mask_kernel = masked_scale_kernel = seed_grid_kernel = Broken()
        dropblock_rows_kernel = masked_rows_kernel = Broken()

    monkeypatch.setattr(_triton, "_kernels", lambda: Kernels)
    x = torch.ones(3, 2, 9, 9, dtype=torch.float64, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="no kernel for this GPU") as record:
        y = sdt.dropblock(x, 0.3, 3, seed=1)
    assert [str(w.message).split(" (")[0] for w in record] == [
        f"structdrop: the Triton DropBlock row-word kernel failed its check on {x.device}",
        f"structdrop: the Triton DropBlock kernels failed on {x.device}"]
    keep = y != 0
    assert 0 < int(keep.sum()) < keep.numel() and is_union_of_blocks(keep, (3, 3))
    assert torch.equal(y, x * keep * (keep.numel() / int(keep.sum())))
    assert list(_triton._FAILED) == [str(x.device)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sdt.dropblock(x, 0.3, 3, seed=2).shape == x.shape
    _triton._FAILED.clear()  # this test's own dicts (monkeypatched); the fixture checks them
    _triton._ROWS_FAILED.clear()


def test_a_checked_combination_is_not_caught(monkeypatch, mask_kind):
    """Once a (device, geometry, dtype, normalize) combination ran, its errors propagate (here
    through the ordinary path; tests/test_torch_prepared.py checks prepared calls)."""
    monkeypatch.setattr(_prepared, "ENABLED", False)
    monkeypatch.setattr(_triton, "_CHECKED", set())
    monkeypatch.setattr(_triton, "_FAILED", {})
    x = torch.ones(3, 2, 9, 9, device=DEVICE)
    sdt.dropblock(x, 0.3, 3, seed=1)
    assert len(_triton._CHECKED) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("a real error")

    monkeypatch.setattr(_triton, "_mask_bytes", broken)
    monkeypatch.setattr(_triton, "_row_buffer", broken)
    with pytest.raises(RuntimeError, match="a real error"):
        sdt.dropblock(x, 0.3, 3, seed=1)
    assert _triton._FAILED == {}
