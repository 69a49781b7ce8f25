"""Does the native planned call (structdrop_tutorial.torch._native) bring an eager DropBlock step
on a GPU down to the floor's neighbourhood?

The same public call ``sdt.dropblock`` is timed as full-size eager forward+backward steps with
the extension on (the planned call's key, buffer, launches and autograd function in C++) and
off (the Python plan: the same plan, the same kernels), next to the floor ``x * mask``; each
shape's cases are interleaved over ``--rounds`` rounds of ``--n`` steps (the device synchronized
at both ends; the median per case), and the floor and both calls run twice per round so that an
effect of the order shows as a difference between a case and its repeat. Before timing, the
script checks that the two give the same output, gradient and generator offset from the same
generator state, and that the native call was used (it stops otherwise). It also reports how
long building the extension took in this process (0 where PyTorch's cache had it).

Usage (on a CUDA machine with a C++ compiler and ninja)::

    python benchmarks/native_call.py --out native_call.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from host_probe import BLOCK, RATE, SHAPES, interleaved_us  # noqa: E402

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _native, _prepared  # noqa: E402


def run(x, g, gen, native):
    _native.ENABLED = native
    y = sdt.dropblock(x, RATE, BLOCK, seed=gen)
    (d,) = torch.autograd.grad(y, x, g)
    return y.detach(), d, gen.get_offset()


def measure(shape, rounds, n, warmup=20):
    """Case -> median microseconds per eager step at ``shape``."""
    x = torch.randn(shape, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    mask = (torch.rand_like(x) > RATE).float()
    _native.ENABLED = True
    for _ in range(3):  # the second ordinary call makes the plan (and the native plan)
        torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK), x, g)
    plan = _prepared.find(x, RATE, BLOCK, "channels_first", "exact", "valid", "batch")
    if plan is None or plan.native is None:
        raise RuntimeError(f"{tuple(shape)}: no native plan ({_native._FAILED})")
    before = plan.native.launches
    a = run(x, g, torch.Generator(device="cuda").manual_seed(5), True)
    if plan.native.launches != before + 3:
        raise RuntimeError(f"{tuple(shape)}: the native call was not used")
    b = run(x, g, torch.Generator(device="cuda").manual_seed(5), False)
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]):
        raise RuntimeError(f"{tuple(shape)}: native and Python plans differ")

    def step(fn, native):
        def call():
            _native.ENABLED = native
            torch.autograd.grad(fn(x), x, g)
        return call

    def public(t):
        return sdt.dropblock(t, RATE, BLOCK)

    cases = {
        "floor x*mask": step(lambda t: t * mask, True),
        "dropblock, Python plan": step(public, False),
        "dropblock, native": step(public, True),
        "floor x*mask again": step(lambda t: t * mask, True),
        "dropblock, Python plan again": step(public, False),
        "dropblock, native again": step(public, True),
    }
    try:
        return interleaved_us(cases, "cuda", rounds, n, warmup)
    finally:
        _native.ENABLED = True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--n", type=int, default=60, help="steps per timing")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    _native.enable()
    t0 = time.perf_counter()
    if _native.module() is None:
        raise SystemExit(f"the extension did not build: {_native._FAILED}")
    build_s = time.perf_counter() - t0
    print(f"extension ready in {build_s:.1f} s", flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "rounds": args.rounds, "n": args.n, "build_s": round(build_s, 1), "steps_us": {}}
    for shape in SHAPES:
        label = "x".join(map(str, shape))
        row = res["steps_us"][label] = measure(shape, args.rounds, args.n)
        floor = row["floor x*mask"]
        for name, us in row.items():
            print(f"{label:16s} {name:30s} {us:9.2f} {us / floor:6.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
