"""Shared pieces of the benchmark scripts: the cases, the command line, CSV rows, the printout.

Every benchmark script (``bench_numpy.py``, ``bench_torch.py``, ``bench_tensorflow.py``) times
each op next to a *floor* measured in the same run on the same input: ``x * mask`` with a mask
that already exists (no random numbers, no mask construction). Every figure is reported as the
ratio ``op median / floor median``; the ratio survives a busy or slow machine far better than an
absolute time does.

Import from a script in this folder with ``import common`` (the script's folder is on
``sys.path`` when it is run as ``python benchmarks/bench_x.py``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

RATE = 0.1
BLOCK = 7
DEFAULT_THREADS = 2

#: C-library allocator settings for the benchmark processes (``run_all.py`` sets them unless
#: ``--default-malloc``): glibc's malloc then serves every tensor from its heap and never hands
#: freed memory back to the OS. With its defaults, blocks of 32 MiB and more (the 28x28 and
#: 56x56 tensors) are mapped afresh on every allocation and smaller freed memory is returned
#: whenever enough of it sits at the top of the heap; each new page then faults in, which on the
#: benchmark machine cost more than the multiply itself and depended on what the ops timed
#: before had allocated. The first two variables stop that for memory allocated on the main
#: thread (every PyTorch and NumPy tensor here). TensorFlow allocates on its thread-pool
#: threads, which glibc serves from arenas of their own, each in mapped heaps of at most 64 MiB
#: that it still unmaps when they empty: on the 2-core AMD EPYC, one of three plain-graph runs
#: took 6,208 page faults per call of the 16x256x56x56 floor's forward+backward (11.5 ms
#: instead of 5.2 and 6.3 in the other two). ``MALLOC_ARENA_MAX=1`` makes every thread use the
#: main heap: in three runs the floor had no faults (6.3 to 6.5 ms), DropBlock at most 232 per
#: call (``data/timings/cpu_amd_epyc_details.json``, written by ``cpu_details.py``).
MALLOC_KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40),
               "MALLOC_ARENA_MAX": "1"}
#: The label of :data:`MALLOC_KEEP` in the CSVs, and of the two-variable setting (per-thread
#: arenas left alone) that the runs committed before it used.
KEEP_LABEL, KEEP_LABEL_ARENAS = "keep freed memory, one arena", "keep freed memory"


def malloc_setting(env=None) -> str:
    """How the C allocator of a process with environment ``env`` was set up, for the CSV."""
    env = os.environ if env is None else env
    if all(env.get(k) == v for k, v in MALLOC_KEEP.items()):
        return KEEP_LABEL
    if all(env.get(k) == MALLOC_KEEP[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")):
        return KEEP_LABEL_ARENAS
    return "default"


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclasses.dataclass(frozen=True)
class Case:
    """One input: ``shape`` in channels_first order (batch, channels, *spatial)."""
    name: str
    shape: tuple
    block: int = BLOCK
    rate: float = RATE

    @property
    def n_spatial(self) -> int:
        return len(self.shape) - 2

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    def layout(self, data_format: str) -> tuple:
        """The shape in ``data_format`` ("channels_first" as stored, or "channels_last")."""
        if data_format == "channels_first":
            return self.shape
        return (self.shape[0],) + self.shape[2:] + (self.shape[1],)


#: The issue's shapes (NCHW; channels_last for TensorFlow and NumPy), then a 3-D and a 1-D case.
#: A case is named by its NCHW shape in every framework's rows, whatever layout it runs in.
FULL_CASES = (
    Case("32x1024x14x14", (32, 1024, 14, 14)),
    Case("32x512x28x28", (32, 512, 28, 28)),
    Case("16x256x56x56", (16, 256, 56, 56)),
    Case("16x64x16x16x16", (16, 64, 16, 16, 16)),
    Case("32x256x1024", (32, 256, 1024)),
)

#: Small versions of the same cases, for CI smoke runs and the book on a CPU.
TINY_CASES = (
    Case("2x64x14x14", (2, 64, 14, 14)),
    Case("2x32x28x28", (2, 32, 28, 28)),
    Case("2x8x12x12x12", (2, 8, 12, 12, 12), block=5),
    Case("4x16x256", (4, 16, 256)),
)

COLUMNS = ["framework", "framework_version", "op", "pass", "case", "shape", "data_format",
           "dtype", "block", "rate", "elements", "median_s", "iqr_s", "runs", "number",
           "floor_median_s", "ratio", "device", "device_kind", "threads", "machine", "cpu",
           "numpy", "python", "date", "malloc"]


def set_threads(threads: int | None) -> int:
    """Cap the math libraries' threads (call before importing numpy/torch/tensorflow)."""
    threads = int(threads or os.environ.get("OMP_NUM_THREADS") or DEFAULT_THREADS)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return threads


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=None, help="CSV file to write (default: print only)")
    p.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    p.add_argument("--tiny", action="store_true", help="small shapes (CI, CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads (default: $OMP_NUM_THREADS or {DEFAULT_THREADS})")
    p.add_argument("--rounds", type=int, default=None, help="recorded rounds per op")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    args.threads = set_threads(args.threads)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    return args


def cases(args) -> tuple:
    return TINY_CASES if args.tiny else FULL_CASES


def environment_columns(framework: str, version: str, device: str, device_kind: str,
                        threads: int) -> dict:
    """Columns shared by every row of a run: where and with what it was measured."""
    import platform

    import numpy as np

    from structdrop_tutorial.timing import cpu_name, machine_summary
    return {"framework": framework, "framework_version": version, "device": device,
            "device_kind": device_kind, "threads": threads,
            "machine": machine_summary()["machine"], "cpu": cpu_name(), "numpy": np.__version__,
            "python": platform.python_version(), "malloc": malloc_setting(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def make_row(env: dict, case: Case, op: str, pass_: str, m, floor, data_format: str,
             dtype: str = "float32") -> dict:
    """One CSV row: the op's Measurement ``m`` next to the floor's (same case, same pass)."""
    row = dict(env)
    row.update({"op": op, "pass": pass_, "case": case.name,
                "shape": "x".join(str(s) for s in case.layout(data_format)),
                "data_format": data_format, "dtype": dtype, "block": case.block,
                "rate": case.rate, "elements": case.elements,
                "median_s": f"{m.median:.6g}", "iqr_s": f"{m.iqr:.3g}", "runs": m.runs,
                "number": m.number, "floor_op": floor.label or "floor",
                "floor_median_s": f"{floor.median:.6g}",
                "ratio": f"{m.median / floor.median:.3f}"})
    return row


def write_csv(rows: Iterable[dict], path: Path) -> Path:
    """Write rows with :data:`COLUMNS` first (extra keys after them, sorted)."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + extra, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS + extra})
    return path


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def print_ratios(rows: Sequence[dict], file=None) -> None:
    """A table per framework and pass: one line per op, one column per case, ratio to the floor."""
    file = file or sys.stdout
    groups = {}
    for r in rows:
        groups.setdefault((r["framework"], r["pass"], r["device"]), []).append(r)
    for (framework, pass_, device), rs in groups.items():
        case_names = list(dict.fromkeys(r["case"] for r in rs))
        ops = list(dict.fromkeys(r["op"] for r in rs))
        print(f"\n{framework} {pass_} on {device} (median / median of x * mask, same run)",
              file=file)
        width = max(len(op) for op in ops) + 2
        print(" " * width + "".join(f"{c:>20s}" for c in case_names), file=file)
        for op in ops:
            cells = []
            for c in case_names:
                hit = [r for r in rs if r["op"] == op and r["case"] == c and r.get("ratio")]
                cells.append(f"{float(hit[0]['ratio']):>19.2f}x" if hit else f"{'-':>20s}")
            print(f"{op:<{width}}" + "".join(cells), file=file)
        floors = [r for r in rs if r["op"] in ("floor", "floor x*mask", "floor x * mask")]
        if floors:
            print(f"{'floor (ms)':<{width}}" + "".join(
                f"{float(r['median_s']) * 1e3:>19.3g} " for r in floors), file=file)
