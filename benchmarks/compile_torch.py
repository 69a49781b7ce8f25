"""DropBlock under ``torch.compile`` against the floor, eager steps (GPU).

An eager DropBlock step on a GPU costs more host time than a multiply (book chapter 8); a CUDA
graph removes the host's share. ``torch.compile`` is the other way a user has to cut it:
inductor compiles the forward and the backward, and with ``mode="reduce-overhead"`` replays
them from CUDA graphs. The package's ``dropblock`` samplers are not traced (a graph break; see
``_dropblock_untraced`` in ``structdrop_tutorial/torch/functional.py``), so its rows time the
eager call inside a compiled function; ``dropblock not traced`` wraps the call in
``torch.compiler.disable`` here as well (the same, since the package does it; before it did,
dynamo traced the samplers and this row was the comparison). For each shape this script times
forward+backward steps (``torch.autograd.grad``) of the floor ``x * mask`` and of
``dropblock``, eager and compiled in each mode, interleaved over ``--rounds`` rounds (median per
op), and checks each compiled DropBlock's output: every unit is dropped or ``x`` times one
scale (``numel / kept``), the gradient is the upstream gradient times the same factors, and the
dropped fraction is within ``--tolerance`` (0.05) of the rate.

Usage::

    python benchmarks/compile_torch.py --out compile.json        # on a CUDA machine
    python benchmarks/compile_torch.py --device cpu --backend eager --shapes 2x3x16x16  # smoke
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from host_probe import BLOCK, RATE, SHAPES, _sync, loop_us  # noqa: E402  (and the repo's path)

from structdrop_tutorial import torch as sdt  # noqa: E402


def check_dropblock(y, gx, x, g) -> float:
    """The dropped fraction of a DropBlock output ``y`` of ``x`` with gradient ``gx`` for the
    upstream ``g``; raises unless every unit is 0 or ``x * scale`` with one scale, and ``gx`` is
    ``g`` times the same factors."""
    keep = y != 0
    kept = int(keep.sum())
    scale = x.numel() / kept if kept else 0.0
    factor = keep.to(x.dtype) * scale
    torch.testing.assert_close(y, x * factor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, g * factor, rtol=1e-5, atol=1e-6)
    return 1.0 - kept / x.numel()


def steps(x, g, mask, backend, modes):
    """Op name -> (a forward+backward step, the compiled function or None)."""
    def step(fn, mode=None):
        if mode == "reduce-overhead":  # each call a new step for CUDA graph trees
            def run():
                torch.compiler.cudagraph_mark_step_begin()
                return torch.autograd.grad(fn(x), x, g)
            return run
        return lambda: torch.autograd.grad(fn(x), x, g)

    floor = lambda t: t * mask  # noqa: E731
    drop = lambda t: sdt.dropblock(t, RATE, BLOCK)  # noqa: E731
    # dropblock left out of the trace: a graph break, the call runs eagerly inside the compiled
    # function (what a user gets who wraps it in torch.compiler.disable)
    untraced = torch.compiler.disable(drop)
    ops = {"floor x*mask, eager": (step(floor), None), "dropblock, eager": (step(drop), None)}
    for mode in modes:
        for name, fn in (("floor x*mask", floor), ("dropblock", drop),
                         ("dropblock not traced", lambda t: untraced(t))):
            compiled = torch.compile(fn, backend=backend, mode=mode, dynamic=False)
            ops[f"{name}, compiled {mode}"] = (step(compiled, mode), compiled)
    return ops


def measure(dev, shape, rounds, n, backend, modes, warmup=12, tolerance=0.05):
    # no zeros in x (randn gives a few exact zeros on CUDA), so that y == 0 means dropped
    x = (torch.rand(shape, device=dev) + 0.5).requires_grad_()
    g = torch.randn_like(x)
    mask = (torch.rand_like(x) > RATE).to(x.dtype)
    for _ in range(3):  # eager calls first: the package checks its kernels outside any trace
        torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK), x, g)
    ops = steps(x, g, mask, backend, modes)
    checks, first_calls, failed = {}, {}, {}
    for name, (fn, compiled) in list(ops.items()):
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):  # a compiled op compiles on its first call (or several)
                fn()
            _sync(dev)
            first_calls[name] = round(time.perf_counter() - t0, 2)
            if compiled is not None and name.startswith("dropblock"):
                if name.endswith("reduce-overhead"):
                    torch.compiler.cudagraph_mark_step_begin()
                y = compiled(x)
                out = y.detach().clone()  # a replayed graph may reuse its output's memory
                (gx,) = torch.autograd.grad(y, x, g)
                checks[name] = round(check_dropblock(out, gx.clone(), x.detach(), g), 4)
                if abs(checks[name] - RATE) > tolerance:
                    raise RuntimeError(f"dropped {checks[name]}, rate {RATE}")
        except Exception as exc:  # reported, and left out of the timing
            failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            del ops[name]
    times = {name: [] for name in ops}
    for _ in range(rounds):  # interleaved, so that a busy spell hits every op
        for name, (fn, _) in ops.items():
            times[name].append(loop_us(fn, dev, n))
    return {"step_us": {name: round(statistics.median(ts), 2) for name, ts in times.items()},
            "dropped_fraction": checks, "first_calls_s": first_calls, "failed": failed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--modes", default="default,reduce-overhead")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=50, help="steps per timing")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--out", help="write the results as JSON (after each shape)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="largest accepted |dropped fraction - rate| of a compiled DropBlock")
    p.add_argument("--time-limit", type=float, default=None,
                   help="start no further shape after this many seconds")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    res = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
           "torch": torch.__version__, "backend": args.backend, "rounds": args.rounds,
           "n": args.n, "shapes": {}}
    start = time.perf_counter()
    for shape in shapes:
        if args.time_limit is not None and time.perf_counter() - start > args.time_limit:
            print(f"time limit: {shape} and later shapes left out", flush=True)
            break
        label = "x".join(map(str, shape))
        row = measure(args.device, shape, args.rounds, args.n, args.backend, modes,
                      tolerance=args.tolerance)
        res["shapes"][label] = row
        floor = row["step_us"]["floor x*mask, eager"]
        for name, us in row["step_us"].items():
            mode = name.split(", ", 1)[1]
            own = row["step_us"].get(f"floor x*mask, {mode}", float("nan"))
            print(f"{label:16s} {name:44s} {us:9.2f} {us / floor:6.2f} eager floors "
                  f"{us / own:6.2f} floors of its mode  (first calls "
                  f"{row['first_calls_s'][name]} s)", flush=True)
        for name, err in row["failed"].items():
            print(f"{label:16s} {name:44s} failed: {err}", flush=True)
        print(f"{label:16s} dropped fraction of the compiled DropBlock: {row['dropped_fraction']}",
              flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
