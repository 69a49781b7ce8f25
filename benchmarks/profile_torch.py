"""Where one forward+backward spends its time: ``torch.profiler`` over the floor and DropBlock.

``bench_torch.py`` gives ratios; this script says what is behind them. For each shape it runs
``--steps`` forward+backward steps (``torch.autograd.grad`` with a fixed upstream gradient, as
the benchmark does) of the floor ``x * mask``, the package's DropBlock and, on CUDA, DropBlock on
its tensor-operation path, under ``torch.profiler``, and reports per step:

* ``wall_us``: host wall time of the profiled loop (device synchronized at both ends), divided
  by the steps. The profiler adds a few microseconds per recorded op, so compare rows with each
  other, not with the benchmark;
* ``device_us``: the kernels' summed device time (CUDA only), so ``wall_us`` well above it means
  the step is host-bound;
* ``top_cpu``: the events with the most self CPU time (including the autograd engine's
  ``evaluate_function`` entries, which show what the backward pass costs on the host, and
  the thread that ran it);
* ``top_device``: the kernels with the most device time (CUDA only).

With ``--out DIR`` it writes ``profile.json`` (all of the above) and one Chrome trace per shape
and op (``chrome://tracing`` or Perfetto), gzip-compressed.

Usage::

    python benchmarks/profile_torch.py --out prof                       # CUDA where available
    python benchmarks/profile_torch.py --device cpu --shapes 8x64x28x28 --steps 5
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_torch  # noqa: E402  (the benchmark's ops, so both time the same calls)

SHAPES = bench_torch.SHAPES[:3]  # the three ResNet-50 stages
#: The benchmark's ops profiled here (the byte-mask and tensor-op rows exist on CUDA only).
OPS = ("floor x*mask", "structdrop dropblock", "structdrop dropblock (byte masks)",
       "structdrop dropblock (tensor ops)")
WARMUP = 5
TOP = 12


def make_ops(shape, device):
    """Name -> callable(x) -> y: the floor and DropBlock (and its tensor-op path on CUDA)."""
    ops = bench_torch.make_ops(shape, device=device)
    return {name: ops[name][0] for name in OPS if name in ops}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _number(event, *names) -> float:
    """The first of ``names`` the profiler's averaged event has (names moved between releases)."""
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def summarize(prof, steps: int, on_gpu: bool) -> dict:
    """Per-step figures from a finished profile (microseconds)."""
    events = prof.key_averages()
    rows = []
    for e in events:
        rows.append({
            "name": e.key,
            "calls": e.count / steps,
            "self_cpu_us": _number(e, "self_cpu_time_total") / steps,
            "self_device_us": _number(e, "self_device_time_total", "self_cuda_time_total") / steps,
        })
    top_cpu = sorted(rows, key=lambda r: -r["self_cpu_us"])[:TOP]
    out = {"top_cpu": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()
                        if k != "self_device_us"} for r in top_cpu]}
    if on_gpu:
        kernels = [r for r in rows if r["self_device_us"] > 0]
        out["device_us"] = round(sum(r["self_device_us"] for r in kernels), 2)
        out["top_device"] = [{"name": r["name"], "calls": round(r["calls"], 2),
                              "self_device_us": round(r["self_device_us"], 2)}
                             for r in sorted(kernels, key=lambda r: -r["self_device_us"])[:TOP]]
    return out


def profile_op(fn, x, g, steps: int, device, trace: Path | None) -> dict:
    """Warm up, then profile ``steps`` forward+backward steps of ``fn``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def step():
        return torch.autograd.grad(fn(x), x, g)

    for _ in range(WARMUP):
        step()
    _sync(device)
    on_gpu = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            with record_function("step"):
                step()
        _sync(device)
        wall = (time.perf_counter() - t0) / steps * 1e6
    result = {"wall_us": round(wall, 2)}
    result.update(summarize(prof, steps, on_gpu))
    if trace is not None:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as src, gzip.open(trace, "wb") as dst:
                dst.write(src.read())
    return result


def run(shapes, device, steps: int, out: Path | None = None) -> dict:
    on_gpu = torch.device(device).type == "cuda"
    results = {"device": (torch.cuda.get_device_name(device) if on_gpu else "cpu"),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
               "shapes": {}}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for shape in shapes:
        label = "x".join(map(str, shape))
        x = torch.randn(shape, device=device, requires_grad=True)
        g = torch.randn(shape, device=device)
        per = results["shapes"][label] = {}
        for name, fn in make_ops(shape, device).items():
            trace = None
            if out is not None:
                slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
                trace = out / f"trace_{label}_{slug}.json.gz"
            per[name] = profile_op(fn, x, g, steps, device, trace)
            report(label, name, per[name])
    if out is not None:
        (out / "profile.json").write_text(json.dumps(results, indent=1))
    return results


def report(label: str, name: str, res: dict) -> None:
    device = f", device {res['device_us']:.1f} us" if "device_us" in res else ""
    print(f"\n{label}  {name}: wall {res['wall_us']:.1f} us per step{device}")
    print("  self CPU us/step  calls/step  event")
    for r in res["top_cpu"]:
        print(f"  {r['self_cpu_us']:15.1f}  {r['calls']:10.2f}  {r['name'][:90]}")
    for r in res.get("top_device", []):
        print(f"  device {r['self_device_us']:8.1f} us  {r['calls']:5.2f}x  {r['name'][:80]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=None,
                   help="comma-separated shapes such as 32x1024x14x14 (default: the three "
                        "ResNet-50 stages)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder for profile.json and traces")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    shapes = ([tuple(int(n) for n in item.split("x")) for item in args.shapes.split(",")]
              if args.shapes else SHAPES)
    print(f"torch {torch.__version__}, device {args.device}, {args.steps} steps per op")
    return run(shapes, args.device, args.steps, args.out)


if __name__ == "__main__":
    main()
