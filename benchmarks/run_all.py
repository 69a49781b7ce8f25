"""Run every benchmark script that exists and merge their CSVs into the package's timing data.

    python benchmarks/run_all.py                 # full sizes, writes structdrop_tutorial/data/timings/
    python benchmarks/run_all.py --tiny --quick --out /tmp/t.csv   # smoke run

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="merged CSV (default: structdrop_tutorial/data/timings/<device>.csv)")
    p.add_argument("--only", nargs="*", default=None, help="frameworks to run (numpy torch tensorflow)")
    args, passthrough = p.parse_known_args(argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(common.DEFAULT_THREADS))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
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
            print(f"[run] {script} {' '.join(passthrough)}", flush=True)
            proc = subprocess.run([sys.executable, str(path), "--out", str(out), *passthrough],
                                  env=env)
            if proc.returncode != 0 or not out.exists():
                print(f"[fail] {script} exited with {proc.returncode}")
                failed.append(script)
                continue
            rows.extend(common.read_csv(out))
    if not rows:
        print("no results")
        return 1
    target = args.out or TIMINGS / default_name()
    common.write_csv(rows, target)
    print("\nAll results (ratio to the floor x * mask measured in the same run):")
    common.print_ratios(rows)
    print(f"\nwrote {len(rows)} rows to {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
