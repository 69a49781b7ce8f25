"""Four CPU measurements chapter 8 quotes besides the benchmark CSVs, written as data.

    python benchmarks/cpu_details.py            # writes data/timings/cpu_<model>_details.json
    python benchmarks/cpu_details.py --quick --out /tmp/d.json   # smoke run

1. **The seed-gap sampler.** PyTorch's DropBlock on the CPU draws its seeds as the gaps of a
   Bernoulli process. ``Tensor.geometric_`` computes each gap by inversion from one uniform, one
   element at a time; the package's ``torch._fast.geometric_gaps`` computes the same formula
   over the whole tensor. Both are timed, interleaved, for the number of gaps the package draws
   at each benchmark case (rate 0.1, block 7, exact gamma), and the numbers are checked to be
   the same.
2. **Drawing a seed grid.** At the 28x28 stage, ``rand < gamma``, ``torch.bernoulli`` and
   ``bernoulli_`` over the whole seed grid against drawing only the seeds, each as a ratio to
   ``x * mask`` over a tensor of the grid's size (chapter 8 times the same on the reader's
   device).
3. **The C allocator.** ``bench_torch.py`` is run twice at one shape through ``run_all.py``: with
   glibc's default ``malloc`` and with :data:`common.MALLOC_KEEP` (what the CPU runs use). The
   medians and page faults per call of the floor and of DropBlock, forward+backward, show what
   the defaults cost. Where TensorFlow is installed, ``bench_tensorflow.py`` (plain graphs, the
   28x28 case and then the 56x56 one) is run with the defaults once, and three times each with
   ``MALLOC_KEEP`` but glibc's usual arena per thread (what the runs committed before
   ``MALLOC_ARENA_MAX=1`` used) and with ``MALLOC_KEEP``.
4. **Run to run.** ``bench_torch.py`` is run three times in a row at the three ResNet-50 shapes
   (forward+backward): the floor's time and DropBlock's ratio to it in each run.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
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
RESNET_SHAPES = "32x1024x14x14,32x512x28x28,16x256x56x56"
# TensorFlow's comparison: 28x28 first, then 56x56, the order of a full benchmark, where
# per-thread arenas faulted in some runs and not in others
TF_MALLOC_SHAPES = "32x512x28x28,16x256x56x56"
TF_MALLOC_SHAPES_QUICK = "2x16x14x14,2x32x28x28"


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
    """``{case name: gaps, both medians in ms, speedup, same numbers}`` for every case."""
    torch.set_num_threads(threads)

    def measure(case):
        gamma, n = gaps_drawn(case)
        buf = torch.empty(n, dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        fns = {"geometric_": lambda: buf.geometric_(gamma, generator=gen),
               "package": lambda: _fast.geometric_gaps(n, gamma, gen)}
        res = timing.time_interleaved(fns, warmup=3, rounds=rounds, number=5,
                                      min_run_time=min_run_time)
        ref, mine = res["geometric_"].median, res["package"].median
        return case.name, {"gamma": gamma, "gaps": n, "geometric_ms": ref * 1e3,
                           "package_ms": mine * 1e3, "speedup": ref / mine,
                           "same_numbers": same_numbers(n, gamma)}
    return dict(timing.sweep(cases, measure, desc="sampler"))


def seed_grid(case: common.Case, rounds: int, min_run_time: float) -> dict:
    """Ways of drawing the seeds of ``case``'s valid seed grid (chapter 8's Bernoulli question),
    each timed against ``x * mask`` over a tensor of the grid's size."""
    block = G.clip_block(case.block, case.shape[2:])
    gamma = G.exact_gamma(case.rate, block, case.shape[2:])
    grid = seed_grid_shape(case.shape, block, "channels_first")
    x, mask = torch.randn(grid), (torch.rand(grid) >= case.rate).float()
    fns = {
        "floor x * mask": lambda: x * mask,
        "rand(grid) < gamma": lambda: torch.rand(grid) < gamma,
        "bernoulli(full(grid, gamma))": lambda: torch.bernoulli(torch.full(grid, gamma)),
        "empty(grid).bernoulli_(gamma)": lambda: torch.empty(grid).bernoulli_(gamma),
        "only the seeds: geometric gaps": lambda: _fast.bernoulli_positions(x.numel(), gamma),
    }
    res = timing.time_interleaved(fns, warmup=3, rounds=rounds, min_run_time=min_run_time)
    floor = res["floor x * mask"].median
    return {"input": case.name, "grid": "x".join(map(str, grid)), "gamma": gamma,
            "ms": {k: m.median * 1e3 for k, m in res.items()},
            "ratio": {k: m.median / floor for k, m in res.items()}}


# The per-thread arenas glibc makes by default (8 per core on 64-bit): set explicitly, since
# run_all.py otherwise adds MALLOC_ARENA_MAX=1 to the other two variables.
ARENAS_PER_THREAD = {"MALLOC_MMAP_MAX_": common.MALLOC_KEEP["MALLOC_MMAP_MAX_"],
                     "MALLOC_TRIM_THRESHOLD_": common.MALLOC_KEEP["MALLOC_TRIM_THRESHOLD_"],
                     "MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}


def _run_all_rows(framework: str, args: str, threads: int, flags=(), extra=None) -> list:
    """The forward+backward rows of one ``run_all.py --only framework`` run with the script
    options ``args``, run_all's ``flags`` and the environment variables ``extra``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{framework}.csv"
        cmd = [sys.executable, str(HERE / "run_all.py"), "--only", framework, "--no-progress",
               "--threads", str(threads), "--out", str(path), *flags, f"--{framework}-args", args]
        # run_all.py sets the allocator itself: only the setting's own variables are passed
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**env, **(extra or {})})
        with open(path, newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if r["pass"] == "fwd+bwd"]


def _allocator_run(framework: str, args: str, case: str, ops: tuple, flags: list,
                   extra: dict, threads: int) -> tuple:
    """``(allocator label, {op: median ms and page faults per call})`` of the rows at ``case``
    of one :func:`_run_all_rows` run; the label is the one the run wrote into its rows."""
    rows = {r["op"]: r for r in _run_all_rows(framework, args, threads, flags, extra)
            if r["case"] == case}
    labels = {r["malloc"] for r in rows.values()}
    if len(labels) != 1 or not set(ops) <= set(rows):
        raise RuntimeError(f"{framework} run {flags} {extra}: expected forward+backward rows of "
                           f"{ops} at {case} with one allocator label, got {sorted(rows)} "
                           f"labelled {sorted(labels)}")
    (label,) = labels
    return label, {op: {"median_ms": float(rows[op]["median_s"]) * 1e3,
                        "page_faults_per_call": float(rows[op]["page_faults_per_call"])}
                   for op in ops}


def malloc(shape: str, threads: int, rounds: int, quick: bool, tf_shapes: str,
           tf_runs: int) -> dict:
    """Floor and DropBlock forward+backward at ``shape`` (such as ``"32x512x28x28"``) under
    both allocator settings in PyTorch; where TensorFlow is installed, its plain graphs at the
    last of ``tf_shapes`` (the others run first in the same process, as in a full benchmark)
    with the defaults once and with each of the two keep settings in ``tf_runs`` runs, since
    whether per-thread arenas fault differs from run to run."""
    torch_args = (f"--shapes {shape} --modes fwd+bwd --no-memory --rounds {rounds}"
                  + (" --min-run-time 0.02" if quick else ""))
    ops = ("floor x*mask", "structdrop dropblock")
    out = {"shape": shape, "settings": dict(
        _allocator_run("torch", torch_args, shape, ops, flags, {}, threads)
        for flags in (["--default-malloc"], []))}
    if importlib.util.find_spec("tensorflow") is None:  # the comparison needs TensorFlow
        return out
    tf_args = f"--shapes {tf_shapes} --jit off --modes fwd+bwd" + (" --quick" if quick else "")
    case, ops = tf_shapes.split(",")[-1], ("floor x*mask", "dropblock")
    settings = {}
    for flags, extra, runs in ((["--default-malloc"], {}, 1), ([], ARENAS_PER_THREAD, tf_runs),
                               ([], {}, tf_runs)):
        for _ in range(runs):
            label, res = _allocator_run("tensorflow", tf_args, case, ops, flags, extra, threads)
            settings.setdefault(label, []).append(res)
    out["tensorflow"] = {"shape": case, "before": tf_shapes.split(",")[:-1], "settings": settings}
    return out


def _tensorflow_version() -> str:
    """``", tensorflow <version>"`` where TensorFlow is installed, else ``""``."""
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return f", tensorflow {version(dist)}"
        except PackageNotFoundError:
            pass
    return ""


def repeats(shapes: str, threads: int, runs: int, quick: bool) -> dict:
    """The floor's median and DropBlock's ratio to it, forward+backward, at ``shapes``, in
    ``runs`` separate ``run_all.py --only torch`` runs one after the other: how far one run's
    ratio can be from the next on a shared machine."""
    args = (f"--shapes {shapes} --modes fwd+bwd --no-memory --rounds {1 if quick else 3}"
            + (" --min-run-time 0.02" if quick else ""))
    out = []
    for _ in range(runs):
        rows = _run_all_rows("torch", args, threads)
        out.append({
            "floor_ms": {r["case"]: float(r["median_s"]) * 1e3
                         for r in rows if r["op"] == "floor x*mask"},
            "dropblock_ratio": {r["case"]: float(r["ratio"])
                                for r in rows if r["op"] == "structdrop dropblock"}})
    return {"shapes": shapes.split(","), "runs": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: data/timings/cpu_<model>_details.json)")
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--rounds", type=int, default=None, help="default 31; 1 with --quick")
    p.add_argument("--min-run-time", type=float, default=1.0,
                   help="seconds of calls recorded per op, at least (sampler, seed grid)")
    p.add_argument("--quick", action="store_true", help="one round, small cases (smoke test)")
    p.add_argument("--malloc-shape", default=None,
                   help=f"shape of PyTorch's allocator comparison (default {MALLOC_SHAPE}; "
                        f"{MALLOC_SHAPE_QUICK} with --quick); TensorFlow's runs "
                        f"{TF_MALLOC_SHAPES} ({TF_MALLOC_SHAPES_QUICK} with --quick)")
    args = p.parse_args(argv)
    if common.malloc_setting() != common.KEEP_LABEL:
        # time the sampler and the seed grid with the C allocator set as for the CPU runs
        # (common.MALLOC_KEEP; a fresh process: glibc reads the settings at start), overriding
        # any other values the caller's environment gives them, so the new process does not
        # start again
        env = run_all.child_env()
        env.update(common.MALLOC_KEEP)
        env["OMP_NUM_THREADS"] = str(args.threads)
        return subprocess.run([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)],
                              env=env).returncode
    rounds = args.rounds or (1 if args.quick else 31)
    min_run_time = 0.02 if args.quick else args.min_run_time
    cases = common.TINY_CASES if args.quick else common.FULL_CASES
    target = args.out or TIMINGS / f"cpu_{run_all.slug(timing.cpu_name())}_details.json"
    has_tf = importlib.util.find_spec("tensorflow") is not None
    tf_runs, repeat_runs = (1, 2) if args.quick else (3, 3)
    details = {
        "device": timing.cpu_name(), "threads": args.threads,
        "allocator": common.malloc_setting(),
        "software": f"torch {torch.__version__}{_tensorflow_version()}, "
                    f"Python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "method": f"benchmarks/cpu_details.py, {args.threads} threads, rate {common.RATE}, "
                  f"block {common.BLOCK}: sampler and seed grid, medians of at least {rounds} "
                  f"interleaved rounds (sampler: of 5 calls) and {min_run_time:g} s per op "
                  "(timing.time_interleaved); malloc, bench_torch.py (torch.utils.benchmark) "
                  "once with each setting"
                  + (f" and bench_tensorflow.py (plain graphs, {3 if args.quick else 15} rounds) "
                     f"once with the defaults and {tf_runs} time(s) with each keep setting"
                     if has_tf else "")
                  + f", run by run_all.py; repeats, bench_torch.py run by run_all.py {repeat_runs} "
                  f"times in a row ({1 if args.quick else 3} round(s) each)",
        "sampler": sampler(cases, args.threads, rounds, min_run_time),
        "seed_grid": seed_grid(cases[1], rounds, min_run_time),
        "malloc": malloc(args.malloc_shape or (MALLOC_SHAPE_QUICK if args.quick else MALLOC_SHAPE),
                         args.threads, 1 if args.quick else 3, args.quick,
                         TF_MALLOC_SHAPES_QUICK if args.quick else TF_MALLOC_SHAPES, tf_runs),
        "repeats": repeats(MALLOC_SHAPE_QUICK if args.quick else RESNET_SHAPES, args.threads,
                           repeat_runs, args.quick),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(details, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(details, indent=1))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
