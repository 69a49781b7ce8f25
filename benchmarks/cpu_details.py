"""Two CPU measurements chapter 8 quotes besides the benchmark CSVs, written as data.

    python benchmarks/cpu_details.py            # writes data/timings/cpu_<model>_details.json
    python benchmarks/cpu_details.py --quick --out /tmp/d.json   # smoke run

1. **The seed-gap sampler.** PyTorch's DropBlock on the CPU draws its seeds as the gaps of a
   Bernoulli process. ``Tensor.geometric_`` computes each gap by inversion from one uniform, one
   element at a time; the package's ``torch._fast.geometric_gaps`` computes the same formula
   over the whole tensor. Both are timed, interleaved, for the number of gaps the package draws
   at each benchmark case (rate 0.1, block 7, exact gamma), and the numbers are checked to be
   the same.
2. **The C allocator.** ``bench_torch.py`` is run twice at one shape through ``run_all.py``: with
   glibc's default ``malloc`` and with :data:`common.MALLOC_KEEP` (what every committed CPU run
   uses). The medians and page faults per call of the floor and of DropBlock, forward+backward,
   show what the defaults cost.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import run_all  # noqa: E402

import torch  # noqa: E402

from structdrop_tutorial import gamma as G  # noqa: E402
from structdrop_tutorial import timing  # noqa: E402
from structdrop_tutorial.shapes import seed_grid_shape  # noqa: E402
from structdrop_tutorial.torch import _fast  # noqa: E402

TIMINGS = common.ROOT / "structdrop_tutorial" / "data" / "timings"
MALLOC_SHAPE = "32x512x28x28"  # 49 MiB tensors: above glibc's 32 MiB mmap threshold
MALLOC_SHAPE_QUICK = "2x32x28x28"


def gaps_drawn(case: common.Case) -> tuple:
    """(gamma, number of gaps) the package's sparse sampler draws first for ``case``."""
    block = G.clip_block(case.block, case.shape[2:])
    gamma = G.exact_gamma(case.rate, block, case.shape[2:])
    grid = seed_grid_shape(case.shape, block, "channels_first")
    return gamma, _fast.gaps_to_draw(math.prod(grid), gamma)


def same_numbers(n: int, gamma: float) -> bool:
    """Whether ``geometric_gaps`` gives ``geometric_``'s numbers and leaves the generator in
    the same state, from the same seed."""
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ref = torch.empty(n, dtype=torch.float64).geometric_(gamma, generator=a)
    mine = _fast.geometric_gaps(n, gamma, b)
    return bool(torch.equal(ref, mine)) and bool(torch.equal(a.get_state(), b.get_state()))


def sampler(cases, threads: int, rounds: int, min_run_time: float) -> dict:
    torch.set_num_threads(threads)
    out = {}
    for case in timing.sweep(cases, lambda c: c, desc="sampler"):
        gamma, n = gaps_drawn(case)
        buf = torch.empty(n, dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        fns = {"geometric_": lambda: buf.geometric_(gamma, generator=gen),
               "package": lambda: _fast.geometric_gaps(n, gamma, gen)}
        res = timing.time_interleaved(fns, warmup=3, rounds=rounds, number=5,
                                      min_run_time=min_run_time)
        ref, mine = res["geometric_"].median, res["package"].median
        out[case.name] = {"gamma": gamma, "gaps": n, "geometric_ms": ref * 1e3,
                          "package_ms": mine * 1e3, "speedup": ref / mine,
                          "same_numbers": same_numbers(n, gamma)}
    return out


def malloc(shape: str, threads: int, rounds: int, min_run_time: float) -> dict:
    """Floor and DropBlock forward+backward at ``shape`` (such as ``"32x512x28x28"``) under
    both allocator settings, each in its own ``run_all.py --only torch`` run."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (("default", ["--default-malloc"]), ("keep freed memory", [])):
            path = Path(tmp) / "torch.csv"
            cmd = [sys.executable, str(HERE / "run_all.py"), "--only", "torch", "--no-progress",
                   "--threads", str(threads), "--out", str(path), *flags, "--torch-args",
                   f"--shapes {shape} --modes fwd+bwd --no-memory --rounds {rounds} "
                   f"--min-run-time {min_run_time}"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(path, newline="", encoding="utf-8") as f:
                rows = {r["op"]: r for r in csv.DictReader(f) if r["pass"] == "fwd+bwd"}
            out[name] = {op: {"median_ms": float(rows[op]["median_s"]) * 1e3,
                              "page_faults_per_call": float(rows[op]["page_faults_per_call"])}
                         for op in ("floor x*mask", "structdrop dropblock")}
    return {"shape": shape, "settings": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: data/timings/cpu_<model>_details.json)")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--rounds", type=int, default=None, help="default 15; 1 with --quick")
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="one round, small cases (smoke test)")
    p.add_argument("--malloc-shape", default=None,
                   help=f"shape of the allocator comparison (default {MALLOC_SHAPE}; "
                        f"{MALLOC_SHAPE_QUICK} with --quick)")
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 15)
    min_run_time = 0.02 if args.quick else args.min_run_time
    cases = common.TINY_CASES if args.quick else common.FULL_CASES
    target = args.out or TIMINGS / f"cpu_{run_all.slug(timing.cpu_name())}_details.json"
    details = {
        "device": timing.cpu_name(), "threads": args.threads,
        "software": f"torch {torch.__version__}, Python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "method": f"benchmarks/cpu_details.py, {args.threads} threads, rate {common.RATE}, "
                  f"block {common.BLOCK}: sampler, medians of at least {rounds} interleaved "
                  "rounds of 5 calls (timing.time_interleaved); malloc, bench_torch.py "
                  f"(torch.utils.benchmark) run by run_all.py once with each setting",
        "sampler": sampler(cases, args.threads, rounds, min_run_time),
        "malloc": malloc(args.malloc_shape or (MALLOC_SHAPE_QUICK if args.quick else MALLOC_SHAPE),
                         args.threads, 1 if args.quick else 3, min_run_time),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(details, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(details, indent=1))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
