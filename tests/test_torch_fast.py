"""The fast DropBlock path's helpers (structdrop_tutorial.torch._fast).

The gap sampler gives ``Tensor.geometric_``'s numbers. The CPU mask pool
(``reusable_mask``): a mask's memory is reused only when no tensor holds it, so two DropBlock
layers in flight, a mask kept by the caller and a saved mask awaiting its backward pass are
never overwritten."""
import math

import pytest

torch = pytest.importorskip("torch")
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _fast  # noqa: E402

needs_use_count = pytest.mark.skipif(_fast._storage_use_count(torch.empty(1)) is None,
                                     reason="this PyTorch has no storage use count")


@pytest.fixture(autouse=True)
def empty_pool():
    """Each test starts and ends with an empty pool on this thread."""
    _fast._LOCAL.masks = {}
    yield
    _fast._LOCAL.masks = {}


def ptr(t):
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("p", [1e-4, 0.0036, 0.015, 0.049])
def test_geometric_gaps_are_geometric_numbers(p):
    """On the CPU the vectorized inversion returns the very numbers ``geometric_`` draws from
    the same generator state, and leaves the generator where ``geometric_`` leaves it (so the
    masks drawn from a seed are those drawn before the sampler changed)."""
    fast, slow = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for n in (1, 1000, 200_000):
        gaps = _fast.geometric_gaps(n, p, fast)
        expected = torch.empty(n, dtype=torch.float64).geometric_(p, generator=slow)
        assert gaps.dtype == torch.float64 and torch.equal(gaps, expected)
        assert torch.equal(fast.get_state(), slow.get_state())
    assert gaps.min() >= 1 and torch.equal(gaps, gaps.floor())


def test_an_infinite_gap_ends_the_positions(monkeypatch):
    """A uniform of exactly 0 makes an infinite gap (log 0 = -inf); the positions before it
    are kept and nothing after it is drawn."""
    calls = []

    def gaps(n, p, generator=None, device=None):
        calls.append(n)
        return torch.tensor([3.0, 2.0, math.inf] + [1.0] * (n - 3), dtype=torch.float64)

    monkeypatch.setattr(_fast, "geometric_gaps", gaps)
    pos = _fast.bernoulli_positions(1000, 0.01, batch=8)
    assert pos.tolist() == [2, 4] and calls == [8]


@needs_use_count
def test_released_mask_is_reused_held_mask_is_not():
    a = _fast.reusable_mask((4, 5), "cpu")
    assert a.dtype == torch.bool and a.shape == (4, 5)
    first = ptr(a)
    b = _fast.reusable_mask((4, 5), "cpu")  # a is alive: a new buffer
    assert ptr(b) != first
    view = a[1:]  # a view keeps the storage alive after a itself is gone
    del a
    c = _fast.reusable_mask((2, 10), "cpu")  # same size, other shape; b and view alive
    assert ptr(c) not in (first, ptr(b))
    del view, c
    d = _fast.reusable_mask((20,), "cpu")  # the first free buffer in the pool: a's
    assert ptr(d) == first and d.shape == (20,)


@needs_use_count
def test_pool_is_bounded(monkeypatch):
    monkeypatch.setattr(_fast, "POOL_MAX_PER_SIZE", 2)
    held = [_fast.reusable_mask((8,), "cpu") for _ in range(5)]
    assert len({ptr(t) for t in held}) == 5
    assert len(_fast._LOCAL.masks[8]) == 2
    monkeypatch.setattr(_fast, "POOL_MAX_BYTES", 10)
    _fast.reusable_mask((64,), "cpu")
    assert _fast._LOCAL.masks.get(64, []) == []  # over the byte budget: not kept


def test_plain_allocation_without_use_count(monkeypatch):
    monkeypatch.setattr(_fast, "_USE_COUNT", None)
    a = _fast.reusable_mask((3, 3), "cpu")
    del a
    _fast.reusable_mask((3, 3), "cpu")
    assert _fast._LOCAL.masks == {}


@needs_use_count
@pytest.mark.parametrize("painter", ["table", "index"])
def test_two_dropblocks_in_flight_keep_their_masks(monkeypatch, painter):
    """Two calls before any backward (two layers of one network), more calls while both wait:
    each backward sees its own forward's mask; once the graphs are gone the memory is reused."""
    from structdrop_tutorial.torch import _paint, functional
    if painter == "index":
        monkeypatch.setattr(_paint, "TABLE_MAX_BYTES", 0)
    used = []
    real = functional.seeds_to_keep_from_table
    monkeypatch.setattr(functional, "seeds_to_keep_from_table",
                        lambda *a: used.append(1) or real(*a))
    shape = (8, 16, 14, 14)
    x1, x2 = (torch.ones(shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y1 = sdt.dropblock(x1, 0.1, 7, seed=1)
    y2 = sdt.dropblock(x2, 0.1, 7, seed=2)
    keep1, keep2 = (y1 != 0).clone(), (y2 != 0).clone()
    assert not torch.equal(keep1, keep2)
    for seed in range(3):
        sdt.dropblock(torch.ones(shape, dtype=torch.float64), 0.1, 7, seed=10 + seed)
    assert bool(used) == (painter == "table")
    (g2,) = torch.autograd.grad(y2.sum(), x2)
    (g1,) = torch.autograd.grad(y1.sum(), x1)
    # x = 1: y = keep * scale, and so is the gradient, bit for bit
    torch.testing.assert_close(g1, y1.detach(), rtol=0, atol=0)
    torch.testing.assert_close(g2, y2.detach(), rtol=0, atol=0)
    pooled = {ptr(b) for bufs in _fast._LOCAL.masks.values() for b in bufs}
    assert len(pooled) >= 2
    del y1, y2
    y3 = sdt.dropblock(torch.ones(shape, dtype=torch.float64, requires_grad=True), 0.1, 7, seed=4)
    keep3 = y3.grad_fn.saved_tensors[0]
    assert ptr(keep3) in pooled and torch.equal(keep3, y3 != 0)


def test_other_devices_and_compile_take_plain_allocation(monkeypatch):
    monkeypatch.setattr(_fast, "_compiling", lambda: True)
    a = _fast.reusable_mask((3, 3), "cpu")
    assert a.shape == (3, 3) and _fast._LOCAL.masks == {}
    if torch.cuda.is_available():
        monkeypatch.setattr(_fast, "_compiling", lambda: False)
        assert _fast.reusable_mask((3, 3), "cuda").is_cuda and _fast._LOCAL.masks == {}
