"""Prepared DropBlock calls (structdrop_tutorial.torch._prepared): once a signature has been
served by the Triton row-word path, later calls launch its kernels from a kept plan. They must
give what the ordinary path gives (output, gradient, the generator's state afterwards, what
autograd saves), and must not be used where anything they depend on has changed.

Without a GPU the plan launches Triton's interpreter (tests/conftest.py); on a GPU it calls the
compiled launchers with pointers as integers, which the GPU-only test at the end compares with
ordinary launches."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _launch, _prepared, _triton  # noqa: E402

from helpers import triton_test_device  # noqa: E402

DEVICE = triton_test_device()


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """The Triton path on (forced for CPU tensors without a GPU), plans on and none kept yet,
    direct launches unverified (a plan is not used while they are verified)."""
    monkeypatch.setattr(_triton, "ENABLED", True)
    monkeypatch.setattr(_triton, "ROW_WORDS", True)
    monkeypatch.setattr(_triton, "FORCE", DEVICE == "cpu")
    monkeypatch.setattr(_launch, "VERIFY", False)
    monkeypatch.setattr(_prepared, "ENABLED", True)
    monkeypatch.setattr(_prepared, "_PLANS", {})
    monkeypatch.setattr(_prepared, "_SEEN", set())
    monkeypatch.setattr(_prepared, "_BYTES", {})
    yield
    assert not _triton._FAILED and not _triton._ROWS_FAILED


@pytest.fixture
def planned(monkeypatch):
    """A list that gets one entry per call served by a plan."""
    calls, real = [], _prepared.dropblock
    monkeypatch.setattr(_prepared, "dropblock", lambda *a: calls.append(1) or real(*a))
    return calls


def generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def gen_state(gen):
    return gen.get_offset() if DEVICE == "cuda" else gen.get_state()


def run(x, g, **kw):
    """Output, gradient for upstream ``g`` and the generator's state after one call."""
    gen = generator(11)
    x = x.detach().clone().requires_grad_()
    y = sdt.dropblock(x, seed=gen, **kw)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx, gen_state(gen)


def plan_for(x, **kw):
    """Call until the signature has a plan (on a GPU the first call compiles, the second
    launches directly and makes it); return the plan."""
    for _ in range(3):
        if _prepared._PLANS:
            break
        sdt.dropblock(x, **kw)
    assert len(_prepared._PLANS) == 1
    return next(iter(_prepared._PLANS.values()))


CASES = [  # (shape, block, seeds, normalize, dtype)
    ((2, 3, 9, 11), 3, "valid", "batch", torch.float32),
    ((2, 3, 9, 11), (2, 4), "padded", "rate", torch.float64),
    ((3, 2, 40), 5, "valid", "batch", torch.float16),
    ((1, 2, 3, 6, 7), 2, "padded", "batch", torch.bfloat16),
]


@pytest.mark.parametrize("shape, block, seeds, normalize, dtype", CASES)
def test_planned_calls_equal_ordinary_calls(monkeypatch, planned, shape, block, seeds,
                                            normalize, dtype):
    """Output, gradient and the generator's state after the call, bit for bit, 1-, 2- and
    3-D, both normalizations, four dtypes; autograd saves the same (the row words and their
    count)."""
    kw = dict(rate=0.25, block_size=block, seeds=seeds, normalize=normalize)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    g = torch.randn(shape, device=DEVICE).to(dtype)
    monkeypatch.setattr(_prepared, "ENABLED", False)
    ordinary = run(x, g, **kw)
    assert not planned and not _prepared._PLANS
    monkeypatch.setattr(_prepared, "ENABLED", True)
    plan_for(x, **kw)
    assert len(_prepared._PLANS) == 1 and not planned
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        result = run(x, g, **kw)
    assert len(planned) == 1
    for a, b in zip(result, ordinary):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    keep = result[0] != 0
    assert 0 < int(keep.sum()) < keep.numel()
    assert sum(t.untyped_storage().nbytes() for t in saved) == 8 * x.numel() // shape[-1] + 8


LAYOUTS = {  # name -> (input, data_format): channels innermost in memory
    "channels_last data": (lambda: torch.randn(2, 9, 11, 3), "channels_last"),
    "channels_last memory": (
        lambda: torch.randn(2, 3, 9, 11).contiguous(memory_format=torch.channels_last),
        "channels_first"),
    "channels_last_3d memory": (
        lambda: torch.randn(1, 2, 3, 6, 7).contiguous(memory_format=torch.channels_last_3d),
        "channels_first"),
    "1-D, channels innermost": (lambda: torch.randn(3, 40, 2).transpose(1, 2), "channels_first"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_channels_innermost_plans_equal_ordinary_calls(monkeypatch, planned, layout):
    """Inputs whose channels are innermost in memory get plans of their own (the channels-last
    product kernel, launched from the plan on x's memory as it is): output (with x's
    strides), gradient (also for an upstream gradient in another layout), double-backward
    gradient and the generator's state equal the ordinary path's, both normalizations; an
    inplace call takes the ordinary path (a copy there and back)."""
    make, fmt = LAYOUTS[layout]
    x = make().to(DEVICE)
    for normalize in ("batch", "rate"):
        kw = dict(rate=0.25, block_size=3, data_format=fmt, normalize=normalize)
        for g in (torch.randn_like(x), torch.randn(x.shape, device=DEVICE)):
            monkeypatch.setattr(_prepared, "ENABLED", False)
            ordinary = run(x, g, **kw)
            monkeypatch.setattr(_prepared, "ENABLED", True)
            _prepared.clear()
            plan = plan_for(x, **kw)
            assert plan.channels_last and plan.strides == x.stride()
            before = len(planned)
            result = run(x, g, **kw)
            assert len(planned) == before + 1
            assert result[0].stride() == x.stride()
            for a, b in zip(result, ordinary):
                assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

        def twice(t):  # the gradient of the squared gradient with respect to the upstream one
            v = torch.randn_like(t).requires_grad_()
            t = t.clone().requires_grad_()
            (gt,) = torch.autograd.grad(sdt.dropblock(t, seed=generator(4), **kw), t, v,
                                        create_graph=True)
            return torch.autograd.grad(gt.square().sum(), v)[0]

        torch.manual_seed(0)
        planned_twice = twice(x)
        monkeypatch.setattr(_prepared, "ENABLED", False)
        torch.manual_seed(0)
        assert torch.equal(planned_twice, twice(x))
        monkeypatch.setattr(_prepared, "ENABLED", True)
    before = len(planned)
    expected = sdt.dropblock(x, seed=generator(8), **kw)
    x2 = x.clone()
    out = sdt.dropblock(x2, seed=generator(8), inplace=True, **kw)
    assert len(planned) == before + 1 and out.data_ptr() == x2.data_ptr()
    assert torch.equal(x2, expected)
    xr = x.clone().requires_grad_()  # a backward after the plan stopped applying: the
    y = sdt.dropblock(xr, seed=generator(6), **kw)  # ordinary launch of the same kernel
    assert len(planned) == before + 2
    monkeypatch.setattr(_prepared, "ENABLED", False)
    g = torch.randn(x.shape, device=DEVICE)
    (gx,) = torch.autograd.grad(y, xr, g)
    (ref,) = torch.autograd.grad(sdt.dropblock(xr, seed=generator(6), **kw), xr, g)
    assert torch.equal(gx, ref)


def test_inplace_no_grad_and_global_generator(planned):
    """A plan serves inplace calls (the same values written into x), calls under no_grad and
    calls drawing from the global generator (torch.manual_seed repeats them)."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    plan_for(x, rate=0.3, block_size=3)
    torch.manual_seed(5)
    y = sdt.dropblock(x, 0.3, 3)
    torch.manual_seed(5)
    x2 = x.clone()
    with torch.no_grad():
        out = sdt.dropblock(x2, 0.3, 3, inplace=True)
    assert out.data_ptr() == x2.data_ptr() and torch.equal(x2, y)
    assert len(planned) == 2
    h = x.clone().requires_grad_()
    z = h * 1.0  # inplace on a non-leaf: the gradient is still g * keep * scale
    sdt.dropblock(z, 0.3, 3, seed=generator(2), inplace=True)
    (gh,) = torch.autograd.grad(z, h, torch.ones_like(z))
    assert torch.equal(gh, sdt.dropblock(torch.ones_like(x), 0.3, 3, seed=generator(2)))
    assert len(planned) == 4


def test_double_backward_and_a_plan_gone_before_backward(planned, monkeypatch):
    """Double backward through a planned call is keep * scale (the differentiable branch); a
    backward launches from the plan while it applies and takes the ordinary launch after the
    plan stopped applying, same gradient."""
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=DEVICE)
    plan_for(x, rate=0.3, block_size=3)
    mask_scale = sdt.dropblock(torch.ones_like(x), 0.3, 3, seed=generator(6))
    xr = x.clone().requires_grad_()
    y = sdt.dropblock(xr, 0.3, 3, seed=generator(6))
    v = torch.ones_like(x, requires_grad=True)
    (gx,) = torch.autograd.grad(y, xr, v, create_graph=True)
    assert torch.equal(gx.detach(), mask_scale)
    (gv,) = torch.autograd.grad(gx, v, torch.ones_like(gx))
    assert torch.equal(gv, mask_scale)
    launched = []
    real = _launch.launch
    monkeypatch.setattr(_launch, "launch", lambda *a: launched.append(1) or real(*a))
    y = sdt.dropblock(xr, 0.3, 3, seed=generator(6))
    (gx,) = torch.autograd.grad(y, xr, torch.ones_like(x))  # the plan launches both passes
    assert torch.equal(gx, mask_scale) and launched == []
    y = sdt.dropblock(xr, 0.3, 3, seed=generator(6))
    assert len(planned) == 4
    monkeypatch.setattr(_prepared, "ENABLED", False)
    (gx,) = torch.autograd.grad(y, xr, torch.ones_like(x))
    assert torch.equal(gx, mask_scale) and launched == [1]


def test_planned_keys_come_from_the_callers_generator(planned, monkeypatch):
    """A planned call makes its key on the host from the generator given, else from the plan's
    device's default generator (on a GPU; a stand-in here), and the key decides the mask as in
    the ordinary path."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    plan = plan_for(x, rate=0.3, block_size=3)
    default = plan.generator if DEVICE == "cuda" else object()
    monkeypatch.setattr(plan, "generator", default)
    asked = []
    monkeypatch.setattr(_triton, "host_key", lambda gen: asked.append(gen) or _triton._mix(7, 4))
    monkeypatch.setattr(_triton, "new_key", lambda *a: _triton._mix(7, 4))  # the ordinary path
    gen = generator(3)
    y_default, y_given = sdt.dropblock(x, 0.3, 3), sdt.dropblock(x, 0.3, 3, seed=gen)
    assert len(planned) == 2 and asked == [default, gen]
    monkeypatch.setattr(_prepared, "ENABLED", False)
    ordinary = sdt.dropblock(x, 0.3, 3)
    assert torch.equal(y_default, ordinary) and torch.equal(y_given, ordinary)
    assert 0 < int((ordinary == 0).sum()) < ordinary.numel()


def test_values_that_compare_equal_do_not_share_a_plan(planned):
    """7 and 7.0 are equal keys, but only 7 is a block size; 1 and True likewise for gamma:
    after a plan for the valid value the other still raises, as it does without plans."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    plan_for(x, rate=0.25, block_size=3)
    with pytest.raises(TypeError, match="block_size"):
        sdt.dropblock(x, 0.25, 3.0)
    with pytest.raises(TypeError, match="block_size"):
        sdt.dropblock(x, 0.25, (3, 3.0))
    sdt.dropblock(x, 0.25, 3, gamma=0.0)
    sdt.dropblock(x, 0.25, 3, gamma=0.0)
    with pytest.raises(TypeError, match="gamma"):
        sdt.dropblock(x, 0.25, 3, gamma=False)
    assert torch.equal(sdt.dropblock(x, 0.25, 3, gamma=0.0), x)  # gamma 0: nothing dropped
    with pytest.raises(TypeError, match="seed"):  # checked on a planned call too
        sdt.dropblock(x, 0.25, 3, seed=1.5)


def test_plans_follow_the_switches(monkeypatch, planned):
    """A plan is not used while the Triton path, row words or (on the CPU) FORCE are off,
    while functorch transforms are active, for strided inputs or other tensor types, or after
    what it was made under changed (checked sets replaced, tuning constants, launchers
    forgotten); a later ordinary call makes a new one."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    plan = plan_for(x, rate=0.25, block_size=3)

    def uses_plan():
        before = len(planned)
        sdt.dropblock(x, 0.25, 3)
        return len(planned) > before

    assert uses_plan()
    for module, name, value in [(_prepared, "ENABLED", False), (_triton, "ENABLED", False),
                                (_triton, "ROW_WORDS", False)]:
        with monkeypatch.context() as m:
            m.setattr(module, name, value)
            assert not uses_plan(), name
    if DEVICE == "cpu":
        with monkeypatch.context() as m:
            m.setattr(_triton, "FORCE", False)
            assert not uses_plan()
    with monkeypatch.context() as m:
        m.setattr(torch._C, "_are_functorch_transforms_active", lambda: True)
        assert _prepared.find(x, 0.25, 3, "channels_first", "exact", "valid", "batch") is None
    assert _prepared.find(x, 0.25, 3, "channels_first", "exact", "valid", "batch") is plan
    t = x.transpose(2, 3).contiguous().transpose(2, 3)  # x's shape, strided
    assert _prepared.find(t, 0.25, 3, "channels_first", "exact", "valid", "batch") is None
    p = torch.nn.Parameter(x.clone())
    assert _prepared.find(p, 0.25, 3, "channels_first", "exact", "valid", "batch") is None
    assert uses_plan()
    for change in ["checked", "rows checked", "tuning", "launchers"]:
        with monkeypatch.context() as m:
            if change == "checked":
                m.setattr(_triton, "_CHECKED", set())
            elif change == "rows checked":
                m.setattr(_triton, "_ROWS_CHECKED", set())
            elif change == "tuning":
                m.setattr(_triton, "APPLY_BLOCK", _triton.APPLY_BLOCK // 2)
            else:
                _launch.clear()
            assert not plan.fresh() and not uses_plan(), change
            for _ in range(2):  # ordinary calls make a new plan under the new state
                uses_plan()
            assert uses_plan(), change
            assert _prepared._PLANS[next(iter(_prepared._PLANS))] is not plan
            _prepared.clear()
        plan_for(x, rate=0.25, block_size=3)
        plan = next(iter(_prepared._PLANS.values()))


def test_a_failing_planned_launch_propagates(planned, monkeypatch):
    """As for a combination that ran before: an error in a planned call is raised, not turned
    into a fallback."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    plan = plan_for(x, rate=0.25, block_size=3)

    def broken(*args):
        raise RuntimeError("a real error")

    monkeypatch.setattr(plan, "mask_run", broken)
    with pytest.raises(RuntimeError, match="a real error"):
        sdt.dropblock(x, 0.25, 3)
    assert len(planned) == 1 and not _triton._FAILED


def test_a_signature_is_planned_on_its_second_call(planned):
    """A rate that changes every call (a schedule's ramp) makes no plans: only a signature
    that comes back gets one."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    for step in range(1, 6):
        sdt.dropblock(x, 0.05 * step, 3)
    assert not _prepared._PLANS and len(_prepared._SEEN) == 5 and not planned
    for _ in range(3):
        sdt.dropblock(x, 0.3, 3)
    assert len(_prepared._PLANS) == 1 and len(planned) == 1


def test_byte_mask_signatures_are_not_planned(planned, monkeypatch):
    """Rows wider than a 64-bit word take byte masks: no plan, and after the second call no
    attempt to make one (the row geometry is not looked up again) until the tuning changes."""
    x = torch.randn(2, 3, 5, 70, device=DEVICE)
    for _ in range(2):
        sdt.dropblock(x, 0.25, 3)
    assert not _prepared._PLANS and len(_prepared._BYTES) == 1
    looked_up = []
    real = _triton.row_geometry
    monkeypatch.setattr(_triton, "row_geometry", lambda *a: looked_up.append(1) or real(*a))
    sdt.dropblock(x, 0.25, 3)
    assert len(looked_up) == 1  # the ordinary path's own lookup only
    monkeypatch.setattr(_triton, "ROW_ITEMS", _triton.ROW_ITEMS * 2)
    sdt.dropblock(x, 0.25, 3)
    assert len(looked_up) == 3 and not planned


def test_no_plan_is_made_while_it_could_not_be_used(planned, monkeypatch):
    """While planned launchers may not be called (direct launches switched off, broken or
    verified, launch hooks installed, tracing), a call makes no plan and does not look for
    one beyond the ordinary path's own work; once they may, the signature is planned."""
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    ready = _launch.ready
    monkeypatch.setattr(_launch, "ready", lambda: False)
    looked_up = []
    real = _triton.row_geometry
    monkeypatch.setattr(_triton, "row_geometry", lambda *a: looked_up.append(1) or real(*a))
    for _ in range(3):
        sdt.dropblock(x, 0.25, 3)
    assert not _prepared._PLANS and not planned
    assert len(looked_up) == 3  # the ordinary path's own lookup only, once per call
    monkeypatch.setattr(_launch, "ready", ready)
    for _ in range(3):
        sdt.dropblock(x, 0.25, 3)
    assert len(_prepared._PLANS) == 1 and planned


def test_plans_are_capped():
    """At most _MAX_PLANS signatures are kept (then they start again)."""
    for n in range(1, 5):
        for _ in range(2):  # (on a GPU the second call launches directly and makes the plan)
            sdt.dropblock(torch.ones(n, 1, 5, 5, device=DEVICE), 0.2, 2)
    assert len(_prepared._PLANS) == 4
    _prepared._MAX_PLANS, cap = 2, _prepared._MAX_PLANS
    try:
        for _ in range(2):
            sdt.dropblock(torch.ones(9, 1, 5, 5, device=DEVICE), 0.2, 2)
        assert len(_prepared._PLANS) == 1
    finally:
        _prepared._MAX_PLANS = cap


@pytest.mark.skipif(DEVICE != "cuda", reason="direct launches need a GPU")
def test_planned_direct_launches_equal_triton_launches(monkeypatch, planned):
    """On a GPU: a planned call (compiled launchers, pointers as integers) gives the output,
    gradient and generator offset of ordinary launches through ``kernel[grid]``, and the
    kernels it keeps are the ones Triton itself picks for these arguments."""
    for shape, dtype, normalize in [((32, 64, 14, 14), torch.float32, "batch"),
                                    ((4, 8, 28, 28), torch.float16, "rate"),
                                    ((2, 3, 6, 20, 20), torch.bfloat16, "batch")]:
        _prepared.clear()
        kw = dict(rate=0.1, block_size=7, normalize=normalize)
        x = torch.randn(shape, device="cuda").to(dtype)
        g = torch.randn(shape, device="cuda").to(dtype)
        with monkeypatch.context() as m:
            m.setattr(_launch, "DIRECT", False)
            ordinary = run(x, g, **kw)
        # compile, then launch directly with every launch verified (no plan is made or used
        # while launches are verified); then plan from the kernels just verified
        with monkeypatch.context() as m:
            m.setattr(_launch, "VERIFY", True)
            for _ in range(2):
                sdt.dropblock(x, **kw)
            assert not _prepared._PLANS
        plan = plan_for(x, **kw)
        assert plan.ints
        before = len(planned)
        result = run(x, g, **kw)
        assert len(planned) == before + 1
        for a, b in zip(result, ordinary):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert not _launch._BROKEN


def test_planned_launch_arguments_are_those_of_direct_launches(monkeypatch):
    """The GPU path without a GPU: with stand-in compiled kernels whose launchers record their
    arguments (tests/test_torch_launch.py's), a planned call passes each launcher what the
    ordinary path's direct launch passes, with pointers as integers: the same scratch and
    accumulator, the same key and constants; its own fresh row words to both kernels; x and
    the returned output to the product."""
    from types import SimpleNamespace
    from test_torch_launch import Kernel
    kernels = SimpleNamespace(dropblock_rows_kernel=Kernel(), masked_rows_kernel=Kernel(),
                              dropblock_mask_kernel=Kernel(), masked_scale_kernel=Kernel())
    monkeypatch.setattr(_triton, "FORCE", True)  # a CPU tensor, also where a GPU is
    monkeypatch.setattr(_triton, "_kernels", lambda: kernels)
    monkeypatch.setattr(_triton, "_rows_problem", lambda *a: None)
    monkeypatch.setattr(_triton, "new_key", lambda *a: _triton._mix(3, 8))
    monkeypatch.setattr(_triton, "_CHECKED", set())
    monkeypatch.setattr(_triton, "_ROWS_CHECKED", set())
    monkeypatch.setattr(_triton, "_STATE", {})
    monkeypatch.setattr(_launch, "_COMPILED", {})
    monkeypatch.setattr(_launch, "_BROKEN", [])
    monkeypatch.setattr(_launch, "DIRECT", True)
    monkeypatch.setattr(_launch, "_ordinary_only", lambda: False)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: False)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234,
                        raising=False)
    real_prepared = _launch.prepared  # a CPU tensor's plan has no device index: use device 0
    monkeypatch.setattr(_launch, "prepared", lambda k, w, d, key: real_prepared(k, w, 0, key))
    x = torch.randn(2, 3, 9, 11)
    for _ in range(2):  # compile (stand-in), then launch directly; the plan is made
        sdt.dropblock(x, 0.25, 3, normalize="rate")
    assert len(_prepared._PLANS) == 1
    mask_calls, prod_calls = (kernels.dropblock_rows_kernel.calls,
                              kernels.masked_rows_kernel.calls)
    ordinary_mask, ordinary_prod = mask_calls[-1], prod_calls[-1]
    assert ordinary_mask[0] == ordinary_prod[0] == "direct"
    y = sdt.dropblock(x, 0.25, 3, normalize="rate")
    planned_mask, planned_prod = mask_calls[-1], prod_calls[-1]
    lead = 5 + len(_launch._COMPILED[next(iter(_launch._COMPILED))][2])  # tag, grid, stream

    def ptrs(call):
        return tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in call)

    # the mask kernel: (words, scratch, acc, key_ptr, key_value, thresh, ...): all but the
    # fresh words equal; the stream is the plan's (0 for a CPU tensor)
    assert ptrs(planned_mask[:4]) == ptrs(ordinary_mask[:4])
    assert planned_mask[5:lead] == ordinary_mask[5:lead]
    assert type(planned_mask[lead]) is int
    assert ptrs(planned_mask[lead + 1:]) == ptrs(ordinary_mask[lead + 1:])
    # the product: (x, words, out, scale bits, n, n, w, ...)
    assert ptrs(planned_prod[:lead]) == ptrs(ordinary_prod[:lead])
    assert planned_prod[lead] == x.data_ptr() == ordinary_prod[lead].data_ptr()
    assert planned_prod[lead + 1] == planned_mask[lead]  # the row words just written
    assert planned_prod[lead + 2] == y.data_ptr()
    assert planned_prod[lead + 3:] == ordinary_prod[lead + 3:]
    assert all(type(a) is not torch.Tensor for a in planned_mask + planned_prod)
    # the backward launches the product on the gradient, from the plan
    xr = x.clone().requires_grad_()
    y = sdt.dropblock(xr, 0.25, 3, normalize="rate")
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, xr, g)
    backward = prod_calls[-1]
    assert backward[lead] == g.data_ptr() and backward[lead + 2] == gx.data_ptr()
    assert backward[lead + 1] == prod_calls[-2][lead + 1]  # the forward's words
    assert backward[lead + 3:] == ordinary_prod[lead + 3:]


def test_eager_parts_script_builds_the_planned_call(monkeypatch):
    """benchmarks/eager_parts.py launches the plan's mask kernel on its own (the words must be the
    ordinary path's for the same key, which it checks) and times every stage; without a plan it
    says so rather than timing something else."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eager_parts.py"
    spec = importlib.util.spec_from_file_location("eager_parts", path)
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    row = parts.measure(DEVICE, (2, 3, 9, 9), rounds=1, n=1, warmup=1)
    assert set(row) == {"floor x*mask", "product (given words)", "+ words allocated per call",
                        "+ key from the generator", "+ mask kernel (the planned call)",
                        "dropblock, seed=generator", "dropblock, default generator",
                        "floor x*mask, single-threaded autograd",
                        "product (given words), single-threaded autograd",
                        "dropblock, seed=generator, single-threaded autograd"}
    assert all(us > 0 for us in row.values())
    real = parts._mask  # a mask launched with another key is caught
    monkeypatch.setattr(parts, "_mask", lambda plan, key: real(plan, key + 1))
    with pytest.raises(RuntimeError, match="differs"):
        parts.measure(DEVICE, (2, 3, 9, 9), rounds=1, n=1, warmup=1)
    monkeypatch.setattr(_prepared, "ENABLED", False)  # no plan is made (nor kept from above)
    monkeypatch.setattr(_prepared, "_PLANS", {})
    with pytest.raises(RuntimeError, match="no plan"):
        parts.measure(DEVICE, (2, 3, 9, 9), rounds=1, n=1, warmup=1)


@pytest.mark.skipif(not hasattr(getattr(torch, "compiler", None), "is_compiling"),
                    reason="torch < 2.3: the package cannot tell that dynamo is tracing")
def test_torch_compile_runs_the_triton_path_untraced(planned):
    """Under torch.compile the Triton path runs eagerly in a graph break, plans included: the
    same masks and gradients as an eager call from the same generator seed (traced, dynamo
    recompiled the launch frames up to its limit on a GPU, and stepped into Triton's
    interpreter on a CPU, which failed). Dynamo never reads the plans, so a plan made between
    two compiled calls compiles nothing again."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 9, 9, device=DEVICE, requires_grad=True)
    g = torch.randn_like(x)
    compiled = torch.compile(lambda t, gen: sdt.dropblock(t * 1, 0.3, 3, seed=gen) * 2,
                             backend="eager")
    frames, compiled_planned = [], 0
    for seed in range(4):  # the plan is made by the second call (seed 0's eager one)
        before = len(planned)
        y = compiled(x, generator(seed))
        compiled_planned += len(planned) - before
        frames.append(counters["frames"]["total"])
        (gx,) = torch.autograd.grad(y, x, g)
        y0 = sdt.dropblock(x * 1, 0.3, 3, seed=generator(seed)) * 2
        (gx0,) = torch.autograd.grad(y0, x, g)
        assert torch.equal(y, y0) and torch.equal(gx, gx0)
    assert len(_prepared._PLANS) == 1 and compiled_planned == 3
    assert frames[-1] == frames[0]  # nothing compiled again once the plan was there
    torch._dynamo.reset()
