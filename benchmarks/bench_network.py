"""DropBlock inside a network layer: what it adds to a training step, eagerly.

``bench_torch.py`` times each op alone, where on a GPU the host's per-call work can decide the
figure (the op waits for Python, not for memory). In a network the host queues the next layers
while the GPU works, and an op's host cost hides behind the device's. This script times the
forward+backward step of a small stage at each ResNet-50 shape, ``conv1x1 -> batch norm ->
ReLU -> op`` (the place the paper puts DropBlock, after a convolution group), with the op each
of: nothing, the floor ``x * mask`` (a mask made once), the package's ``dropblock``, and the
references the benchmark measures, round-robin (``timing.time_interleaved``) so that each sees
the same machine state. It prints per step: the time, the time the op adds to the stage without
it, and that added time as a multiple of what the floor adds.

Usage::

    python benchmarks/bench_network.py [--device cuda] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from structdrop_tutorial import timing  # noqa: E402
from bench_torch import BLOCK, RATE, make_ops  # noqa: E402

SHAPES = [(32, 1024, 14, 14), (32, 512, 28, 28), (16, 256, 56, 56)]
OPS = ["none", "floor x*mask", "structdrop dropblock", "structdrop dropblock (byte masks)",
       "torchvision drop_block2d", "timm DropBlock2d", "torch F.dropout2d"]


def stage(channels: int, device) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1, bias=False),
                               torch.nn.BatchNorm2d(channels), torch.nn.ReLU()).to(device).train()


def measure(shape, device, rounds: int, number: int) -> dict:
    """name -> (median seconds per step, added seconds over "none")."""
    ops = {name: fn for name, (fn, _) in make_ops(shape, device=device).items()}
    ops["none"] = lambda x: x
    net = stage(shape[1], device)
    params = tuple(net.parameters())
    x = torch.randn(shape, device=device)
    g = torch.randn(shape, device=device)

    def step(op):
        return lambda: torch.autograd.grad(op(net(x)), params, g)

    steps = {name: step(ops[name]) for name in OPS if name in ops}
    res = timing.time_interleaved(steps, warmup=5, rounds=rounds, number=number,
                                  sync=timing.torch_sync(device), device=str(device))
    base = res["none"].median
    return {name: (m.median, m.median - base) for name, m in res.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=20, help="steps per timed run")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    device = timing.torch_device_name(args.device)
    print(f"stage conv1x1 -> BN -> ReLU -> op, forward+backward, eager; block {BLOCK}, rate "
          f"{RATE}; {device}; torch {torch.__version__}")
    out = {"device": device, "torch": torch.__version__, "block": BLOCK, "rate": RATE,
           "stage": "conv1x1 -> BatchNorm2d -> ReLU -> op", "steps": {}}
    for shape in shapes:
        label = "x".join(map(str, shape))
        res = measure(shape, args.device, args.rounds, args.number)
        out["steps"][label] = {name: {"step_s": s, "added_s": a} for name, (s, a) in res.items()}
        floor_added = res["floor x*mask"][1]
        print(f"\n{label}: {'op':36s} {'step ms':>8s} {'added ms':>9s} {'added / floor added':>20s}")
        for name, (s, a) in res.items():
            ratio = f"{a / floor_added:20.2f}" if name != "none" and floor_added > 0 else ""
            print(f"{'':{len(label) + 2}s}{name:36s} {s * 1e3:8.3f} {a * 1e3:9.3f} {ratio}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
