"""What the operating system sees of an eager forward+backward step on a GPU.

``host_probe.py`` and ``eager_parts.py`` time a step's pieces by the wall clock; they do not say
where the time goes that no piece accounts for (on the GPU machines, a planned DropBlock step
costs more than its pieces add up to, and autograd's worker thread alone roughly doubles the
floor's step). This script counts, per step, the process's CPU time in user and kernel mode and
its context switches (``getrusage``: the whole process and the calling thread), next to the
wall time, for:

* the floor ``x * mask``;
* an ``autograd.Function`` whose forward multiplies and whose backward returns its gradient
  (no kernel), and one whose backward multiplies in Python (``host_probe.py``'s two);
* the planned product alone on given row words (``_prepared.PlannedProduct``);
* the public ``dropblock`` call (through its plan);

each with autograd's worker threads on (the default) and off, on a tiny input (the device
idle) and at 32x1024x14x14. Kernel-mode time and voluntary context switches per step are the
operating system's share: thread hand-offs and driver calls.

Usage (on a CUDA machine)::

    python benchmarks/host_os.py --out host_os.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from host_probe import (BLOCK, RATE, NativeBackward, PassBackward, _planned_step,  # noqa: E402
                        _single_threaded, _sync, stub_launches)

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _prepared  # noqa: E402

FIELDS = ("ru_utime", "ru_stime", "ru_nvcsw", "ru_nivcsw")


def _usage(who):
    r = resource.getrusage(who)
    return [getattr(r, f) for f in FIELDS]


SHORT = {"wall_us": "wall", "process user_us": "user", "process kernel_us": "kernel",
         "process voluntary_switches": "vcsw", "process involuntary_switches": "ivcsw",
         "main thread user_us": "main user", "main thread kernel_us": "main kernel",
         "main thread voluntary_switches": "main vcsw",
         "main thread involuntary_switches": "main ivcsw"}


def per_step(fn, n, dev):
    """Wall us, then user us, kernel us, voluntary and involuntary switches per step, for the
    process and for the calling thread."""
    _sync(dev)
    p0, t0, w0 = _usage(resource.RUSAGE_SELF), _usage(resource.RUSAGE_THREAD), time.perf_counter()
    for _ in range(n):
        fn()
    _sync(dev)
    w1, p1, t1 = time.perf_counter(), _usage(resource.RUSAGE_SELF), _usage(resource.RUSAGE_THREAD)
    scale = (1e6, 1e6, 1, 1)
    row = {"wall_us": (w1 - w0) / n * 1e6}
    for tag, a, b in (("process", p0, p1), ("main thread", t0, t1)):
        for f, s, u, v in zip(("user_us", "kernel_us", "voluntary_switches",
                               "involuntary_switches"), scale, a, b):
            row[f"{tag} {f}"] = (v - u) * s / n
    return row


def cases(shape, dev):
    x = torch.randn(shape, device=dev, requires_grad=True)
    g = torch.randn_like(x)
    m = (torch.rand_like(x) >= RATE).to(x.dtype)

    def step(fn):
        return lambda: torch.autograd.grad(fn(x), x, g)

    public = step(lambda t: sdt.dropblock(t, RATE, BLOCK))
    plan = _planned_step(public, x)
    if plan is None:
        raise RuntimeError(f"{shape}: no plan was made")
    words = _prepared.mask_words(plan, 12345 | (1 << 62))
    out = {
        "floor x*mask": step(lambda t: t * m),
        "Function, backward returns grad": step(lambda t: PassBackward.apply(t, m)),
        "Function, backward multiplies": step(lambda t: NativeBackward.apply(t, m)),
        "PlannedProduct (given words)": step(lambda t: _prepared._APPLY(t, words, plan, False)),
        "dropblock (planned)": public,
    }
    for name in list(out):
        out[name + ", single-threaded autograd"] = _single_threaded(out[name])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="steps per timed loop")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shapes", default="1x1x16x16,32x1024x14x14")
    p.add_argument("--out")
    p.add_argument("--stub", action="store_true",
                   help="on the CPU with no-op launchers (host_probe.py --stub): a smoke test")
    args = p.parse_args(argv)
    dev = "cpu" if args.stub else "cuda"
    if args.stub:
        stub_launches()
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (stub launchers)",
           "torch": torch.__version__, "n": args.n,
           "rounds": args.rounds, "steps": {}}
    for label in args.shapes.split(","):
        shape = tuple(int(v) for v in label.split("x"))
        steps = cases(shape, dev)
        for fn in steps.values():
            for _ in range(20):
                fn()
        rows = {name: [] for name in steps}
        for _ in range(args.rounds):  # interleaved rounds; the median of each field
            for name, fn in steps.items():
                rows[name].append(per_step(fn, args.n, dev))
        res["steps"][label] = {name: {k: round(statistics.median(r[k] for r in rs), 2)
                                      for k in rs[0]} for name, rs in rows.items()}
        for name, row in res["steps"][label].items():
            print(f"{label:16s} {name:56s} " + " ".join(f"{SHORT[k]}={v:.1f}"
                                                       for k, v in row.items()), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
