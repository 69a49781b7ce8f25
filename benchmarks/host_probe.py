"""Where the host's time goes in an eager DropBlock forward+backward on a GPU.

On a GPU the package's DropBlock costs the device about one floor (``x * mask`` forward and
backward; see ``bench_torch.py``'s graph pass), but called eagerly it waits on the host. This
script times the host's pieces and the alternatives that could replace them, each as
microseconds of wall time per call on a tiny input (the device idle, so the host is what is
measured), and then whole eager forward+backward steps at the three ResNet-50 shapes as ratios to
the floor measured in the same run:

* the autograd machinery: a native multiply forward+backward, an ``autograd.Function`` whose
  backward is a native multiply or returns its gradient unchanged, each also with autograd's
  worker threads off (``torch.autograd.set_multithreading_enabled(False)``);
* Triton launches through ``kernel[grid]`` against direct launches (``_launch.DIRECT``), for the
  product kernel, the mask kernel, the autograd function and the whole call;
* the key drawn on the device against the one ``new_key`` makes on the host from the generator's
  seed and offset;
* the row-word kernel's shared accumulator and scratch against a zeroed counter and a scratch
  allocation per call (what every call did before the accumulator; ``_fresh_state``);
* native ops that have their own backward: ``aten::_masked_scale`` (a byte mask and a scale
  known on the host) and ``(x * keep) * scale`` with the scale a device scalar;
* calls through the ordinary path against prepared calls (``_prepared``: a plan kept per
  signature launches the kernels without the per-call checks and lookups);
* at full size: with autograd's worker threads off, with each output (and its autograd graph)
  kept alive to the next step, the planned product alone on given row words, the forward
  alone, and inputs in channels_last memory format; and whether any piece of a call waits for
  the device: each timed on the host while the device still has queued work
  (``host_us_device_busy``; none did in the committed probe). ``eager_parts.py`` builds the
  full-size step up part by part.

``--stub`` measures the ordinary and the prepared calls without a GPU: on the CPU, with the
compiled launchers replaced by no-ops (and the key made on the host as on CUDA), only the host's
Python, autograd and allocation costs of a DropBlock forward and forward+backward are timed,
against the floor's.

Usage::

    python benchmarks/host_probe.py --out host_probe.json   # on a CUDA machine
    python benchmarks/host_probe.py --stub                  # anywhere: host cost only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _launch, _native, _prepared, _triton, functional  # noqa: E402

SHAPES = [(32, 1024, 14, 14), (32, 512, 28, 28), (16, 256, 56, 56)]
BLOCK, RATE = 7, 0.1


def _sync(dev):
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def loop_us(fn, dev, n):
    """Wall microseconds per call of ``n`` calls, the device synchronized at both ends."""
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / n * 1e6


def interleaved_us(cases, dev, rounds, n, warmup=20):
    """Case name -> median microseconds per call of ``cases`` (name -> callable): each case
    warmed up ``warmup`` times, then ``rounds`` rounds that time every case in turn with
    :func:`loop_us` (interleaved, so that a busy spell of the machine hits every case)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(loop_us(fn, dev, n))
    return {name: round(statistics.median(ts), 2) for name, ts in times.items()}


def wall_us(fn, dev, n=300, repeats=3):
    """Median over ``repeats`` of :func:`loop_us` after 20 calls of warm-up (the host's cost
    when the work is small)."""
    for _ in range(20):
        fn()
    times = sorted(loop_us(fn, dev, n) for _ in range(repeats))
    return times[len(times) // 2]


def _setting(module, name, value):
    """A wrapper that runs ``fn`` with ``module.name`` set to ``value`` (restored after)."""
    def wrap(fn):
        def call():
            saved = getattr(module, name)
            setattr(module, name, value)
            try:
                return fn()
            finally:
                setattr(module, name, saved)
        return call
    return wrap


def _direct(flag):
    """Run with direct launches (``_launch.DIRECT``) on or off."""
    return _setting(_launch, "DIRECT", flag)


def _planned(flag):
    """Run with prepared calls (``_prepared.ENABLED``) on or off."""
    return _setting(_prepared, "ENABLED", flag)


def _fresh_state(fn):
    """``fn`` with the row-word kernel given a zeroed counter and scratch per call (as while a
    CUDA graph is captured) instead of the accumulator and scratch kept per stream."""
    def call():
        real = _triton._row_state
        _triton._row_state = lambda device, scratch, eager: real(device, scratch, False)
        try:
            return fn()
        finally:
            _triton._row_state = real
    return call


class NativeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m):
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return grad * m, None


class PassBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m):
        return x * m

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def gamma_of(shape):
    """The seed probability of the benchmark's DropBlock at ``shape``."""
    return functional._dropblock_plan(shape, RATE, BLOCK, "channels_first", "exact", "valid",
                                      (), "batch")[4]


def _fwd_bwd(fn, x, g):
    return lambda: torch.autograd.grad(fn(x), x, g)


def _kept(fn, x, g):
    """Forward+backward of ``fn`` whose output (with its autograd graph) lives until the next
    call, so that the graph is destroyed on the calling thread, not on autograd's."""
    kept = []

    def call():
        y = fn(x)
        out = torch.autograd.grad(y, x, g)
        kept[:] = [y]
        return out
    return call


def _planned_step(step, x):
    """Run ``step`` (a DropBlock forward+backward of ``x``) until its signature has a plan
    (made on the second ordinary call); the plan, or None where none is made."""
    for _ in range(3):
        step()
    return _prepared._PLANS.get(_prepared._key(x, RATE, BLOCK, "channels_first", "exact",
                                               "valid", "batch"))


def _single_threaded(fn):
    def call():
        with torch.autograd.set_multithreading_enabled(False):
            return fn()
    return call


def pieces(dev, n):
    x = torch.randn(1, 1, 16, 16, device=dev, requires_grad=True)
    g = torch.ones_like(x)
    m = torch.ones_like(x)
    keep = m.bool()
    s0 = torch.tensor(1.25, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    shape, block = tuple(x.shape), (BLOCK, BLOCK)
    gamma = gamma_of(shape)
    key = _triton.new_key(torch.device(dev), gen)
    rgeo = _triton.row_geometry(shape, block, "valid", _triton.ROW_ITEMS)
    words = _triton._row_buffer(rgeo, torch.device(dev), gamma, key)  # words, then the count
    out_ = torch.empty_like(x)
    jit, direct = _direct(False), _direct(True)
    cases = {
        "native x*m fwd": lambda: x * m,
        "native x*m fwd+bwd": _fwd_bwd(lambda t: t * m, x, g),
        "Function, native backward, fwd+bwd": _fwd_bwd(lambda t: NativeBackward.apply(t, m), x, g),
        "Function, backward returns grad, fwd+bwd": _fwd_bwd(lambda t: PassBackward.apply(t, m), x, g),
    }
    for name in list(cases):
        if "fwd+bwd" in name:
            cases[name + ", single-threaded autograd"] = _single_threaded(cases[name])
    for tag, wrap in (("triton[grid]", jit), ("direct", direct)):
        cases.update({
            f"product launch, {tag}": wrap(lambda: _triton._apply(x.detach(), words, None, True, out_)),
            f"row-word mask kernel + buffers, {tag}": wrap(lambda: _triton._row_buffer(rgeo, torch.device(dev), gamma, key)),
            f"MaskedScale fwd+bwd, {tag}": wrap(_fwd_bwd(
                lambda t: _triton.MaskedScale.apply(t, words, None, True, False), x, g)),
            f"dropblock fwd, {tag}": _planned(False)(wrap(
                lambda: sdt.dropblock(x.detach(), RATE, BLOCK, seed=gen))),
            f"dropblock fwd+bwd, {tag}": _planned(False)(wrap(_fwd_bwd(
                lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g))),
        })
    cases.update({
        "dropblock fwd, prepared": lambda: sdt.dropblock(x.detach(), RATE, BLOCK, seed=gen),
        "dropblock fwd+bwd, prepared": _fwd_bwd(
            lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g),
    })
    cases.update({
        "row-word mask kernel + buffers, direct, counter and scratch per call": _fresh_state(
            lambda: _triton._row_buffer(rgeo, torch.device(dev), gamma, key)),
        "dropblock fwd+bwd, direct, counter and scratch per call": _planned(False)(_fresh_state(
            _fwd_bwd(lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g))),
    })
    cases.update({
        "key: drawn on the device, empty(1).random_": lambda: torch.empty(
            1, dtype=torch.int64, device=dev).random_(generator=gen),
        "key: new_key (on the host from seed and offset where it can)": lambda: _triton.new_key(
            torch.device(dev), gen),
        "counter: zeros(1)": lambda: torch.zeros(1, dtype=torch.int64, device=dev),
        "empty_like(x)": lambda: torch.empty_like(x),
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "torch.compiler.is_compiling": torch.compiler.is_compiling,
        "_masked_scale(x, uint8 mask, float) fwd+bwd": _fwd_bwd(
            lambda t: torch.ops.aten._masked_scale(t, keep.view(torch.uint8), 1.25), x, g),
        "(x * bool) * scale tensor fwd+bwd": _fwd_bwd(lambda t: (t * keep) * s0, x, g),
    })
    out = _timed(cases, dev, n)
    for name, us in out.items():
        print(f"{name:58s} {us}", flush=True)
    return out


def _timed(cases, dev, n):
    """name -> microseconds per call, or the error of a case this device or build lacks."""
    out = {}
    for name, fn in cases.items():
        try:
            out[name] = round(wall_us(fn, dev, n), 2)
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return out


def steps(dev, n, shapes):
    """Eager forward+backward per call at each shape, and as a ratio to the floor."""
    res = {}
    for shape in shapes:
        x = torch.randn(shape, device=dev, requires_grad=True)
        g = torch.randn_like(x)
        mask = (torch.rand_like(x) > 0.1).to(x.dtype)
        keep = mask.bool()
        s0 = torch.tensor(1.1, device=dev)
        gen = torch.Generator(device=dev).manual_seed(0)
        key = _triton.new_key(torch.device(dev), gen)
        rgeo = _triton.row_geometry(shape, (BLOCK, BLOCK), "valid", _triton.ROW_ITEMS)
        words = _triton._row_buffer(rgeo, torch.device(dev), gamma_of(shape), key)
        prepared = _fwd_bwd(lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g)
        plan = _planned_step(prepared, x)
        cases = {
            "floor x*mask": _fwd_bwd(lambda t: t * mask, x, g),
            "dropblock, triton[grid]": _direct(False)(_fwd_bwd(
                lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g)),
            "dropblock, direct": _planned(False)(_direct(True)(_fwd_bwd(
                lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g))),
            "dropblock, prepared": _fwd_bwd(
                lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g),
            "dropblock, direct, counter and scratch per call": _planned(False)(_fresh_state(
                _fwd_bwd(lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g))),
            "MaskedScale only (mask given), direct": _direct(True)(_fwd_bwd(
                lambda t: _triton.MaskedScale.apply(t, words, None, True, False), x, g)),
            "_masked_scale(x, uint8 mask, float) (mask given)": _fwd_bwd(
                lambda t: torch.ops.aten._masked_scale(t, keep.view(torch.uint8), 1.1), x, g),
            "(x * bool) * scale tensor (mask given)": _fwd_bwd(lambda t: (t * keep) * s0, x, g),
            # where does a full-size eager step lose the overlap of host and device that the
            # floor keeps? The autograd engine's device thread, Python's destruction of the
            # output's graph (kept alive to the next step here), the planned product alone
            "floor x*mask, single-threaded autograd": _single_threaded(
                _fwd_bwd(lambda t: t * mask, x, g)),
            "dropblock, prepared, single-threaded autograd": _single_threaded(prepared),
            "dropblock, prepared, output kept to the next step": _kept(
                lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g),
        }
        # the forward alone (no autograd): the host's and the device's share of a step
        xd = x.detach()
        cases["floor x*mask fwd only"] = lambda: xd * mask
        cases["dropblock fwd only, prepared"] = lambda: sdt.dropblock(xd, RATE, BLOCK, seed=gen)
        # channels_last memory format: the own product kernel (the committed probes measured
        # the copy route, before it; channels_last_torch.py times both)
        xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        mc = mask.contiguous(memory_format=torch.channels_last)
        cases["floor x*mask, channels_last"] = _fwd_bwd(lambda t: t * mc, xc, g)
        cases["dropblock, channels_last"] = _fwd_bwd(
            lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), xc, g)
        if plan is not None:  # PlannedProduct on given row words: its two launches only
            cases["PlannedProduct only (mask given)"] = _fwd_bwd(
                lambda t: _prepared._APPLY(t, words, plan, False), x, g)
        row = _timed(cases, dev, n)
        floor = row["floor x*mask"]
        label = "x".join(map(str, shape))
        res[label] = row
        for name, us in row.items():
            ratio = f"{us / floor:6.2f}" if isinstance(us, float) else ""
            print(f"{label:16s} {name:44s} {us} {ratio}", flush=True)
    return res


BUSY_CYCLES = 2_000_000  # torch.cuda._sleep's spin: 8.6 ms on the committed probe's H100


def busy_us(fn, repeats=21):
    """Host microseconds of one call of ``fn`` issued while the device still has a few
    milliseconds of queued work (median over ``repeats``): a call that waits for the device
    takes about that long, one that does not takes what it takes on an idle device."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda._sleep(BUSY_CYCLES)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
        torch.cuda.synchronize()
    return round(sorted(times)[len(times) // 2], 2)


def device_busy(dev):
    """Whether any piece of a call waits for the device: each piece timed on the host while
    the device is busy (:func:`busy_us`), next to how long the device's queued work lasts."""
    x = torch.randn(32, 1024, 14, 14, device=dev, requires_grad=True)
    g, mask = torch.randn_like(x), (torch.rand_like(x) > 0.1).float()
    gen = torch.Generator(device=dev).manual_seed(0)
    step = _fwd_bwd(lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen), x, g)
    plan = _planned_step(step, x)
    words = _triton._row_buffer(plan.geo, x.device, plan.gamma, 12345) if plan else None
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(BUSY_CYCLES)
    torch.cuda.synchronize()
    out = {"device busy for (torch.cuda._sleep)": round((time.perf_counter() - t0) * 1e6, 2)}
    cases = {
        "nothing": lambda: None,
        "floor x*mask fwd+bwd": _fwd_bwd(lambda t: t * mask, x, g),
        "dropblock fwd, prepared": lambda: sdt.dropblock(x.detach(), RATE, BLOCK, seed=gen),
        "dropblock fwd+bwd, prepared": step,
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "key: host_key (seed and offset)": lambda: _triton.host_key(gen),
        "empty_like(x)": lambda: torch.empty_like(x),
    }
    if plan is not None:
        cases["PlannedProduct fwd+bwd (mask given)"] = _fwd_bwd(
            lambda t: _prepared._APPLY(t, words, plan, False), x, g)
    for name, fn in cases.items():
        try:
            out[name] = busy_us(fn)
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
        print(f"device busy: {name:50s} {out[name]}", flush=True)
    return out


def stub_launches() -> None:
    """Run the eager CUDA path's Python on the CPU with no-op launchers: Triton's C launchers
    become no-ops (nothing is computed), CPU tensors take the Triton path, the key is made on
    the host from a counter as on CUDA, and the first-use check of row words passes. For host
    costs only (``--stub``); the process should do nothing else afterwards."""
    import itertools
    from types import SimpleNamespace

    class Compiled:
        packed_metadata, function = (4, 1, 0), 0

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: Compiled()

    def noop(*args):
        return None

    names = ("dropblock_mask_kernel", "dropblock_rows_kernel", "masked_scale_kernel",
             "masked_rows_kernel", "seed_grid_kernel")
    kernels = SimpleNamespace(**{name: Kernel() for name in names})
    counter = itertools.count()
    _triton.FORCE = True
    _triton._kernels = lambda: kernels
    _triton._rows_problem = lambda *args: None
    _triton.new_key = lambda device, generator, eager=None: _triton._mix(1, 4 * next(counter))
    _launch._ordinary_only = lambda: False
    _launch._hooks_installed = lambda: False
    _launch._entry = lambda compiled: (noop, (0, 0, 0, None, None, (4, 1, 0), None, None, None),
                                       True)
    real_prepared = _launch.prepared  # a CPU tensor's plan has no device index: use 0
    _launch.prepared = lambda kernel, warps, device, key: real_prepared(kernel, warps, 0, key)
    torch._C._cuda_getDevice = lambda: 0
    torch._C._cuda_getCurrentRawStream = lambda device: 0


def stub(n, repeats):
    """Host microseconds per call with no-op launchers (see :func:`stub_launches`): the
    minimum over ``repeats`` interleaved rounds of ``n`` calls of each case."""
    torch.set_num_threads(1)
    stub_launches()
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    g = torch.ones_like(x)
    m = torch.rand(x.shape) < 0.9
    cases = {
        "floor x*mask fwd": lambda: x * m,
        "floor x*mask fwd+bwd": _fwd_bwd(lambda t: t * m, x, g),
        "dropblock fwd, ordinary": _planned(False)(lambda: sdt.dropblock(x, RATE, BLOCK)),
        "dropblock fwd, prepared": lambda: sdt.dropblock(x, RATE, BLOCK),
        "dropblock fwd+bwd, ordinary": _planned(False)(_fwd_bwd(
            lambda t: sdt.dropblock(t, RATE, BLOCK), x, g)),
        "dropblock fwd+bwd, prepared": _fwd_bwd(lambda t: sdt.dropblock(t, RATE, BLOCK), x, g),
    }
    for _ in range(3):  # check, "compile" and launch directly once: the plan is made
        cases["dropblock fwd+bwd, prepared"]()
    if len(_prepared._PLANS) != 1:
        raise RuntimeError("no plan was made under the stub launchers")
    for fn in cases.values():  # warm-up
        for _ in range(20):
            fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):  # rounds interleave the cases, so that a busy spell hits them all
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n * 1e6)
    # the minimum over rounds: on a shared machine, the cost with the least interference
    out = {name: round(min(ts), 2) for name, ts in times.items()}
    for name, ts in times.items():
        ts.sort()
        print(f"{name:32s} min {ts[0]:7.2f} us, median {ts[len(ts) // 2]:7.2f} us", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _native.enable(False)  # these figures are the Python plan's (native_call.py: the C++ one)
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=300, help="calls per timing of the tiny pieces")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--stub", action="store_true",
                   help="no GPU: host cost of the eager path with no-op launchers (CPU)")
    args = p.parse_args(argv)
    if args.stub:
        res = {"device": "cpu, no-op launchers", "torch": torch.__version__,
               "host_us": stub(args.n, 15)}
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    res = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
           "torch": torch.__version__, "host_us": pieces(args.device, args.n),
           "eager_fwd_bwd_us": steps(args.device, max(args.n // 3, 5), shapes)}
    if torch.device(args.device).type == "cuda":
        res["host_us_device_busy"] = device_busy(args.device)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
