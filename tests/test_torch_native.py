"""The native planned call (structdrop_tutorial.torch._native and _native.cpp).

Without a GPU the extension is built and given a stand-in for ``cuLaunchKernel`` (a ctypes
callback) that records each launch's parameters and, for the product kernel, writes
``out = 2 * x``: the tests check what the extension passes to the driver (the kernel's fixed
parameters with the buffers, key and tensors in their slots), the autograd function (backward,
double backward, gradients in another layout) and its refusals. On a GPU the native call is
compared with the Python plan bit for bit: outputs, gradients and the generator's offset."""
import ctypes
import struct
import types

import pytest

torch = pytest.importorskip("torch")
from structdrop_tutorial.torch import _native, _triton  # noqa: E402

LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *([ctypes.c_uint] * 7), ctypes.c_void_p,
                          ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)
MASK_FN, PROD_FN = 0x1000, 0x2000


@pytest.fixture(scope="module")
def ext():
    """The extension, built for this test session (skipped without a compiler or ninja)."""
    from torch.utils import cpp_extension
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        pytest.skip(f"cannot build C++ extensions here: {exc}")
    try:
        return cpp_extension.load(name="structdrop_native_test", sources=[str(_native.SOURCE)],
                                  extra_cflags=list(_native.CFLAGS), verbose=False)
    except Exception as exc:  # no compiler
        pytest.skip(f"cannot build the extension here: {type(exc).__name__}: {exc}")


class Stub:
    """A stand-in for cuLaunchKernel: records (function, grid, block, shared, parameters) and
    runs the product kernel as ``out = 2 * x`` on float32 CPU memory of ``n`` elements."""

    def __init__(self, n_params, n):
        self.calls, self.n_params, self.n = [], n_params, n
        self.fn = LAUNCH(self._launch)

    def _launch(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        count = self.n_params[f]
        values = [ctypes.c_uint64.from_address(params[i]).value for i in range(count)]
        self.calls.append((f, (gx, gy, gz), (bx, by, bz), shared, stream, values))
        if f == PROD_FN:
            src = (ctypes.c_float * self.n).from_address(values[0])
            dst = (ctypes.c_float * self.n).from_address(values[2])
            for i in range(self.n):
                dst[i] = 2 * src[i]
        return 0

    @property
    def address(self):
        return ctypes.cast(self.fn, ctypes.c_void_p).value


def stub_plan(ext, shape=(2, 3, 4, 5), rows=7, strides=None):
    """A native plan over the stub: a mask kernel of 6 parameters (words, scratch, acc, key in
    slots 0, 1, 2, 4) and a product kernel of 5 (x, words, out in slots 0, 1, 2)."""
    n = 1
    for s in shape:
        n *= s
    stub = Stub({MASK_FN: 6, PROD_FN: 5}, n)
    strides = strides or list(torch.empty(shape).stride())
    plan = ext.make_plan([stub.address], False, 0, rows, strides,
                         MASK_FN, [3, 2, 1], 128, 64, [0, 0, 0, 11, 0, 12], [0, 1, 2, 4],
                         PROD_FN, [9, 1, 1], 256, 0, [0, 0, 0, 21, 22], [0, 1, 2])
    return plan, stub


def test_key_is_the_python_key(ext):
    for seed, offset in [(0, 0), (1, 2), (2 ** 64 - 1, 2 ** 40), (123456789, 4)]:
        assert ext.mix(seed, offset) == _triton._mix(seed, offset)


def test_launches_pass_the_buffers_key_and_tensors_in_their_slots(ext):
    plan, stub = stub_plan(ext)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = ext.call_key(plan, x, 77, 5000, 6000)
    assert len(stub.calls) == 2
    fn, grid, block, shared, stream, values = stub.calls[0]
    assert (fn, grid, block, shared, stream) == (MASK_FN, (3, 2, 1), (128, 1, 1), 64, None)
    words_ptr = values[0]
    assert values[1:] == [5000, 6000, 11, 77, 12]
    fn, grid, block, shared, _, values = stub.calls[1]
    assert (fn, grid, block, shared) == (PROD_FN, (9, 1, 1), (256, 1, 1), 0)
    assert values == [x.data_ptr(), words_ptr, y.data_ptr(), 21, 22]
    assert torch.equal(y, 2 * x.detach()) and y.requires_grad
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, 2 * g)
    fn, _, _, _, _, values = stub.calls[2]
    assert fn == PROD_FN and values[1] == words_ptr and values[2] == gx.data_ptr()
    assert plan.launches == 3


def test_double_backward_applies_the_product_again(ext):
    plan, stub = stub_plan(ext)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    g = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = ext.call_key(plan, x, 1, 0, 0)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    assert gx.requires_grad and torch.equal(gx, 2 * g.detach())
    v = torch.randn_like(gx)
    (gg,) = torch.autograd.grad(gx, g, v)
    assert torch.equal(gg, 2 * v)
    assert [c[0] for c in stub.calls] == [MASK_FN, PROD_FN, PROD_FN, PROD_FN]


def test_gradient_in_another_layout_is_copied_to_the_kernels(ext):
    plan, stub = stub_plan(ext)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = ext.call_key(plan, x, 1, 0, 0)
    g = torch.randn(2, 5, 4, 3).permute(0, 3, 2, 1)  # same shape, other strides
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, 2 * g) and gx.is_contiguous()
    read = stub.calls[-1][5][0]
    assert read != g.data_ptr()  # the kernel read a contiguous copy


def test_refusals(ext):
    plan, stub = stub_plan(ext)
    base = torch.randn(2 * 3 * 4 * 5 + 1)
    misaligned = base[1:].view(2, 3, 4, 5)
    assert ext.call(plan, misaligned, torch.Generator(), 0, 0) is None
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        ext.call_key(plan, misaligned, 1, 0, 0)
    # a generator without a Philox offset (the CPU's): the caller takes the Python path
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert ext.call(plan, torch.randn(2, 3, 4, 5), gen, 0, 0) is None
    assert torch.equal(gen.get_state(), state) and not stub.calls


@pytest.mark.skipif(torch.cuda.is_available(), reason=(
    "on the H200 image of 2026-11-28 (Python 3.12, torch 2.11) this test crashed the process "
    "(a segmentation fault after the stand-in launcher returned, built without frame "
    "pointers); cause not confirmed, see the issue note; the real launches' tests run there"))
def test_a_failing_launch_raises(ext):
    failing = LAUNCH(lambda *a: 700)
    plan = ext.make_plan([ctypes.cast(failing, ctypes.c_void_p).value], False, 0, 3, [1],
                         MASK_FN, [1, 1, 1], 32, 0, [0] * 5, [0, 1, 2, 4],
                         PROD_FN, [1, 1, 1], 32, 0, [0] * 3, [0, 1, 2])
    with pytest.raises(RuntimeError, match="cuLaunchKernel returned 700"):
        ext.call_key(plan, torch.randn(4), 1, 0, 0)


def test_a_thread_without_a_context_gets_the_plans(ext):
    """Before each launch the extension asks for the thread's current context and binds the
    plan's where there is none (autograd's device thread, when the extension's kernel is the
    first it runs), and leaves a thread with one alone."""
    current, bound = [0], []
    get = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))(
        lambda out: out.__setitem__(0, current[0]) or 0)
    put = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(lambda ctx: bound.append(ctx) or 0)
    stub = Stub({MASK_FN: 6, PROD_FN: 5}, 4)
    address = [ctypes.cast(f, ctypes.c_void_p).value for f in (stub.fn, get, put)]
    plan = ext.make_plan(address + [0xC0DE], False, 0, 3, [1], MASK_FN, [1, 1, 1], 32, 0,
                         [0] * 6, [0, 1, 2, 4], PROD_FN, [1, 1, 1], 32, 0, [0] * 5, [0, 1, 2])
    ext.call_key(plan, torch.randn(4), 1, 0, 0)
    assert bound == [0xC0DE, 0xC0DE]
    current[0] = 0xBEEF
    ext.call_key(plan, torch.randn(4), 1, 0, 0)
    assert bound == [0xC0DE, 0xC0DE] and len(stub.calls) == 4


def test_make_plan_checks_its_slots(ext):
    with pytest.raises(RuntimeError, match="dynamic parameter 3 has no slot"):
        ext.make_plan([1], False, 0, 3, [1], MASK_FN, [1, 1, 1], 32, 0, [0] * 3, [0, 1, 2, 4],
                      PROD_FN, [1, 1, 1], 32, 0, [0] * 3, [0, 1, 2])
    with pytest.raises(RuntimeError, match="driver: the address of cuLaunchKernel"):
        ext.make_plan([1, 2], False, 0, 3, [1], MASK_FN, [1, 1, 1], 32, 0, [0] * 5,
                      [0, 1, 2, 4], PROD_FN, [1, 1, 1], 32, 0, [0] * 3, [0, 1, 2])
    with pytest.raises(RuntimeError, match="grid must have 3"):
        ext.make_plan([1], False, 0, 3, [1], MASK_FN, [1, 1], 32, 0, [0] * 5, [0, 1, 2, 4],
                      PROD_FN, [1, 1, 1], 32, 0, [0] * 3, [0, 1, 2])


@pytest.fixture
def policy(monkeypatch):
    """_native's build state reset, with a stand-in build that waits for ``release``."""
    import threading
    release, built = threading.Event(), []
    monkeypatch.setattr(_native, "_MODULE", [])
    monkeypatch.setattr(_native, "_FAILED", [])
    monkeypatch.setattr(_native, "_THREAD", [])
    monkeypatch.setattr(_native, "ENABLED", True)
    monkeypatch.setattr(_native, "BACKGROUND", True)

    def load():
        assert release.wait(30)
        built.append(1)
        return "module"
    monkeypatch.setattr(_native, "_load", load)
    yield release, built
    release.set()  # the stand-in build ends before the real state comes back
    for thread in _native._THREAD:
        thread.join(30)


def test_default_build_runs_in_the_background(policy):
    """By default the first request starts one build in a thread and returns at once; calls
    meanwhile get None (the Python plan serves them); then the module."""
    release, built = policy
    assert _native.status() == "not built"
    assert _native.module() is None and _native.status() == "building"
    assert _native.module() is None and len(_native._THREAD) == 1
    release.set()
    assert _native.status(wait=True) == "ready" and built == [1]
    assert _native.module() == "module"


def test_asked_for_build_waits_and_off_means_off(policy, monkeypatch):
    release, built = policy
    release.set()
    monkeypatch.setattr(_native, "ENABLED", False)
    assert _native.module() is None and _native.status() == "off" and not built
    _native.enable(True)  # background=False: the caller waits for the build
    assert _native.module() == "module" and not _native._THREAD and built == [1]


def test_a_failed_build_switches_it_off(policy, monkeypatch):
    """A build that fails switches the extension off: quietly in the background (the status
    says why), with a warning when it was asked for."""
    def broken():
        raise OSError("no compiler")
    monkeypatch.setattr(_native, "_load", broken)
    _native.module()
    assert _native.status(wait=True) == "failed: building the extension failed: OSError: " \
        "no compiler"
    assert _native.module() is None
    monkeypatch.setattr(_native, "_FAILED", [])
    _native.enable(True)
    with pytest.warns(RuntimeWarning, match="native DropBlock calls off .*no compiler"):
        assert _native.module() is None


def test_a_plan_made_while_building_attaches_later(policy, monkeypatch):
    """A plan made while the extension builds keeps its compiled kernels; the first call after
    the build attaches the native plan (here a stand-in: the call then goes on as before)."""
    from structdrop_tutorial.torch import _prepared
    plan = types.SimpleNamespace(native=None, pending=None)
    _native.attach(plan, None, "mask kernel", "product kernel")
    assert plan.pending == ("mask kernel", "product kernel") and plan.native is None
    seen = []
    monkeypatch.setattr(_native, "attach", lambda p, x, m, k: seen.append((p, x, m, k)) or
                        setattr(p, "pending", None))
    plan.index, plan.device, plan.generator = None, torch.device("cpu"), None
    monkeypatch.setattr(_prepared, "mask_words", lambda p, key: "words")
    monkeypatch.setattr(_prepared, "_APPLY", lambda x, words, p, inplace: (x, words))
    monkeypatch.setattr(_triton, "new_key", lambda device, gen, eager: 0)
    x = torch.zeros(2)
    assert _prepared.dropblock(plan, x, None, False) == (x, "words")
    assert not seen  # still building
    _native._MODULE.append("module")
    assert _prepared.dropblock(plan, x, None, False) == (x, "words")
    assert seen == [(plan, x, "mask kernel", "product kernel")] and plan.pending is None
    _prepared.dropblock(plan, x, None, False)
    assert len(seen) == 1


class FakeModule:
    """A stand-in for the built extension: ``make_plan`` records, ``call_key`` returns
    ``result`` (or raises it)."""

    def __init__(self, result):
        self.result, self.made = result, []

    def make_plan(self, *args):
        self.made.append(args)
        return "native plan"

    def call_key(self, native, ones, key, scratch, acc):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result(ones)


def attach_with(monkeypatch, result, device=0, capturing=False):
    """``_native.attach`` of a stand-in plan on a stand-in GPU whose Python plan writes
    ``2 * ones``; the extension's output is ``result(ones)``. Returns the plan."""
    from structdrop_tutorial.torch import _prepared
    fake = FakeModule(result)
    monkeypatch.setattr(_native, "_MODULE", [fake])
    monkeypatch.setattr(_native, "_FAILED", [])
    monkeypatch.setattr(_native, "ENABLED", True)
    monkeypatch.setattr(_native, "driver", lambda: [1, 2, 3, 4])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: device)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    monkeypatch.setattr(_triton, "_row_state", lambda *a: (torch.zeros(1), torch.zeros(4)))
    monkeypatch.setattr(_prepared, "mask_words", lambda plan, key: torch.zeros(3))
    monkeypatch.setattr(_prepared, "product", lambda plan, x, words, out: out.copy_(2 * x))
    plan = types.SimpleNamespace(
        index=0, device=torch.device("cpu"), scratch=4, rows=2, strides=(5, 1),
        mask_tail=(7,), mask_grid=(1, 1, 1), prod_tail=(9,), prod_grid=(2, 1, 1))
    mask = fake_compiled({"w": "*i64", "s": "*i64", "a": "*i64", "kp": "constexpr",
                          "key": "i64", "t": "i32", "KEY_PTR": "constexpr"})
    prod = fake_compiled({"x": "*fp32", "w": "*i64", "o": "*fp32", "n": "i32"})
    _native.attach(plan, torch.zeros(2, 5), mask, prod)
    return plan, fake


def test_attach_keeps_a_native_plan_that_matches(monkeypatch):
    plan, fake = attach_with(monkeypatch, lambda ones: 2 * ones)
    assert plan.native == "native plan" and plan.pending is None and not _native._FAILED
    assert fake.made[0][0] == [1, 2, 3, 4] and fake.made[0][3] == 2  # driver, rows


def test_attach_switches_off_on_another_output_or_a_failed_launch(monkeypatch):
    """A check that does not match, or whose launch fails, switches the extension off for every
    plan, with a warning."""
    for result, why in ((lambda ones: 3 * ones, "differed from the Python plan"),
                        (RuntimeError("cuLaunchKernel returned 1"), "launch failed")):
        with pytest.warns(RuntimeWarning, match="native DropBlock calls off"):
            plan, _ = attach_with(monkeypatch, result)
        assert plan.native is None and why in _native._FAILED[0]
        assert not _native.ENABLED and _native.module() is None
        assert _native.status().startswith("failed: ")


def test_attach_waits_for_an_eager_call_on_the_plans_device(monkeypatch):
    """Made on another current device or while a CUDA graph is captured, a plan keeps its
    kernels for a later planned call (which runs on its device, eagerly) instead of checking
    (launching and waiting) there."""
    for device, capturing in ((1, False), (0, True)):
        plan, fake = attach_with(monkeypatch, lambda ones: 2 * ones, device, capturing)
        assert plan.native is None and plan.pending is not None and not fake.made
        assert not _native._FAILED


def test_the_real_build_clears_a_stale_lock(tmp_path, monkeypatch):
    """``_load`` builds in a child process into PyTorch's cache, after removing a lock file
    that a killed build left (older than STALE_LOCK_S), and imports the module."""
    from torch.utils import cpp_extension
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        pytest.skip(f"cannot build C++ extensions here: {exc}")
    import os
    import time
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / _native.NAME / "lock"
    lock.parent.mkdir()
    lock.write_text("")
    old = time.time() - _native.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    mod = _native._load()
    assert not lock.exists() and mod.mix(5, 6) == _triton._mix(5, 6)


def fake_compiled(signature, num_warps=4, shared=0):
    return types.SimpleNamespace(src=types.SimpleNamespace(signature=signature), function=99,
                                 metadata=types.SimpleNamespace(num_warps=num_warps,
                                                                shared=shared, num_ctas=1))


def test_slots_pack_each_parameter_type():
    sig = {"a": "*fp32", "b": "*i64", "c": "i32", "d": "fp32", "e": "constexpr", "f": "i64",
           "g": "i1", "h": "fp64", "k": "u32"}
    values, where, sizes = _native.slots(fake_compiled(sig), (None, 4096, -1, 0.5, 7, 2 ** 62,
                                                               True, -2.0, 5), (0,))
    assert where == [0] and sizes == [8, 8, 4, 4, 8, 1, 8, 4, 8, 8]
    assert values == [0, 4096, 2 ** 32 - 1,
                      int.from_bytes(struct.pack("<f", 0.5), "little"), 2 ** 62, 1,
                      int.from_bytes(struct.pack("<d", -2.0), "little"), 5, 0, 0]
    spec = _native.kernel_spec(fake_compiled(sig, 8, 1024), (None, 4096, -1, 0.5, 7, 2 ** 62,
                                                              True, -2.0, 5), (0,), (3, 1, 1))
    assert spec[:4] == (99, [3, 1, 1], 256, 1024)


def test_slots_refuse_what_they_cannot_pass():
    with pytest.raises(ValueError, match="dynamic argument b is a constant"):
        _native.slots(fake_compiled({"a": "*fp32", "b": "constexpr"}), (None, None), (1,))
    with pytest.raises(ValueError, match="type this launcher does not know: fp8e4nv"):
        _native.slots(fake_compiled({"a": "fp8e4nv"}), (1.0,), ())
    with pytest.raises(ValueError, match="2 arguments for 1 parameters"):
        _native.slots(fake_compiled({"a": "i32"}), (1, 2), ())
    with pytest.raises(ValueError, match="clusters"):
        c = fake_compiled({"a": "i32"})
        c.metadata.num_ctas = 2
        _native.kernel_spec(c, (1,), (), (1, 1, 1))


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="native launches need a GPU")


def _gpu_run(x, g, native, **kw):
    """Output, gradient and generator offset of one public call, native on or off (plans made
    afresh, the native plan with them; the build waited for)."""
    from structdrop_tutorial import torch as sdt
    from structdrop_tutorial.torch import _prepared
    _prepared.clear()
    _native.enable(native)
    try:
        for _ in range(3):  # compile, then plan (with its native plan when on)
            sdt.dropblock(x, **kw)
        plans = list(_prepared._PLANS.values())
        assert len(plans) == 1 and (plans[0].native is not None) == native
        used = plans[0].native.launches if native else None
        gen = torch.Generator(device="cuda").manual_seed(11)
        xx = x.detach().clone().requires_grad_()
        y = sdt.dropblock(xx, seed=gen, **kw)
        (gx,) = torch.autograd.grad(y, xx, g)
        if native:
            assert plans[0].native.launches == used + 3
        return y.detach(), gx, gen.get_offset()
    finally:
        _native.ENABLED = False
        _prepared.clear()


@needs_gpu
@pytest.mark.parametrize("shape, dtype, normalize, layout", [
    ((32, 64, 14, 14), torch.float32, "batch", "contiguous"),
    ((4, 8, 28, 28), torch.float16, "rate", "contiguous"),
    ((2, 3, 6, 20, 20), torch.bfloat16, "batch", "contiguous"),
    ((3, 5, 40), torch.float64, "batch", "contiguous"),
    ((4, 16, 28, 28), torch.float32, "batch", "channels_last"),
])
def test_native_calls_equal_python_plans(shape, dtype, normalize, layout):
    """On a GPU: the native call gives the Python plan's output, gradient and generator offset
    bit for bit, for each dtype and for channels_last memory."""
    x = torch.randn(shape, device="cuda").to(dtype)
    g = torch.randn(shape, device="cuda").to(dtype)
    if layout == "channels_last":
        x, g = x.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
    kw = dict(rate=0.1, block_size=7, normalize=normalize)
    native, python = _gpu_run(x, g, True, **kw), _gpu_run(x, g, False, **kw)
    assert not _native._FAILED
    assert torch.equal(native[0], python[0]) and torch.equal(native[1], python[1])
    assert native[2] == python[2]


@needs_gpu
def test_native_double_backward_and_global_generator():
    """On a GPU: double backward through the native call matches the Python plan's (whose
    second pass uses tensor operations: equal to rounding), and calls without ``seed`` follow
    ``torch.manual_seed`` as the Python plan's do."""
    from structdrop_tutorial import torch as sdt
    from structdrop_tutorial.torch import _prepared
    x = torch.randn(8, 16, 14, 14, device="cuda")
    out = {}
    for native in (True, False):
        _prepared.clear()
        _native.enable(native)
        try:
            for _ in range(3):
                sdt.dropblock(x, 0.1, 5)
            torch.manual_seed(3)
            xx = x.clone().requires_grad_()
            g = torch.randn_like(x).requires_grad_()
            y = sdt.dropblock(xx, 0.1, 5)
            (gx,) = torch.autograd.grad(y, xx, g, create_graph=True)
            (gg,) = torch.autograd.grad(gx.square().sum(), g)
            out[native] = (y.detach(), gx.detach(), gg)
        finally:
            _native.ENABLED = False
            _prepared.clear()
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    torch.testing.assert_close(out[True][2], out[False][2])


FRESH = """
import torch
from structdrop_tutorial import torch as sdt
from structdrop_tutorial.torch import _native, _prepared
_native.enable()
x = torch.randn(8, 16, 14, 14, device="cuda")
for _ in range(3):  # no backward pass yet: autograd's device thread has run nothing
    sdt.dropblock(x, 0.1, 5)
plan = next(iter(_prepared._PLANS.values()))
assert plan.native is not None, _native._FAILED
xx = x.clone().requires_grad_()
(gx,) = torch.autograd.grad(sdt.dropblock(xx, 0.1, 5), xx, torch.ones_like(x))
torch.cuda.synchronize()
assert plan.native.launches == 7, plan.native.launches  # check 2, call 2, step 3
print("ok")
"""


@needs_gpu
def test_a_fresh_process_whose_first_backward_is_native():
    """On a GPU: in a new process whose first backward pass is the native one, autograd's
    device thread has no CUDA context yet; the launch binds the device's (without it the
    driver refused the launch there)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_native_extension_builds_now_where_cuda_is(policy, monkeypatch):
    """``native_extension()``: without CUDA it builds nothing and reports the state; with CUDA
    it waits for the build (here the stand-in's)."""
    release, built = policy
    release.set()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _native.native_extension() == "not built" and not built
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _native.native_extension(wait=False) in ("building", "ready")
    assert _native.native_extension() == "ready" and built == [1]


def test_backward_under_compiled_autograd(ext):
    """The native node saves its plan's number, which compiled autograd can hash (a capsule it
    could not): a backward pass traced by compiled autograd gives the eager gradient."""
    from torch._dynamo import compiled_autograd
    plan, stub = stub_plan(ext)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = ext.call_key(plan, x, 1, 0, 0)
    with compiled_autograd._enable(torch.compile(backend="eager")):
        y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    assert [c[0] for c in stub.calls] == [MASK_FN, PROD_FN, PROD_FN]
