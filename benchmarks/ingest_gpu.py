"""Fold the files of a GPU round (``bash benchmarks/run_gpu.sh``) into the committed timings.

``run_gpu.sh`` leaves, under its output folder, the benchmark CSV ``gpu_<name>.csv``, the host
probe ``host_probe.json``, the network-stage timings ``network.json`` and ``gpu.txt`` (the GPU
and the torch and Triton versions). This script copies the CSV over the committed one of the
same name in ``structdrop_tutorial/data/timings/`` and writes the probe and the network timings
into that GPU's ``gpu_<name>_kernels.json`` (under ``host_probe`` and ``network``; the kernel
sweep's entries are left as they are), with the software, the date and how they were measured.
A probe already in the JSON moves to the front of ``host_probe_earlier`` (earlier rounds stay
as data). The eager steps built up part by part (``eager_parts*.json``, from
``benchmarks/eager_parts.py``, one file per process) go under ``eager_parts.runs``, and the
steps under ``torch.compile`` (``compile*.json`` from ``benchmarks/compile_torch.py``, each with
an optional ``label`` saying which code it measured) under ``compile.runs``. The tune step's
``triton_config.json`` (``benchmarks/gpu_tune.py``) gives ``device_us`` (each kernel at the
package's launch parameters, against the floor), ``sweeps_us`` (every configuration swept) and
``tune`` (its software, date, best configuration and host costs; a later tune round replaces
them); the ``device_us`` there was before the first tune round folded in (written by hand, for
earlier code) moves to ``device_us_earlier``, and the file's ``method`` says so. A folder holding only the tune step's files (no CSV)
folds into the JSON of the GPU that ``triton_config.json`` names. The steps of
``benchmarks/channels_last_torch.py`` (``channels_last*.json``: eager and CUDA-graph steps of
channels_last inputs) go under ``channels_last``, those of ``benchmarks/host_os.py``
(``host_os*.json``: CPU time and context switches per eager step) under ``host_os`` and those of
``benchmarks/host_pieces.py`` (``host_pieces*.json``: the host's cost of each piece of a planned
forward pass, one run per process) under ``host_pieces``; a folder with only such files folds
in the same way. A benchmark run of ``bench_torch.py`` on another machine of the same kind in
the same round (the CSV its ``--csv`` writes, named ``bench_repeat*.csv``) goes under
``benchmark_repeats``: per run, the device and torch version, and per mode and ResNet-50 shape
the median of the floor ``x * mask`` and every op's ratio to its own floor (``x * mask``, or
``x * mask[N,C,1,1]`` for the spatial ops), which shows how far one code's ratios move between
machines. ``benchmarks/flat_call.py``'s runs (``flat_call*.json``: the public call against a
flattened copy of a planned call, one run per machine) go under ``flat_call``, those of
``benchmarks/native_call.py`` (``native_call*.json``: the public call with the native planned
call on and off) under ``native_call``; ``gpu.txt``'s line saying whether the bench step built
the native extension goes into the software. It then
prints the eager and graph ratios of the package's DropBlock at the ResNet-50 shapes (also of
the repeats), the flattened call's ratios and the host costs of the ordinary and prepared
calls, the figures chapter 8 quotes. Probes
that failed on the GPU (the probe records the error instead of a time) are kept apart, under
``host_probe.failed``.

Usage (after fetching the round's files)::

    python benchmarks/ingest_gpu.py gpu_out            # writes the timings
    python benchmarks/ingest_gpu.py gpu_out --dry-run  # only prints
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # the package's launch parameters, run_all's slug
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from run_all import slug  # noqa: E402  (a device's name as in the timing files' names)
TIMINGS = ROOT / "structdrop_tutorial" / "data" / "timings"
RESNET = ("32x1024x14x14", "32x512x28x28", "16x256x56x56")
PROBE_METHOD = ("benchmarks/host_probe.py --n {n}: host_us is the median of 3 loops of n calls, "
                "device synchronized at both ends, tiny 1x1x16x16 input; 'triton[grid]' and "
                "'direct' run the ordinary path with _launch.DIRECT off and on, 'prepared' the "
                "planned calls of _prepared; eager_fwd_bwd_us is the same loop (n // 3 calls) at "
                "full size, where the device's work counts as well")
PARTS_METHOD = ("benchmarks/eager_parts.py --rounds {rounds} --n {n}: full-size eager "
                "forward+backward steps (torch.autograd.grad), the planned call built up part "
                "by part; each figure the median over rounds of a loop of n steps, the stages "
                "interleaved, device synchronized at both ends of each loop; one run per process")
COMPILE_METHOD = ("benchmarks/compile_torch.py: eager forward+backward steps (torch.autograd.grad) "
                  "of the floor x * mask and of dropblock, eager and under torch.compile "
                  "(inductor, modes default and reduce-overhead, dynamic=False), each the median "
                  "over rounds of a loop of n steps, the ops interleaved; first_calls_s: the "
                  "first 12 calls, compilation included; dropped_fraction: the compiled "
                  "DropBlock's output, checked unit by unit against x and its gradient")
TUNE_METHOD = ("benchmarks/gpu_tune.py: device_us and sweeps_us from triton.testing.do_bench "
               "(median, L2 flushed between runs) of each kernel alone at the three ResNet-50 "
               "shapes, rate 0.1, block 7, against the floor x * mask timed the same way; "
               "sweeps_us: per program grid rows (row-word mask kernel), units (byte mask "
               "kernel) or elements (product kernels) / warps -> per shape; device_us: "
               "the package's launch parameters ({params}); host_us: wall time per call of a "
               "loop of 300 calls on a tiny 1x1x16x16 input, device synchronized at both ends")
CHANNELS_LAST_METHOD = ("benchmarks/channels_last_torch.py --rounds {rounds} --n {n}: "
                        "forward+backward steps (torch.autograd.grad, the upstream gradient in "
                        "the input's layout) of the floor x * mask and of dropblock on "
                        "contiguous and channels_last inputs (its own product kernel, eagerly "
                        "through a plan after the warm-up, and the general route through a "
                        "channels_first copy, without plans), eager and replayed from "
                        "a CUDA graph; each figure the median over rounds of a loop of n steps, "
                        "the ops interleaved")
HOST_OS_METHOD = ("benchmarks/host_os.py --rounds {rounds} --n {n}: per eager forward+backward "
                  "step (torch.autograd.grad), wall time and, from getrusage, user and kernel "
                  "CPU time and voluntary and involuntary context switches of the whole process "
                  "and of the calling thread (the rest is autograd's worker thread), the median "
                  "over interleaved rounds of a loop of n steps; autograd's worker threads on "
                  "and off")
HOST_PIECES_METHOD = ("benchmarks/host_pieces.py --n {n} --rounds {rounds}: host microseconds "
                      "per call of each piece of a planned forward pass alone, on a {shape} "
                      "input with the device idle (the minimum over interleaved rounds of a "
                      "loop of n calls, the host's time only); one process per run; the "
                      "product kernel also launched through cuLaunchKernel via ctypes, checked "
                      "to write the same output")
REPEAT_METHOD = ("benchmarks/bench_torch.py (its own CSV) on another machine of the same kind in "
                 "the same round, with the code of the round's CSV: per mode and ResNet-50 "
                 "shape, the median of the floor x * mask (floor_ms) and each op's ratio to its "
                 "own floor (x * mask; x * mask[N,C,1,1] for spatial_dropout and "
                 "F.dropout1d/2d/3d)")
FLAT_METHOD = ("benchmarks/flat_call.py: full-size eager forward+backward steps "
               "(torch.autograd.grad) of the floor, the public dropblock and a flattened copy "
               "of a planned call (the same lookup, key, buffer and launches in one function, "
               "without the argument handling, the helper calls and the backward pass's "
               "re-checks), each the median over interleaved rounds of a loop of n steps; "
               "same: the flattened call gave the public call's output and gradient bit for "
               "bit; each run on its own machine (runs without the later cases come from the "
               "script's first form)")
NATIVE_METHOD = ("benchmarks/native_call.py: full-size eager forward+backward steps "
                 "(torch.autograd.grad) of the floor and of the public dropblock with the "
                 "native planned call (structdrop_tutorial/torch/_native.cpp) on and off (the "
                 "Python plan: the same plan and kernels), each the median over interleaved "
                 "rounds of a loop of n steps, the floor and both calls twice per round; before "
                 "timing, the two gave the same output, gradient and generator offset; build_s: "
                 "the extension's build in that process (0.3-0.4: PyTorch's cache had it); each "
                 "run on its own machine")
NETWORK_METHOD = ("benchmarks/bench_network.py: a stage conv1x1 -> BatchNorm2d -> ReLU -> op, "
                  "forward+backward (autograd.grad to the stage's parameters), eager; ops timed "
                  "round-robin, median per step; added_s = step_s - step_s of the stage "
                  "without an op")


def software(out: Path) -> str:
    """``torch X, triton Y`` from run_gpu.sh's gpu.txt (its line ``torch X triton Y``; the
    bench step may add a line about the native extension after it)."""
    lines = (out / "gpu.txt").read_text().strip().splitlines()
    found = [line.split() for line in lines if line.startswith("torch ")]
    words = found[-1] if found else []
    if len(words) != 4 or words[2] != "triton":
        raise ValueError(f"{out / 'gpu.txt'}: expected a line 'torch X triton Y', got {lines!r}")
    native = [line for line in lines if line.startswith("native extension:")]
    return f"torch {words[1]}, triton {words[3]}" + (
        "; native planned call built" if native and native[-1].split()[2] == "True" else "")


def ratios(csv_path: Path) -> dict:
    """(pass, case) -> ratio of the package's DropBlock at the ResNet-50 shapes."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["pass"], r["case"]): float(r["ratio"]) for r in rows
            if r["framework"] == "torch" and r["op"] in ("dropblock", "structdrop dropblock")
            and r["case"] in RESNET}


REPEAT_COLUMNS = ("op", "shape", "mode", "median_s", "ratio_to_floor", "floor_op", "device",
                  "torch_version")


def repeat_run(csv_path: Path) -> dict:
    """A ``bench_torch.py`` CSV from another machine: its device, torch and, per mode and
    ResNet-50 shape, the floor's median in ms and each op's ratio to its floor."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(REPEAT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: not a bench_torch.py CSV (no column "
                             f"{', '.join(sorted(missing))})")
        rows = [r for r in reader if r["shape"] in RESNET]
    if not rows:
        raise ValueError(f"{csv_path}: no rows at the ResNet-50 shapes {', '.join(RESNET)}")
    modes: dict = {}
    for r in rows:
        cell = modes.setdefault(r["mode"], {}).setdefault(r["shape"], {})
        if r["op"] == r["floor_op"] == "floor x*mask":
            cell["floor_ms"] = round(float(r["median_s"]) * 1e3, 4)
        cell[r["op"]] = float(r["ratio_to_floor"])
    for mode, shapes in modes.items():
        for shape, cell in shapes.items():
            if "floor_ms" not in cell:
                raise ValueError(f"{csv_path}: no floor x*mask row for {mode} at {shape}")
    return {"device": rows[0]["device"], "torch": rows[0]["torch_version"], "modes": modes}


def _split_failures(table: dict, failed: dict, where: str = "") -> dict:
    """``table`` (name -> microseconds, or -> such a dict) with the probes that failed (an error
    message instead of a number) moved to ``failed``, under ``where`` + their name."""
    kept = {}
    for name, value in table.items():
        if isinstance(value, dict):
            kept[name] = _split_failures(value, failed, f"{where}{name}: ")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[name] = value
        else:
            failed[f"{where}{name}"] = str(value)
    return kept


def package_params() -> dict:
    """The package's launch parameters, as the sweep's configuration names per kernel: the byte
    mask kernel's warps depend on the shape (``_triton.mask_warps``)."""
    from structdrop_tutorial.torch import _triton
    apply = f"{_triton.APPLY_BLOCK}/{_triton.APPLY_WARPS}"
    masks = {}
    for shape in RESNET:
        geo = _triton.geometry(tuple(int(v) for v in shape.split("x")), (7, 7), "valid",
                               _triton.TILE_UNITS)
        masks[shape] = f"{_triton.TILE_UNITS}/{_triton.mask_warps(geo)}"
    return {"rows": f"{_triton.ROW_ITEMS}/{_triton.ROW_WARPS}", "apply_rows": apply,
            "mask": masks, "apply": apply}


KERNEL_NAMES = {"rows": "row-word mask kernel", "apply_rows": "row-word product kernel",
                "mask": "byte mask kernel", "apply": "byte product kernel"}


def tuned(tune: dict, sw: str, today: str) -> dict:
    """``device_us``, ``sweeps_us`` and ``tune`` entries from ``gpu_tune.py``'s JSON (only
    ``tune``, with the host costs, from a ``--host-only`` run). A kernel whose configuration at
    the package's parameters was not swept is left out of ``device_us``."""
    params = package_params()
    described = ", ".join(f"{KERNEL_NAMES[k]} {v if isinstance(v, str) else ' / '.join(v.values())}"
                          for k, v in params.items())
    entries = {"tune": {"software": sw, "date": today,
                        "method": TUNE_METHOD.format(params=described),
                        "best": tune.get("config"), "host_us": tune["host_us"]}}
    sweeps = tune.get("device_us")
    if sweeps is None:  # gpu_tune.py --host-only
        return entries
    device = {}
    for shape in RESNET:
        row = {"floor x*mask": round(sweeps["floor"][shape], 1)}
        for part, label in KERNEL_NAMES.items():
            cfg = params[part][shape] if isinstance(params[part], dict) else params[part]
            if shape in sweeps.get(part, {}).get(cfg, {}):
                row[label] = round(sweeps[part][cfg][shape], 1)
        device[shape] = row
    entries["device_us"] = device
    entries["sweeps_us"] = {"note": "per program grid rows, units or elements / warps -> per "
                                    "shape; one do_bench each",
                            **{k: {cfg: {s: round(t, 1) for s, t in per.items()}
                                   for cfg, per in sweeps[k].items()}
                               for k in KERNEL_NAMES if k in sweeps}}
    return entries


def ingest(out: Path, timings: Path = TIMINGS, dry_run: bool = False, probe_n: int = 300) -> dict:
    """Fold ``out``'s files into ``timings``; returns what it wrote (or would write)."""
    csvs = sorted(out.glob("gpu_*.csv"))
    tune_path = out / "triton_config.json"
    tune = json.loads(tune_path.read_text()) if tune_path.exists() else None
    layouts = [json.loads(f.read_text()) for f in sorted(out.glob("channels_last*.json"))]
    host_os = [json.loads(f.read_text()) for f in sorted(out.glob("host_os*.json"))]
    pieces = [json.loads(f.read_text()) for f in sorted(out.glob("host_pieces*.json"))]
    flat = [json.loads(f.read_text()) for f in sorted(out.glob("flat_call*.json"))]
    native = [json.loads(f.read_text()) for f in sorted(out.glob("native_call*.json"))]
    repeats = [repeat_run(f) for f in sorted(out.glob("bench_repeat*.csv"))]
    # a folder without the benchmark's CSV folds into the GPU its other files name
    named = tune or next((runs[0] for runs in (layouts, host_os, pieces, flat, native, repeats)
                          if runs), None)
    if len(csvs) == 1:
        name = csvs[0].stem
    elif not csvs and named is not None:
        name = f"gpu_{slug(named['device'])}"
    else:
        raise FileNotFoundError(f"{out}: expected one gpu_<name>.csv, found {len(csvs)}")
    for run in flat + native + repeats:  # runs of another GPU would land in this one's file
        if f"gpu_{slug(run['device'])}" != name:
            raise ValueError(f"{out}: a flat_call, native_call or bench_repeat run measured "
                             f"{run['device']!r}, not the GPU of {name}")
    sw = software(out)
    kernels_path = timings / f"{name}_kernels.json"
    kernels = json.loads(kernels_path.read_text()) if kernels_path.exists() else {}
    today = datetime.date.today().isoformat()
    wrote = {"csv": str(timings / csvs[0].name), "ratios": ratios(csvs[0])} if csvs else {}
    if tune is not None:
        entries = tuned(tune, sw, today)
        old = kernels.get("device_us")
        if ("device_us" in entries and old is not None and "tune" not in kernels
                and "device_us_earlier" not in kernels):  # written by hand in an earlier round
            kernels["device_us_earlier"] = old
            kernels["method"] = ("device_us and sweeps_us: see tune.method (a later round); "
                                 "entries with a method of their own: see it. The rest, "
                                 "device_us_earlier included, is from the earlier round: "
                                 + kernels.get("method", ""))
        kernels.update(entries)
        wrote.update(entries)
    probe_path, network_path = out / "host_probe.json", out / "network.json"
    if probe_path.exists():
        probe, failed = json.loads(probe_path.read_text()), {}
        new = {"software": sw, "date": today, "method": PROBE_METHOD.format(n=probe_n),
               "host_us": _split_failures(probe["host_us"], failed),
               "eager_fwd_bwd_us": _split_failures(probe["eager_fwd_bwd_us"], failed)}
        old = kernels.get("host_probe")
        if old is not None and (old.get("host_us"), old.get("eager_fwd_bwd_us")) != (
                new["host_us"], new["eager_fwd_bwd_us"]):  # an earlier round's probe stays,
            kernels["host_probe_earlier"] = [old] + kernels.get(  # newest first (not the same
                "host_probe_earlier", [])                         # round ingested again)
        kernels["host_probe"] = new
        if "host_us_device_busy" in probe:
            kernels["host_probe"]["host_us_device_busy"] = _split_failures(
                probe["host_us_device_busy"], failed, "device busy: ")
        if failed:  # kept apart, so that every timing table holds numbers only
            kernels["host_probe"]["failed"] = failed
        wrote["host_probe"] = kernels["host_probe"]
    def fold(key, method, **payload):
        """One section of the kernels JSON: the software, the date, the method, the figures."""
        kernels[key] = {"software": sw, "date": today, "method": method, **payload}
        wrote[key] = kernels[key]

    if network_path.exists():
        network = json.loads(network_path.read_text())
        fold("network", NETWORK_METHOD,
             **{k: network[k] for k in ("stage", "block", "rate", "steps")})
    parts = [json.loads(f.read_text()) for f in sorted(out.glob("eager_parts*.json"))]
    if parts:
        fold("eager_parts", PARTS_METHOD.format(rounds=parts[0]["rounds"], n=parts[0]["n"]),
             runs=[run["steps_us"] for run in parts])
    compiled = [json.loads(f.read_text()) for f in sorted(out.glob("compile*.json"))]
    if compiled:
        fold("compile", COMPILE_METHOD,
             runs=[{"label": run.get("label", ""), "rounds": run["rounds"], "n": run["n"],
                    "shapes": run["shapes"]} for run in compiled])
    if layouts:
        run = layouts[-1]
        fold("channels_last", CHANNELS_LAST_METHOD.format(rounds=run["rounds"], n=run["n"]),
             steps_us=run["steps_us"])
    if host_os:
        fold("host_os", HOST_OS_METHOD.format(rounds=host_os[0]["rounds"], n=host_os[0]["n"]),
             runs=[run["steps"] for run in host_os])
    if pieces:
        fold("host_pieces", HOST_PIECES_METHOD.format(n=pieces[0]["n"], rounds=pieces[0]["rounds"],
                                                      shape=pieces[0]["shape"]),
             runs=[{"driver_launch_equal": run["driver_launch_equal"], "host_us": run["host_us"]}
                   for run in pieces])
    if flat:
        fold("flat_call", FLAT_METHOD,
             runs=[{k: run[k] for k in ("device", "torch", "rounds", "n", "steps_us", "same")}
                   for run in flat])
    if native:
        fold("native_call", NATIVE_METHOD,
             runs=[{**{k: run[k] for k in ("device", "torch", "rounds", "n", "build_s",
                                           "steps_us")},
                    **({"label": run["label"]} if "label" in run else {})} for run in native])
    if repeats:
        fold("benchmark_repeats", REPEAT_METHOD, runs=repeats)
    if not dry_run:
        if csvs:
            shutil.copyfile(csvs[0], timings / csvs[0].name)
        if any(k in wrote for k in ("host_probe", "network", "eager_parts", "compile", "tune",
                                    "channels_last", "host_os", "host_pieces",
                                    "benchmark_repeats", "flat_call", "native_call")):
            kernels_path.write_text(json.dumps(kernels, indent=1) + "\n")
    return wrote


def report(wrote: dict) -> None:
    r = wrote.get("ratios", {})
    for shape, row in wrote.get("device_us", {}).items():
        print(f"device us {shape}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    for mode in ("fwd+bwd", "graph") if r else ():
        cells = [f"{r[(mode, c)]:.2f}" if (mode, c) in r else "-" for c in RESNET]
        print(f"dropblock {mode:8s} ratio to the floor at {', '.join(RESNET)}: {' / '.join(cells)}")
    for run in wrote.get("benchmark_repeats", {}).get("runs", []):
        for mode, shapes in run["modes"].items():
            cells = [f"{shapes[c]['structdrop dropblock']:.2f}"
                     if "structdrop dropblock" in shapes.get(c, {}) else "-" for c in RESNET]
            print(f"repeat on {run['device']}: dropblock {mode:8s} {' / '.join(cells)}")
    for i, run in enumerate(wrote.get("flat_call", {}).get("runs", [])):
        for label, row in run["steps_us"].items():
            floor = row["floor x*mask"]
            print(f"flattened call, run {i + 1}, {label}: " + ", ".join(
                f"{k} {v / floor:.2f}" for k, v in row.items() if not k.startswith("floor")))
    for i, run in enumerate(wrote.get("native_call", {}).get("runs", [])):
        for label, row in run["steps_us"].items():
            floor = row["floor x*mask"]
            print(f"native call, run {i + 1}, {label}: " + ", ".join(
                f"{k} {v / floor:.2f}" for k, v in row.items() if not k.startswith("floor")))
    host = wrote.get("host_probe", {}).get("host_us", {})
    for key in ("dropblock fwd+bwd, direct", "dropblock fwd+bwd, prepared", "native x*m fwd+bwd"):
        if key in host:
            print(f"host, tiny input: {key:32s} {host[key]} us")
    for i, run in enumerate(wrote.get("eager_parts", {}).get("runs", [])):
        for label, row in run.items():
            floor = row["floor x*mask"]
            print(f"eager parts, run {i + 1}, {label}: " + ", ".join(
                f"{k} {v / floor:.2f}" for k, v in row.items() if k != "floor x*mask"))
    for label, row in wrote.get("host_probe", {}).get("eager_fwd_bwd_us", {}).items():
        floor = row.get("floor x*mask")
        cells = {k: v for k, v in row.items() if k in ("dropblock, direct", "dropblock, prepared")}
        if isinstance(floor, float):
            print(f"eager step {label}: " + ", ".join(
                f"{k} {v / floor:.2f}" for k, v in cells.items() if isinstance(v, float)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="run_gpu.sh's output folder")
    p.add_argument("--timings", type=Path, default=TIMINGS)
    p.add_argument("--probe-n", type=int, default=300, help="PROBE_N of the round")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    report(ingest(args.out, args.timings, args.dry_run, args.probe_n))


if __name__ == "__main__":
    main()
