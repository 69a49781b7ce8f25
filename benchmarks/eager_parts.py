"""Which part of a planned DropBlock call makes its eager step cost more than the floor's (GPU).

``host_probe.py`` times the pieces of a call on a tiny input and whole steps at full size; the
two do not add up (a step can cost more than its pieces' host time plus its device time). This
script builds the planned call up one part at a time and times each stage as a full-size eager
forward+backward step, the stages interleaved over ``--rounds`` rounds (median per stage):

* ``product``: the planned product alone (:class:`_prepared.PlannedProduct`) on given row words;
* ``+ words``: the same with the row-word buffer allocated per call, as a call does;
* ``+ key``: and the key made on the host from the generator (:func:`_triton.host_key`);
* ``+ mask``: and the mask kernel launched into the buffer (everything ``_prepared.dropblock``
  does), which is the planned call without ``dropblock``'s argument handling;
* ``dropblock``: the public call (``seed=`` a generator, then the default generator);

next to the floor ``x * mask``; the floor, the product and the public call also with autograd's
worker threads off.

Usage::

    python benchmarks/eager_parts.py --out eager_parts.json    # on a CUDA machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# host_probe also puts the repo on the path
from host_probe import BLOCK, RATE, SHAPES, _single_threaded, loop_us  # noqa: E402

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _native, _prepared, _triton  # noqa: E402


def _mask(plan, key):
    """The planned call's row words for ``key`` (:func:`_prepared.mask_words`; a seam for the
    test that feeds it a mask from another key)."""
    return _prepared.mask_words(plan, key)


def _host_key(gen):
    """:func:`_triton.host_key`, or a fixed key for a generator without an offset (a CPU one,
    in Triton's interpreter)."""
    key = _triton.host_key(gen)
    return _triton._mix(0, 0) if key is None else key


def stages(x, g, mask, plan, words, gen):
    """Stage name -> a forward+backward step of ``x``."""
    def step(fn):
        return lambda: torch.autograd.grad(fn(x), x, g)

    def fresh_words():
        return torch.empty(plan.rows + 1, dtype=torch.int64, device=x.device)

    def with_words(t):
        fresh = fresh_words()  # allocated and kept to the step's end, the given words used
        out = _prepared._APPLY(t, words, plan, False)
        out.fresh = fresh
        return out

    def with_key(t):
        _host_key(gen)
        return with_words(t)

    def with_mask(t):
        return _prepared._APPLY(t, _mask(plan, _host_key(gen)), plan, False)

    return {
        "floor x*mask": step(lambda t: t * mask),
        "product (given words)": step(lambda t: _prepared._APPLY(t, words, plan, False)),
        "+ words allocated per call": step(with_words),
        "+ key from the generator": step(with_key),
        "+ mask kernel (the planned call)": step(with_mask),
        "dropblock, seed=generator": step(lambda t: sdt.dropblock(t, RATE, BLOCK, seed=gen)),
        "dropblock, default generator": step(lambda t: sdt.dropblock(t, RATE, BLOCK)),
    }


def measure(dev, shape, rounds, n, warmup=10):
    x = torch.randn(shape, device=dev, requires_grad=True)
    g = torch.randn_like(x)
    mask = (torch.rand_like(x) > RATE).to(x.dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    for _ in range(3):  # the second ordinary call makes the plan
        torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK, seed=gen), x, g)
        torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK), x, g)
    plan = _prepared._PLANS.get(_prepared._key(x, RATE, BLOCK, "channels_first", "exact",
                                               "valid", "batch"))
    if plan is None:
        raise RuntimeError(f"{shape}: no plan was made (byte masks, or the Triton path is off)")
    key = _host_key(gen)
    words = _mask(plan, key)
    if not torch.equal(words, _triton._row_buffer(plan.geo, x.device, plan.gamma, key)):
        raise RuntimeError(f"{shape}: the mask launched here differs from the package's")
    cases = stages(x, g, mask, plan, words, gen)
    for name in ("floor x*mask", "product (given words)", "dropblock, seed=generator"):
        cases[name + ", single-threaded autograd"] = _single_threaded(cases[name])
    for fn in cases.values():  # warm-up
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):  # interleaved, so that a busy spell hits every stage
        for name, fn in cases.items():
            times[name].append(loop_us(fn, dev, n))
    return {name: round(statistics.median(ts), 2) for name, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _native.enable(False)  # these figures are the Python plan's (native_call.py: the C++ one)
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=50, help="steps per timing")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    res = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
           "torch": torch.__version__, "rounds": args.rounds, "n": args.n, "steps_us": {}}
    for shape in shapes:
        label = "x".join(map(str, shape))
        row = measure(args.device, shape, args.rounds, args.n)
        res["steps_us"][label] = row
        floor = row["floor x*mask"]
        for name, us in row.items():
            print(f"{label:16s} {name:52s} {us:9.2f} {us / floor:6.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
