"""DropBlock on inputs in channels_last memory format, eager and replayed from a CUDA graph.

At the three ResNet-50 shapes (block 7, rate 0.1), each a forward+backward step
(``torch.autograd.grad`` with an upstream gradient in the input's layout):

* the floor ``x * mask`` on contiguous (channels_first) tensors and on channels_last ones;
* the package's ``dropblock`` on a contiguous input, on a channels_last input (its own product
  kernel, :mod:`structdrop_tutorial.torch._triton_channels_last`, and eagerly a plan of
  :mod:`structdrop_tutorial.torch._prepared` once the warm-up has served the signature), and
  on a channels_last input through the general route (a channels_first copy there and back,
  no plan), for comparison.

Each figure is the median over ``--rounds`` interleaved rounds of a loop of ``--n`` steps,
eager and as CUDA-graph replays (the default generator, as capture needs). The script first
checks that a channels_last input's output equals the contiguous input's for the same seed.

Usage (on a CUDA machine)::

    python benchmarks/channels_last_torch.py --out channels_last.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from host_probe import BLOCK, RATE, SHAPES, loop_us  # noqa: E402
from structdrop_tutorial import timing  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _prepared, _triton_channels_last  # noqa: E402


def copy_route(fn):
    """``fn`` with the channels-last product kernel and plans switched off (the general route,
    as before either existed for these inputs)."""
    def call():
        real = _triton_channels_last.checked_rows
        _triton_channels_last.checked_rows = lambda *args: None
        _prepared.ENABLED = False
        try:
            return fn()
        finally:
            _triton_channels_last.checked_rows = real
            _prepared.ENABLED = True
    return call


def cases(shape, dev):
    """Name -> (input, upstream gradient, op)."""
    cl = torch.channels_last
    x = torch.randn(shape, device=dev, requires_grad=True)
    xc = x.detach().contiguous(memory_format=cl).requires_grad_()
    g = torch.randn(shape, device=dev)
    gc = g.contiguous(memory_format=cl)
    mask = (torch.rand(shape, device=dev) >= RATE).float() / (1 - RATE)
    mc = mask.contiguous(memory_format=cl)
    return {
        "floor x*mask": (x, g, lambda t: t * mask),
        "floor x*mask, channels_last": (xc, gc, lambda t: t * mc),
        "dropblock": (x, g, lambda t: sdt.dropblock(t, RATE, BLOCK)),
        "dropblock, channels_last": (xc, gc, lambda t: sdt.dropblock(t, RATE, BLOCK)),
        "dropblock, channels_last, copy route": (xc, gc, lambda t: sdt.dropblock(t, RATE, BLOCK)),
    }


def check(shape, dev):
    """The channels_last output equals the contiguous one for the same seed, both routes."""
    x = torch.randn(shape, device=dev)
    xc = x.contiguous(memory_format=torch.channels_last)
    ref = sdt.dropblock(x, RATE, BLOCK, seed=3)
    for _ in range(2):  # the first call of a geometry takes the general route and checks it
        own = sdt.dropblock(xc, RATE, BLOCK, seed=3)
    copied = copy_route(lambda: sdt.dropblock(xc, RATE, BLOCK, seed=3))()
    if not (torch.equal(own, ref) and torch.equal(copied, ref)):
        raise AssertionError(f"{shape}: channels_last output differs from the contiguous one")


def measure(dev, shapes, rounds, n):
    out = {}
    for shape in shapes:
        check(shape, dev)
        steps = {}
        for name, (x, g, op) in cases(shape, dev).items():
            step = lambda x=x, g=g, op=op: torch.autograd.grad(op(x), x, g)  # noqa: E731
            if name.endswith("copy route"):
                step = copy_route(step)
            for _ in range(3):
                step()
            steps[name] = (step, timing.cuda_graph(step, dev))
        times = {f"{name}, {mode}": [] for name in steps for mode in ("eager", "graph")}
        for _ in range(rounds):
            for name, (step, replay) in steps.items():
                times[f"{name}, eager"].append(loop_us(step, dev, n))
                times[f"{name}, graph"].append(loop_us(replay, dev, n))
        label = "x".join(map(str, shape))
        out[label] = {k: round(statistics.median(v), 2) for k, v in times.items()}
        for mode in ("eager", "graph"):
            floor = out[label][f"floor x*mask, {mode}"]
            for name in steps:
                us = out[label][f"{name}, {mode}"]
                print(f"{label:16s} {mode:6s} {name:40s} {us:9.1f} us {us / floor:6.2f}",
                      flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=50, help="steps per timed loop")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "rounds": args.rounds, "n": args.n,
           "steps_us": measure("cuda", shapes, args.rounds, args.n)}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
