"""Direct Triton launches (structdrop_tutorial.torch._launch): the first launch of a key goes
through Triton and keeps the compiled kernel, later ones call its launcher with the same
arguments. Without a GPU the logic is checked with a stand-in kernel; on a GPU the DropBlock
path is compared with and without direct launches."""
import pytest

torch = pytest.importorskip("torch")
from structdrop_tutorial.torch import _launch  # noqa: E402


class Launcher:
    """Triton 3.6's CudaLauncher as far as _launch uses it: the C ``launch`` (when no scratch
    memory is needed) and ``__call__``."""
    launch_cooperative_grid = False
    launch_pdl = False

    def __init__(self, calls, scratch=0, fail=False):
        self.calls, self.global_scratch_size, self.profile_scratch_size = calls, scratch, 0
        self.fail = fail

    def launch(self, *args):
        if self.fail:
            raise TypeError("function takes exactly 40 arguments (41 given)")
        self.calls.append(("direct",) + args)

    def __call__(self, *args):
        self.calls.append(("run",) + args)


class Compiled:
    packed_metadata = ("meta",)
    function = "fn"

    def __init__(self, calls, **launcher):
        self.run = Launcher(calls, **launcher)


class Kernel:
    """Records ``kernel[grid](*args)`` calls and returns its one compiled kernel."""

    def __init__(self, **launcher):
        self.calls = []
        self.compiled = Compiled(self.calls, **launcher)
        self.warmups = 0

    def __getitem__(self, grid):
        def call(*args, num_warps):
            self.calls.append(("triton", grid, args, num_warps))
            return self.compiled
        return call

    def warmup(self, *args, grid, num_warps):
        self.warmups += 1
        return self.compiled


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(_launch, "_COMPILED", {})
    monkeypatch.setattr(_launch, "_BROKEN", [])
    monkeypatch.setattr(_launch, "DIRECT", True)
    monkeypatch.setattr(_launch, "VERIFY", False)
    monkeypatch.setattr(_launch, "_ordinary_only", lambda: False)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: False)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)


def test_later_launches_of_a_key_are_direct(fake_gpu):
    k = Kernel()
    _launch.launch(k, (3,), ("a", 1), ("x", 5, 7), 4)
    _launch.launch(k, (6, 2), ("a", 1), ("y", 5, 7), 4)
    _launch.launch(k, (1, 2, 3), ("a", 1), ("z",), 4)
    lead = ("fn", False, False, None, None, ("meta",), None, None, None)
    assert k.calls == [("triton", (3,), ("x", 5, 7), 4),
                       ("direct", 6, 2, 1, 1234) + lead + ("y", 5, 7),
                       ("direct", 1, 2, 3, 1234) + lead + ("z",)]


def test_kernels_needing_scratch_memory_use_the_launchers_call(fake_gpu):
    k = Kernel(scratch=256)
    _launch.launch(k, (3,), ("a",), ("x",), 4)
    _launch.launch(k, (3,), ("a",), ("y",), 4)
    assert k.calls[1] == ("run", 3, 1, 1, 1234, "fn", ("meta",), None, None, None, "y")


def test_other_keys_warps_or_devices_go_through_triton(fake_gpu, monkeypatch):
    k = Kernel()
    _launch.launch(k, (1,), ("a",), (), 4)
    _launch.launch(k, (1,), ("b",), (), 4)
    _launch.launch(k, (1,), ("a",), (), 8)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 1, raising=False)
    _launch.launch(k, (1,), ("a",), (), 4)
    assert [c[0] for c in k.calls] == ["triton"] * 4


def test_switched_off_interpreted_or_hooked_launches_go_through_triton(fake_gpu, monkeypatch):
    k = Kernel()
    _launch.launch(k, (1,), ("a",), (), 4)
    monkeypatch.setattr(_launch, "DIRECT", False)
    _launch.launch(k, (1,), ("a",), (), 4)
    monkeypatch.setattr(_launch, "DIRECT", True)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: True)
    _launch.launch(k, (1,), ("a",), (), 4)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: False)
    monkeypatch.setattr(_launch, "_ordinary_only", lambda: True)
    _launch.launch(k, (1,), ("a",), (), 4)
    assert [c[0] for c in k.calls] == ["triton"] * 4


def test_a_failing_first_direct_launch_switches_direct_launches_off(fake_gpu):
    """A launcher that rejects the arguments (another Triton's internals): one warning, the
    call goes through Triton, and so does every later one."""
    k = Kernel(fail=True)
    _launch.launch(k, (1,), ("a",), ("x",), 4)
    with pytest.warns(RuntimeWarning, match="direct Triton launches failed"):
        _launch.launch(k, (1,), ("a",), ("y",), 4)
    _launch.launch(k, (1,), ("a",), ("z",), 4)
    assert [c[0] for c in k.calls] == ["triton"] * 3 and _launch._BROKEN


def test_verify_compares_with_tritons_choice(fake_gpu, monkeypatch):
    monkeypatch.setattr(_launch, "VERIFY", True)
    k = Kernel()
    _launch.launch(k, (1,), ("a",), (), 4)
    _launch.launch(k, (1,), ("a",), (), 4)
    assert k.warmups == 1 and [c[0] for c in k.calls] == ["triton", "direct"]
    k.compiled = Compiled(k.calls)  # Triton would now pick another kernel for these arguments
    with pytest.raises(AssertionError, match="launch key"):
        _launch.launch(k, (1,), ("a",), (), 4)


def test_prepared_launchers_once_launched_directly(fake_gpu, monkeypatch):
    """prepared() hands out a key's C launcher only after a direct launch of it went through,
    for that key, warps and device; not for launchers needing scratch memory, nor with direct
    launches off; clear() and a failed first launch change GENERATION."""
    k = Kernel()
    assert _launch.prepared(k, 4, 0, ("a",)) is None
    _launch.launch(k, (1,), ("a",), ("x",), 4)
    assert _launch.prepared(k, 4, 0, ("a",)) is None  # compiled, not launched directly yet
    _launch.launch(k, (1,), ("a",), ("y",), 4)
    run, lead, ints = _launch.prepared(k, 4, 0, ("a",))
    assert ints and run == k.compiled.run.launch
    run(5, 1, 1, 99, *lead, "z")
    assert k.calls[-1] == ("direct", 5, 1, 1, 99) + lead + ("z",)
    for other in [(k, 8, 0, ("a",)), (k, 4, 1, ("a",)), (k, 4, 0, ("b",))]:
        assert _launch.prepared(*other) is None
    s = Kernel(scratch=256)
    for arg in ("x", "y"):
        _launch.launch(s, (1,), ("a",), (arg,), 4)
    assert _launch._COMPILED[(s, 4, 0, "a")][3] and _launch.prepared(s, 4, 0, ("a",)) is None
    monkeypatch.setattr(_launch, "DIRECT", False)
    assert _launch.prepared(k, 4, 0, ("a",)) is None
    monkeypatch.setattr(_launch, "DIRECT", True)
    generation = _launch.GENERATION
    _launch.clear()
    assert _launch.GENERATION == generation + 1 and _launch.prepared(k, 4, 0, ("a",)) is None
    bad = Kernel(fail=True)
    with pytest.warns(RuntimeWarning):
        for arg in ("x", "y"):
            _launch.launch(bad, (1,), ("a",), (arg,), 4)
    assert _launch.GENERATION == generation + 2


def test_kept_kernels_are_capped(fake_gpu, monkeypatch):
    """Keys that keep changing (a threshold under a rate schedule) do not pile up: past
    _MAX_COMPILED entries the kept kernels start again."""
    monkeypatch.setattr(_launch, "_MAX_COMPILED", 3)
    k = Kernel()
    for value in range(7):
        _launch.launch(k, (1,), ("a", value), (), 4)
        assert len(_launch._COMPILED) == value % 3 + 1


def test_ready_and_interpreted_launchers(fake_gpu, monkeypatch):
    """ready() is False where launch() would not launch directly (off, verified, hooked,
    broken); under the interpreter prepared() is an ordinary launch over a 3-D grid."""
    assert _launch.ready()
    for name, value in [("DIRECT", False), ("VERIFY", True), ("_BROKEN", ["x"]),
                        ("_hooks_installed", lambda: True)]:
        with monkeypatch.context() as m:
            m.setattr(_launch, name, value)
            assert not _launch.ready(), name
    monkeypatch.setattr(_launch, "_ordinary_only", lambda: True)
    assert _launch.ready()
    k = Kernel()
    run, lead, ints = _launch.prepared(k, 2, None, ("never launched",))
    assert lead == () and not ints
    run(3, 2, 1, 0, "x", 5)
    assert k.calls == [("triton", (3, 2, 1), ("x", 5), 2)]


def test_the_product_block_is_part_of_the_launch_key(fake_gpu, monkeypatch):
    """Changing ``_triton.APPLY_BLOCK`` (``gpu_tune.py`` sweeps it) makes both product kernels
    compile again. With the block left out of the key, the kernel compiled for the old block
    was launched over the new block's grid, which leaves part of the output unwritten (seen in
    a sweep on an H200)."""
    from types import SimpleNamespace

    from structdrop_tutorial.torch import _triton
    kernels = SimpleNamespace(masked_rows_kernel=Kernel(), masked_scale_kernel=Kernel())
    monkeypatch.setattr(_triton, "_kernels", lambda: kernels)
    x = torch.randn(2, 3, 64, 64)  # 24,576 units: 12 programs of 2048, 6 of 4096
    out = torch.empty_like(x)
    words = torch.zeros(2 * 3 * 64 + 1, dtype=torch.int64)  # the row words, then the count
    keep, count = torch.ones(x.shape, dtype=torch.bool), torch.ones(1, dtype=torch.int64)
    for block in (2048, 2048, 4096, 4096):
        monkeypatch.setattr(_triton, "APPLY_BLOCK", block)
        _triton._apply(x, words, None, True, out)
        _triton._apply(x, keep, count, True, out)
    for k in (kernels.masked_rows_kernel, kernels.masked_scale_kernel):
        assert [c[0] for c in k.calls] == ["triton", "direct", "triton", "direct"]
        assert [c[1] for c in k.calls] == [(12,), 12, (6,), 6]  # grids of 2048 and 4096


@pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launches need a GPU")
def test_dropblock_with_direct_launches_equals_triton_launches(monkeypatch):
    """On a GPU: forward and gradient with direct launches (checked against Triton's own
    lookup) equal those with ordinary launches, for the same seed; both mask kinds."""
    pytest.importorskip("triton")
    from structdrop_tutorial import torch as sdt
    from structdrop_tutorial.torch import _triton
    monkeypatch.setattr(_launch, "VERIFY", True)
    for shape in [(4, 8, 14, 14), (2, 3, 100, 90), (2, 3, 6, 20, 20)]:
        x = torch.randn(shape, device="cuda", requires_grad=True)
        results = []
        for direct in (False, True, True):  # the first direct call compiles, the second is direct
            monkeypatch.setattr(_launch, "DIRECT", direct)
            out = sdt.dropblock(x, 0.2, 5, seed=7)
            (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
            results.append((out, grad))
        for out, grad in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    assert not _launch._BROKEN and not _triton._FAILED
    # every kernel these calls use was launched directly at least once (the first-use check's
    # byte-mask launch of a row-word geometry may stay the only launch of its entry)
    k = _triton._kernels()
    direct = {full[0] for full, entry in _launch._COMPILED.items() if entry[3]}
    assert {k.dropblock_rows_kernel, k.masked_rows_kernel, k.dropblock_mask_kernel,
            k.masked_scale_kernel} <= direct


@pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launches need a GPU")
def test_product_after_the_block_changed_writes_every_unit(monkeypatch):
    """On a GPU: after ``APPLY_BLOCK`` grows, both product kernels still write every unit of
    the output (a buffer of NaNs beforehand), the same values as with the default block."""
    pytest.importorskip("triton")
    from structdrop_tutorial.torch import _triton
    monkeypatch.setattr(_launch, "DIRECT", True)
    monkeypatch.setattr(_launch, "VERIFY", False)  # the output itself is the check here
    shape, block = (4, 64, 14, 14), (3, 3)
    x = torch.randn(shape, device="cuda")
    words, count = _triton.row_words(shape, "cuda", 0.05, block, "valid", 11)
    buffer = torch.cat([words, count])
    keep, kept = _triton.keep_mask(shape, "cuda", 0.05, block, "valid", 11)
    default = _triton.APPLY_BLOCK
    try:
        for mask, param in ((buffer, None), (keep, kept)):
            results = []
            for size in (default, default, 2 * default, 2 * default, 4 * default):
                _triton.APPLY_BLOCK = size  # a first launch compiles, the next is direct
                out = torch.full_like(x, float("nan"))
                results.append(_triton._apply(x, mask, param, True, out))
            assert not results[0].isnan().any()
            for out in results[1:]:
                assert torch.equal(out, results[0])
    finally:
        _triton.APPLY_BLOCK = default
