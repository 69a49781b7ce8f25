"""Run every benchmark script that exists and merge their CSVs into the package's timing data.

    python benchmarks/run_all.py                 # full sizes, writes structdrop_tutorial/data/timings/
    python benchmarks/run_all.py --tiny --quick --out /tmp/t.csv   # smoke run
    python benchmarks/run_all.py --only numpy    # re-measure NumPy, keep the other rows
    python benchmarks/run_all.py --script-args "--rounds 5" --torch-args "--modes fwd+bwd"

Runs ``bench_numpy.py``, ``bench_torch.py`` and ``bench_tensorflow.py`` (those present; a
missing framework is reported and skipped) one after the other in fresh processes with the same
thread cap, then writes one CSV. Its default name says where it was measured:
``cpu_<model>.csv`` or, when torch sees a GPU, ``gpu_<name>.csv``, so measurements from different
machines sit side by side and the book plots each with its device.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

SCRIPTS = (("bench_numpy.py", "numpy"), ("bench_torch.py", "torch"),
           ("bench_tensorflow.py", "tensorflow"))
TIMINGS = common.ROOT / "structdrop_tutorial" / "data" / "timings"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def default_name() -> str:
    from structdrop_tutorial.timing import cpu_name
    if importlib.util.find_spec("torch") is not None:
        import torch
        if torch.cuda.is_available():
            return f"gpu_{slug(torch.cuda.get_device_name(0))}.csv"
    return f"cpu_{slug(cpu_name())}.csv"


def supported_options(path: Path) -> str:
    """The ``--help`` text of a benchmark script (its options differ from script to script)."""
    proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    return proc.stdout


def script_command(path: Path, out: Path, *, quick: bool, tiny: bool, threads: int | None,
                   progress: bool) -> list:
    """Command line for one script: ``--out`` or ``--csv``, and the options it knows of the
    ones every script shares in meaning (``--quick``: few rounds; ``--tiny``: small shapes)."""
    options = supported_options(path)
    cmd = [sys.executable, str(path)]
    cmd += ["--out" if "--out" in options else "--csv", str(out)]
    if quick and "--quick" in options:
        cmd.append("--quick")
    if quick and "--no-memory" in options:
        cmd.append("--no-memory")  # a smoke run skips the separate peak-memory processes
    if tiny and "--tiny" in options:
        cmd.append("--tiny")
    if threads and "--threads" in options:
        cmd += ["--threads", str(threads)]
    if not progress and "--no-progress" in options:
        cmd.append("--no-progress")
    return cmd


def extra_options(args, framework: str) -> list:
    """``--script-args`` (for every script) followed by ``--<framework>-args`` (for one)."""
    return shlex.split(args.script_args) + shlex.split(getattr(args, f"{framework}_args"))


def child_env(keep_memory: bool = False) -> dict:
    """Environment of the benchmark processes; ``keep_memory``: with
    :data:`common.MALLOC_KEEP` (see there), unless the caller's environment sets those."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(common.DEFAULT_THREADS))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if keep_memory:
        for key, value in common.MALLOC_KEEP.items():
            env.setdefault(key, value)
    return env


#: Column names used by other scripts -> the names of :data:`common.COLUMNS`.
ALIASES = {"mode": "pass", "ratio_to_floor": "ratio", "torch_version": "framework_version",
           "tensorflow_version": "framework_version", "tf_version": "framework_version",
           "threads_used": "threads"}


GPU_WORDS = ("nvidia", "gpu", "cuda", "tesla", "geforce", "quadro", "radeon", "instinct",
             "tpu", "apple m")


def normalize(rows: list, framework: str, threads: int, malloc: str = "") -> list:
    """Give every row the common columns (pass, ratio, case, device_kind, ...)."""
    from structdrop_tutorial.timing import cpu_name, machine_summary
    import datetime
    import platform

    import numpy as np
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = []
    for row in rows:
        row = dict(row)
        for old, new in ALIASES.items():
            if old in row and not row.get(new):
                row[new] = row.pop(old)
        # XLA-compiled variants: keep the pass plain ("fwd"/"fwd+bwd") and say it in the op name
        xla = str(row.get("jit", "")).lower() in ("true", "1", "on", "yes")
        if row.get("pass", "").lower().endswith(" xla"):
            row["pass"], xla = row["pass"][:-4].strip(), True
        if xla:  # the op and its floor, both compiled
            for key in ("op", "floor_op"):
                if row.get(key) and "XLA" not in row[key]:
                    row[key] = f"{row[key]} (XLA)"
        row.setdefault("framework", framework)
        if not row.get("framework"):
            row["framework"] = framework
        if not row.get("case"):
            row["case"] = row.get("shape", "")
        if not row.get("ratio") and row.get("floor_median_s") and row.get("median_s"):
            row["ratio"] = f"{float(row['median_s']) / float(row['floor_median_s']):.3f}"
        device = row.get("device") or cpu_name()
        row["device"] = device
        if not row.get("device_kind"):
            row["device_kind"] = "gpu" if any(k in device.lower() for k in GPU_WORDS) else "cpu"
        defaults = {"threads": threads, "machine": machine_summary()["machine"], "cpu": cpu_name(),
                    "numpy": np.__version__, "python": platform.python_version(), "date": today,
                    "rate": common.RATE, "block": common.BLOCK, "malloc": malloc}
        for key, value in defaults.items():
            if not row.get(key):
                row[key] = value
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="merged CSV (default: structdrop_tutorial/data/timings/<device>.csv)")
    p.add_argument("--only", nargs="*", default=None,
                   help="frameworks to run (numpy torch tensorflow)")
    p.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    p.add_argument("--tiny", action="store_true", help="small shapes (CI)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--default-malloc", action="store_true",
                   help="time with the C allocator's defaults (page faults included) instead "
                        "of common.MALLOC_KEEP")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds each script may run; one stopped at the limit keeps the rows "
                        "it wrote (the PyTorch script writes after each shape) and counts as failed")
    p.add_argument("--script-args", default="",
                   help="extra options for every script run, e.g. \"--rounds 3\"")
    for script, framework in SCRIPTS:
        p.add_argument(f"--{framework}-args", default="", metavar="OPTIONS",
                       help=f"extra options for {script} only (after --script-args)")
    args = p.parse_args(argv)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or common.DEFAULT_THREADS)
    env = child_env(keep_memory=not args.default_malloc)
    env["OMP_NUM_THREADS"] = str(threads)
    malloc = common.malloc_setting(env)
    print(f"C allocator: {malloc}" + (f" {common.MALLOC_KEEP}" if malloc != "default" else ""))
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for script, framework in SCRIPTS:
            if args.only is not None and framework not in args.only:
                continue
            path = HERE / script
            if not path.exists():
                print(f"[skip] {script}: not written yet")
                continue
            if importlib.util.find_spec(framework) is None:
                print(f"[skip] {script}: {framework} not installed")
                continue
            out = Path(tmp) / f"{framework}.csv"
            cmd = script_command(path, out, quick=args.quick, tiny=args.tiny, threads=threads,
                                 progress=not args.no_progress) + extra_options(args, framework)
            print(f"[run] {' '.join(Path(c).name if c == str(path) else c for c in cmd[1:])}",
                  flush=True)
            try:
                code = subprocess.run(cmd, env=env, timeout=args.time_limit).returncode
            except subprocess.TimeoutExpired:
                code = f"no result within --time-limit {args.time_limit:g} s"
            if code != 0 or not out.exists():
                print(f"[fail] {script}: {code if isinstance(code, str) else f'exited with {code}'}"
                      + ("; keeping the rows it wrote" if out.exists() else ""), flush=True)
                failed.append(script)
            if out.exists():
                rows.extend(normalize(common.read_csv(out), framework, threads, malloc))
    if not rows:
        print("no results")
        return 1
    target = args.out or TIMINGS / default_name()
    if args.only is not None and target.exists():
        # a partial run replaces only its own frameworks' rows in an existing file
        ran = {r["framework"] for r in rows}
        kept = [r for r in common.read_csv(target) if r.get("framework") not in ran]
        if kept:
            print(f"kept {len(kept)} rows of {sorted({r['framework'] for r in kept})} from {target}")
        rows = kept + rows
    common.write_csv(rows, target)
    print("\nAll results (ratio to the floor x * mask measured in the same run):")
    common.print_ratios(rows)
    print(f"\nwrote {len(rows)} rows to {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
