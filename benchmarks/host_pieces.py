"""The host's cost of each piece of a planned DropBlock forward pass, one piece at a time (GPU).

``host_os.py`` found that on the GPU machines a planned call's extra time is spent on the calling
thread, in its forward pass. This script times that pass's pieces alone, each in a loop of
``--n`` calls on a small input with the device idle (microseconds per call, the minimum over
``--rounds`` interleaved rounds): the argument handling and plan lookup, the key from the
generator (and its three generator calls), the row-word buffer, the mask kernel's and the
product kernel's launches from the plan, the output buffer, the autograd function, the whole
planned and public calls; next to a native multiply and its buffer. It also launches the
product kernel through ``cuLaunchKernel`` called with ``ctypes`` (the same compiled kernel and
arguments, checked to write the same output) to see what Triton's own C launcher costs on top
of the driver's call.

Usage (on a CUDA machine)::

    python benchmarks/host_pieces.py --out host_pieces.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from host_probe import BLOCK, RATE, _planned_step  # noqa: E402

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _launch, _native, _prepared, _triton  # noqa: E402


def driver_launch(compiled, args, grid, stream):
    """A no-argument function that launches ``compiled`` (a Triton CompiledKernel) with
    ``args`` (every parameter, constexprs included, pointers as ints) through the driver's
    ``cuLaunchKernel``, its parameter array built once (:func:`_native.slots`: the slots the
    package's C++ planned call passes)."""
    lib = ctypes.CDLL("libcuda.so.1")
    launch = lib.cuLaunchKernel
    launch.argtypes = ([ctypes.c_void_p] + [ctypes.c_uint] * 7
                       + [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p])
    launch.restype = ctypes.c_int
    values = [ctypes.c_uint64(v) for v in _native.slots(compiled, args, ())[0]]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    fn = ctypes.c_void_p(compiled.function)
    threads = 32 * compiled.metadata.num_warps
    shared = compiled.metadata.shared
    s = ctypes.c_void_p(stream)

    def call():
        status = launch(fn, grid[0], grid[1], grid[2], threads, 1, 1, shared, s, params, None)
        if status:
            raise RuntimeError(f"cuLaunchKernel returned {status}")
    call.keep = (values, params)
    return call


def pieces(x, plan, driver=True):
    dev = x.device
    gen = torch.cuda.default_generators[dev.index or 0]
    m = (torch.rand_like(x) >= RATE).to(x.dtype)
    key = _triton.host_key(gen)
    words = _prepared.mask_words(plan, key)
    out = torch.empty_like(x)
    stream = torch._C._cuda_getCurrentRawStream(dev.index or 0)
    g = plan.prod_grid
    args = (x.data_ptr(), words.data_ptr(), out.data_ptr()) + tuple(plan.prod_tail)

    def raw_product():
        plan.prod_run(g[0], g[1], g[2], stream, *plan.prod_lead, *args)

    driver_ok, cases = None, {}
    if driver:
        compiled = next(e[0] for k, e in _launch._COMPILED.items()
                        if k[0] is _triton._kernels().masked_rows_kernel and e[3])
        out2 = torch.empty_like(x)
        raw_product()
        args2 = (x.data_ptr(), words.data_ptr(), out2.data_ptr()) + tuple(plan.prod_tail)
        driver_launch(compiled, args2, g, stream)()
        torch.cuda.synchronize()
        driver_ok = torch.equal(out, out2)
        cases["product launch, cuLaunchKernel via ctypes"] = driver_launch(compiled, args, g,
                                                                           stream)
    return driver_ok, {**cases,
        "x * m (no autograd)": lambda: x * m,
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "torch.empty(rows + 1, int64)": lambda: torch.empty(plan.rows + 1, dtype=torch.int64,
                                                            device=dev),
        "gen.initial_seed()": gen.initial_seed,
        "gen.get_offset()": gen.get_offset,
        "gen.set_offset(offset)": lambda: gen.set_offset(gen.get_offset()),
        "host_key(gen)": lambda: _triton.host_key(gen),
        "_cuda_getCurrentRawStream": lambda: torch._C._cuda_getCurrentRawStream(0),
        "_cuda_isCurrentStreamCapturing": torch._C._cuda_isCurrentStreamCapturing,
        "_cuda_getDevice": torch._C._cuda_getDevice,
        "x.data_ptr()": x.data_ptr,
        "find (plan lookup and checks)": lambda: _prepared.find(
            x, RATE, BLOCK, "channels_first", "exact", "valid", "batch"),
        "mask_words (buffer + mask launch)": lambda: _prepared.mask_words(plan, key),
        "product launch, plan's launcher": raw_product,
        "product (plan: pointers, stream, launch)": lambda: _prepared.product(plan, x, words,
                                                                              out),
        "PlannedProduct forward (autograd function)": lambda: _prepared._APPLY(x, words, plan,
                                                                               False),
        "_prepared.dropblock (planned call)": lambda: _prepared.dropblock(plan, x, None, False),
        "sdt.dropblock (public call)": lambda: sdt.dropblock(x, RATE, BLOCK),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _native.enable(False)  # these figures are the Python plan's (native_call.py: the C++ one)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shape", default="2x4x16x16")
    p.add_argument("--out")
    p.add_argument("--no-driver", action="store_true", help="leave out the ctypes launch")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    x = torch.randn(shape, device="cuda", requires_grad=True)
    step = lambda: torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK), x, x)  # noqa: E731
    plan = _planned_step(step, x)
    if plan is None or not plan.ints:
        raise RuntimeError("no plan with direct launches was made")
    x = x.detach()
    driver_ok, cases = pieces(x, plan, not args.no_driver)
    times = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(50):
            fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.n):
                fn()
            t1 = time.perf_counter()  # host time only: the device works on in the background
            torch.cuda.synchronize()
            times[name].append((t1 - t0) / args.n * 1e6)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "shape": args.shape, "n": args.n, "rounds": args.rounds,
           "driver_launch_equal": driver_ok,
           "host_us": {name: round(min(ts), 2) for name, ts in times.items()}}
    for name, us in res["host_us"].items():
        print(f"{name:48s} {us:8.2f} us", flush=True)
    print("ctypes launch wrote the same output:", driver_ok)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
