"""Benchmark the PyTorch structured dropout against the floor ``x * mask`` (issue 5).

Every figure is a ratio to a floor measured in the same run, because absolute times on a
shared CPU mean little:

* DropBlock's floor is ``x * mask`` forward (+ backward) with a ready-made float mask of x's
  shape: what any implementation must at least do once the mask exists.
* Spatial dropout's floor is ``x * mask`` with a ready-made ``(N, C, 1, 1)`` mask.

Each op is timed forward only (under ``torch.no_grad``) and forward+backward
(``torch.autograd.grad`` of the output with a fixed upstream gradient, so nothing accumulates).
Timings use :func:`structdrop_tutorial.timing.time_torch` (``torch.utils.benchmark`` with
warm-up and the median of repeated blocks). The measurement runs ``--rounds`` times (default
5) with the ops interleaved; the reported median and IQR pool the runs, and the ratio is the
median over rounds of (op median / floor median) from the same round.

Memory: the bytes autograd saves for the backward pass, per input element (via
``torch.autograd.graph.saved_tensors_hooks``), and the peak resident memory of one
forward+backward in a fresh process relative to the floor's (the floor's mask is created inside
the measured window, since a layer has to hold it until the backward pass).

Page faults: with glibc's default settings, tensors of 32 MiB and more (the 28x28 and 56x56
cases) get fresh pages from the OS on every allocation, and an op that allocates more than the
floor can also make the heap shrink and regrow between calls. ``run_all.py`` therefore starts
this script with ``common.MALLOC_KEEP`` (malloc keeps freed memory) unless told otherwise; each
row reports the minor page faults per call seen while it was timed, so a ratio can be read
together with what the allocator did. The peak-memory processes always use the defaults.

torchvision's ``drop_block2d`` (and ``drop_block3d``) and timm's ``DropBlock2d`` are measured
when importable.

On a GPU (``--device cuda``, the default where CUDA is available) the same rows are timed with
the device synchronized around every measurement; DropBlock is also timed with its Triton
kernels' byte masks instead of row words (``byte masks``) and with its Triton path switched off
(``tensor ops``) and, where the C++ planned call (:mod:`structdrop_tutorial.torch._native`) is
on, without it (``Python plan``; the extension is built before anything is timed), and the
peak-memory column compares
``torch.cuda.max_memory_allocated`` of one forward+backward with the floor's, in this process.
A third mode, ``graph`` (on by default there), captures one forward+backward of each op in a
CUDA graph and times its replay: the host's launch costs drop out and the ratio is the
device's. Ops draw from the default generator in that mode (capture accepts no other without
registration); an op that cannot be captured is reported and left out. The committed H100
timings (``gpu_nvidia_h100_80gb_hbm3.csv``) hold this mode's rows.

Usage::

    python benchmarks/bench_torch.py --csv timings_torch.csv           # 2 threads, 5 shapes
    python benchmarks/bench_torch.py --tiny --quick                    # one small shape, once
    python benchmarks/bench_torch.py --device cuda --csv gpu.csv       # on a GPU
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):  # the package, and common.py beside this script
    if p not in sys.path:
        sys.path.insert(0, p)

from structdrop_tutorial import timing  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _native, _triton  # noqa: E402

import common  # noqa: E402

# The ResNet-50 stages of the issue (NCHW), then a 3-D and a 1-D case (as in benchmarks/common.py).
SHAPES = [(32, 1024, 14, 14), (32, 512, 28, 28), (16, 256, 56, 56), (16, 64, 16, 16, 16),
          (32, 256, 1024)]
TINY_SHAPES = [(8, 64, 28, 28)]
BLOCK, RATE = 7, 0.1
WARMUP = 10
COLUMNS = ["framework", "op", "shape", "mode", "median_s", "iqr_s", "ratio_to_floor", "floor_op",
           "device", "torch_version", "threads", "saved_bytes_per_element", "peak_ratio",
           "page_faults_per_call", "floor_median_s", "runs", "number", "elements", "dtype",
           "data_format", "reference_version"]


# --------------------------------------------------------------------------- the ops
def make_ops(shape, seed=0, device="cpu", default_generator=False):
    """Name -> (callable(x) -> y, floor name). Masks of the floors are made here, once. The
    package's ops draw from a seeded generator of their own, or from the device's default
    generator with ``default_generator`` (what CUDA-graph capture accepts)."""
    cpu_gen = torch.Generator().manual_seed(seed)
    gen = None if default_generator else torch.Generator(device=device).manual_seed(seed)
    n, c = shape[:2]
    dense_mask = ((torch.rand(shape, generator=cpu_gen) >= RATE).float() / (1 - RATE)).to(device)
    ones = (1,) * (len(shape) - 2)
    spatial_mask = ((torch.rand((n, c) + ones, generator=cpu_gen) >= RATE).float()
                    / (1 - RATE)).to(device)
    ops = {
        "floor x*mask": (lambda x: x * dense_mask, None),
        "floor x*mask[N,C,1,1]": (lambda x: x * spatial_mask, None),
        "structdrop dropblock": (
            lambda x: sdt.dropblock(x, RATE, BLOCK, seed=gen), "floor x*mask"),
        "structdrop dropblock normalize=rate": (
            lambda x: sdt.dropblock(x, RATE, BLOCK, normalize="rate", seed=gen), "floor x*mask"),
        "structdrop spatial_dropout": (
            lambda x: sdt.spatial_dropout(x, RATE, seed=gen), "floor x*mask[N,C,1,1]"),
    }
    if torch.device(device).type == "cuda" and _triton.has_triton():
        for name, flag in (("byte masks", "ROW_WORDS"), ("tensor ops", "ENABLED")):
            ops[f"structdrop dropblock ({name})"] = (switched(
                lambda x: sdt.dropblock(x, RATE, BLOCK, seed=gen), flag, False), "floor x*mask")
        if _native.ENABLED:  # the native planned call serves "structdrop dropblock"
            ops["structdrop dropblock (Python plan)"] = (switched(
                lambda x: sdt.dropblock(x, RATE, BLOCK, seed=gen), "ENABLED", False, _native),
                "floor x*mask")
    native = {3: torch.nn.functional.dropout1d, 4: torch.nn.functional.dropout2d,
              5: torch.nn.functional.dropout3d}[len(shape)]
    ops[f"torch F.{native.__name__}"] = (lambda x: native(x, RATE, training=True),
                                          "floor x*mask[N,C,1,1]")
    if len(shape) == 5:
        try:
            from torchvision.ops import drop_block3d
            ops["torchvision drop_block3d"] = (lambda x: drop_block3d(x, RATE, BLOCK),
                                               "floor x*mask")
        except Exception:  # not installed, or installed but not importable (reported above)
            pass
    if len(shape) != 4:
        return ops  # the 2-D references below have no 1-D or 3-D variant
    try:
        from torchvision.ops import drop_block2d
        ops["torchvision drop_block2d"] = (lambda x: drop_block2d(x, RATE, BLOCK), "floor x*mask")
    except Exception:  # not installed, or installed but not importable (reported above)
        pass
    try:
        import inspect

        from timm.layers import DropBlock2d
        # timm's default (1.0.23 on) shares one mask across the channels of a sample, a cheaper
        # and different layer; where it can draw one mask per channel, that is timed as well
        layer = DropBlock2d(RATE, BLOCK).train()
        ops["timm DropBlock2d"] = (layer, "floor x*mask")
        if "couple_channels" in inspect.signature(DropBlock2d).parameters:
            per_channel = DropBlock2d(RATE, BLOCK, couple_channels=False).train()
            ops["timm DropBlock2d couple_channels=False"] = (per_channel, "floor x*mask")
    except Exception:
        pass
    return ops


def switched(fn, flag, value, module=_triton):
    """``fn`` with the Triton path's setting ``flag`` set to ``value`` during the call:
    ``ROW_WORDS=False`` for one mask byte per unit instead of row words, ``ENABLED=False`` for
    the tensor-operation path every device has; with ``module=_native``, ``ENABLED=False`` for
    the Python plan where the native one is on."""
    def call(x):
        saved = getattr(module, flag)
        setattr(module, flag, value)
        try:
            return fn(x)
        finally:
            setattr(module, flag, saved)
    return call


def available_references():
    """name -> version, None when not installed, or "unusable: <error>" when the import fails."""
    found = {}
    for name in ("torchvision", "timm"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
        except Exception as exc:  # e.g. a CUDA-linked torchvision next to a CPU-only torch
            found[name] = f"unusable: {type(exc).__name__}: {str(exc)[:100]}"
    return found


# --------------------------------------------------------------------------- memory
def saved_bytes_per_element(fn, x):
    """Bytes autograd keeps for the backward pass (distinct storages), per element of x."""
    seen = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.data_ptr() != x.data_ptr():
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(seen.values()) / x.numel()


_PEAK_CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from structdrop_tutorial import torch as sdt
torch.set_num_threads({threads})
shape, op = {shape!r}, {op!r}
def rss_kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])
x = torch.randn(shape, requires_grad=True)
g = torch.randn(shape)
gen = torch.Generator().manual_seed(0)
base = rss_kib('VmRSS')
if op == 'floor':
    mask = (torch.rand(shape, generator=gen) >= {rate}).float() / (1 - {rate})
    y = x * mask
else:
    y = sdt.dropblock(x, {rate}, {block}, seed=gen)
(gx,) = torch.autograd.grad(y, x, g)
print(json.dumps({{'peak_kib': rss_kib('VmHWM') - base}}))
"""


def cuda_peak_ratio(shape, device):
    """Peak allocated GPU memory of one dropblock fwd+bwd over the floor's (same process)."""
    out = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for op in ("floor", "dropblock"):
        x = torch.randn(shape, device=device, requires_grad=True)
        g = torch.randn(shape, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        if op == "floor":
            mask = (torch.rand(shape, device=device, generator=gen) >= RATE).float() / (1 - RATE)
            y = x * mask
        else:
            y = sdt.dropblock(x, RATE, BLOCK, seed=gen)
        (gx,) = torch.autograd.grad(y, x, g)
        torch.cuda.synchronize(device)
        out[op] = torch.cuda.max_memory_allocated(device) - base
        del x, g, y, gx
    return out["dropblock"] / out["floor"], out


def default_malloc_env() -> dict:
    """This environment without C-allocator settings (``run_all.py`` may have set some to keep
    freed memory): the peak of one step in a fresh process is read with glibc's defaults, where
    large tensors are unmapped when freed, so the high-water mark follows the live tensors."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def peak_ratio(shape, threads):
    """Peak RSS growth of one dropblock fwd+bwd over the floor's, each in a fresh process."""
    out = {}
    for op in ("floor", "dropblock"):
        code = _PEAK_CHILD.format(root=str(ROOT), threads=threads, shape=tuple(shape), op=op,
                                  rate=RATE, block=BLOCK)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=default_malloc_env())
        out[op] = json.loads(res.stdout.strip().splitlines()[-1])["peak_kib"]
    return out["dropblock"] / out["floor"], out


# --------------------------------------------------------------------------- timing
def timed(fn, x, g, mode, threads, min_run_time, device="cpu"):
    """Measurement of ``fn`` (forward, forward+backward, or forward+backward replayed from a
    CUDA graph), and the minor page faults per call seen while measuring it (fresh pages handed
    out by the OS, a cost of allocating big tensors that differs between ops and shapes; see
    the module docstring)."""
    calls = [0]
    if mode == "graph":
        replay = timing.cuda_graph(lambda: torch.autograd.grad(fn(x), x, g), device)

        def call():
            calls[0] += 1
            replay()
    elif mode == "fwd":
        def call():
            calls[0] += 1
            with torch.no_grad():
                return fn(x)
    else:
        def call():
            calls[0] += 1
            y = fn(x)
            return torch.autograd.grad(y, x, g)
    # Ten warm-up calls: the first few calls of a new shape are slow for reasons that have
    # nothing to do with the op (the allocator's heap grows and fresh pages fault in; on this
    # sandboxed machine that cost 30x the steady-state time for about ten calls).
    before = common.minor_faults()
    m = timing.time_torch(call, device=device, warmup=WARMUP, min_run_time=min_run_time,
                          num_threads=threads, label=mode)
    return m, (common.minor_faults() - before) / max(calls[0], 1)


def run(shapes, threads, rounds, min_run_time, modes, memory, device="cpu", done=None,
        progress=False):
    """The rows of every shape, op and mode; ``done(rows)`` is called after each shape (the
    CSV is written as the run goes, so a run stopped at a time limit keeps what it measured);
    ``progress`` shows a bar over the shapes (:func:`structdrop_tutorial.timing.sweep`)."""
    torch.set_num_threads(threads)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and _native.ENABLED:  # the default: built before anything is timed
        _native.module(wait=True)
        print("native planned call:", _native.status())
    name_of_device = timing.torch_device_name(device)
    references = {k: v for k, v in available_references().items()
                  if v and not str(v).startswith("unusable")}
    rows = []

    def measure_shape(shape):
        x = torch.randn(shape, device=device, requires_grad=True)
        g = torch.randn(shape, device=device)
        for mode in modes:
            ops = make_ops(shape, device=device, default_generator=mode == "graph")
            if mode == "graph":
                # The tensor-op path waits for the host (it sizes its seed list), which capture
                # forbids; and after its failed capture every later op that drew from the
                # default generator failed to capture too ("Offset increment outside graph
                # capture encountered unexpectedly", on an H100).
                ops = {k: v for k, v in ops.items() if not k.endswith("(tensor ops)")}
            times = {name: [] for name in ops}
            medians = {name: [] for name in ops}
            faults = {name: [] for name in ops}
            numbers = {name: [] for name in ops}
            failed = set()
            for _ in range(rounds):
                for name, (fn, _) in ops.items():
                    if name in failed:
                        continue
                    try:
                        m, f = timed(fn, x, g, mode, threads, min_run_time, device)
                    except Exception as exc:  # capture can fail where eager runs
                        if mode != "graph":
                            raise
                        failed.add(name)
                        print(f"{name} {tuple(shape)}: CUDA-graph capture failed "
                              f"({type(exc).__name__}: {str(exc)[:200]}); left out")
                        continue
                    times[name].extend(m.times)
                    medians[name].append(m.median)
                    numbers[name].append(m.number)
                    faults[name].append(f)
            for name, (fn, floor) in ops.items():
                ref = floor or name
                if name in failed or ref in failed:
                    continue
                ratio = statistics.median(a / b for a, b in zip(medians[name], medians[ref]))
                pooled = timing.Measurement(tuple(times[name]))
                library = name.split()[0]
                row = {"framework": "torch", "op": name, "shape": "x".join(map(str, shape)),
                       "mode": mode, "median_s": f"{pooled.median:.6g}", "iqr_s": f"{pooled.iqr:.3g}",
                       "ratio_to_floor": f"{ratio:.3f}", "floor_op": ref, "device": name_of_device,
                       "torch_version": torch.__version__, "threads": threads,
                       "saved_bytes_per_element": "", "peak_ratio": "",
                       "page_faults_per_call": "" if on_gpu else f"{statistics.median(faults[name]):.0f}",
                       "floor_median_s": f"{timing.Measurement(tuple(times[ref])).median:.6g}",
                       "runs": len(times[name]), "number": calls_per_run(numbers[name]),
                       "elements": x.numel(), "data_format": "channels_first",
                       "dtype": str(x.dtype).replace("torch.", ""),
                       "reference_version": references.get(library) or ""}
                if mode == "fwd+bwd":
                    row["saved_bytes_per_element"] = f"{saved_bytes_per_element(fn, x):.4g}"
                rows.append(row)
        if memory and "fwd+bwd" in modes:
            ratio, _ = cuda_peak_ratio(shape, device) if on_gpu else peak_ratio(shape, threads)
            for row in rows:
                if row["shape"] == "x".join(map(str, shape)) and row["op"] == "structdrop dropblock" \
                        and row["mode"] == "fwd+bwd":
                    row["peak_ratio"] = f"{ratio:.3f}"
        if done is not None:
            done(rows)

    timing.sweep(shapes, measure_shape, desc=f"torch {device}", progress=progress)
    return rows


def calls_per_run(numbers) -> int:
    """Calls per timed run of an op (each round picks its own; the median of the rounds')."""
    return int(statistics.median(numbers))


def print_table(rows, header=True):
    line = (f"{'op':38s} {'shape':16s} {'mode':8s} {'median':>10s} {'ratio':>7s} "
            f"{'saved B/el':>10s} {'peak':>6s} {'faults/call':>11s}")
    if header:
        print(line)
        print("-" * len(line))
    for r in rows:
        print(f"{r['op']:38s} {r['shape']:16s} {r['mode']:8s} {float(r['median_s']) * 1e3:8.2f}ms "
              f"{float(r['ratio_to_floor']):7.2f} {r['saved_bytes_per_element']:>10s} {r['peak_ratio']:>6s} "
              f"{r['page_faults_per_call']:>11s}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, help="write the rows to this CSV file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved repetitions (default 5; 1 with --quick)")
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="one round (smoke test)")
    parser.add_argument("--tiny", action="store_true", help="one small shape (CI, CPU)")
    parser.add_argument("--modes", default="fwd,fwd+bwd",
                        help="fwd, fwd+bwd, graph (CUDA only; added by default there)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (stderr)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda where available)")
    parser.add_argument("--shapes", help="comma-separated shapes such as 32x1024x14x14 "
                        "(default: the five cases above)")
    parser.add_argument("--triton-config", type=Path,
                        help="JSON from gpu_tune.py: launch parameters of the Triton path")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in ("fwd", "fwd+bwd", "graph")]
    if unknown:
        parser.error(f"--modes takes fwd, fwd+bwd and graph, got {', '.join(map(repr, unknown))}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    on_gpu = torch.device(args.device).type == "cuda"
    if "graph" in args.modes.split(",") and not on_gpu:
        parser.error("--modes graph needs --device cuda")
    if on_gpu and args.modes == parser.get_default("modes"):
        args.modes += ",graph"
    if args.triton_config:
        config = json.loads(args.triton_config.read_text())["config"]
        for name, value in config.items():
            if not hasattr(_triton, name):
                raise SystemExit(f"--triton-config: unknown parameter {name}")
            setattr(_triton, name, value)
        print("Triton launch parameters:", config)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    if args.shapes:
        shapes = []
        for item in args.shapes.split(","):
            try:
                shape = tuple(int(n) for n in item.split("x"))
            except ValueError:
                shape = ()
            if not 3 <= len(shape) <= 5 or min(shape) < 1:
                parser.error(f"--shapes: {item!r} is not a shape such as 32x1024x14x14 "
                             "(rank 3 to 5, sizes >= 1)")
            shapes.append(shape)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    refs = available_references()
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"{timing.torch_device_name(args.device)}")
    for name, version in refs.items():
        print(f"{name}: {version if version else 'not installed (not measured)'}")
    if args.device == "cpu" and common.malloc_setting() == "default":
        print("C allocator: default settings, so large tensors may fault in fresh pages on every "
              "call (see the faults column); run_all.py starts this script with "
              "common.MALLOC_KEEP")
    printed = [0]

    def done(rows):
        print_table(rows[printed[0]:], header=printed[0] == 0)
        printed[0] = len(rows)
        if args.csv:
            write_rows(args.csv, rows)

    rows = run(shapes, args.threads, rounds, args.min_run_time, args.modes.split(","),
               memory=not args.no_memory, device=args.device, done=done,
               progress=not args.no_progress)
    if args.csv:
        print(f"wrote {args.csv}")
    return rows


def write_rows(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
