"""Timing helpers for the book and the benchmarks: warm-up, device synchronization, medians.

Every helper follows the same protocol:

1. **Warm-up** calls run first and are never recorded: the first calls of an op pay for lazy
   initialization, ``tf.function`` tracing, XLA compilation, cuDNN/oneDNN autotuning and cold
   caches.
2. **Synchronization** before every clock reading: GPU work is queued asynchronously, so a clock
   read right after a launch measures the launch, not the work. PyTorch uses
   :class:`torch.utils.benchmark.Timer` with a clock that synchronizes the device first;
   TensorFlow waits for its devices (``tf.test.experimental.sync_devices``, or ``.numpy()`` of the
   result); NumPy is synchronous.
3. **Repeated runs**, each of ``number`` calls, and the **median** per-call time with the
   interquartile range (IQR) as the spread: robust against the odd slow run.

The result of every helper is a :class:`Measurement`. Importing this module imports neither
PyTorch nor TensorFlow; they are imported inside the helpers that need them.

The memory-bandwidth floor: a masked multiply ``y = x * mask`` must read ``x`` and the mask and
write ``y``; no implementation can beat ``bytes moved / bandwidth``. :func:`bandwidth_floor_seconds`
computes that bound and :func:`measure_bandwidth` measures the bandwidth with a large copy.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import platform
import statistics
import sys
import time
import timeit
from typing import Any, Callable, Iterable, Sequence

__all__ = ["Measurement", "Bandwidth", "time_numpy", "time_torch", "time_tensorflow",
           "time_callable", "time_interleaved", "torch_sync", "tensorflow_sync", "sweep",
           "bandwidth_floor_seconds", "masked_multiply_bytes", "measure_bandwidth",
           "cpu_name", "torch_device_name", "tensorflow_device_name", "machine_summary",
           "timing_files", "load_timings", "load_timing_details", "cuda_graph"]


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class Measurement:
    """Per-call times of repeated runs (warm-up excluded).

    Attributes:
        times: seconds per call, one entry per run (each run is ``number`` calls).
        number: calls per run.
        warmup: warm-up calls made before the first recorded run (not in ``times``).
        label: what was timed.
        device: where it ran (CPU model or GPU name).
    """
    times: tuple
    number: int = 1
    warmup: int = 0
    label: str = ""
    device: str = ""

    def __post_init__(self):
        if len(self.times) == 0:
            raise ValueError("a Measurement needs at least one run")

    @property
    def runs(self) -> int:
        """Number of recorded runs."""
        return len(self.times)

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.times)

    @property
    def quartiles(self) -> tuple:
        """First and third quartile of the per-call times (inclusive method)."""
        if len(self.times) == 1:
            return (self.times[0], self.times[0])
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q[0], q[2])

    @property
    def iqr(self) -> float:
        """Interquartile range of the per-call times (the spread)."""
        q1, q3 = self.quartiles
        return q3 - q1

    @property
    def min(self) -> float:
        """The fastest recorded per-call time, in seconds."""
        return min(self.times)

    def ratio(self, baseline: "Measurement") -> float:
        """This median divided by ``baseline``'s median (e.g. the floor's)."""
        return self.median / baseline.median

    def __str__(self) -> str:
        return (f"{self.label or 'timing'}: median {_fmt(self.median)} per call "
                f"(IQR {_fmt(self.iqr)}, {self.runs} runs x {self.number}, "
                f"{self.warmup} warm-up) on {self.device or 'unknown device'}")


def _fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


# --------------------------------------------------------------------------- devices
def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def torch_device_name(device: Any = None) -> str:
    """Name of a torch device: the GPU's name for CUDA devices, else :func:`cpu_name`."""
    import torch
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def tensorflow_device_name() -> str:
    """Name of the first GPU TensorFlow sees, else :func:`cpu_name`."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return details.get("device_name", gpus[0].name)
    return cpu_name()


def machine_summary() -> dict:
    """Machine facts written next to every benchmark figure (no host names)."""
    return {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} logical CPUs",
            "cpu": cpu_name(), "python": platform.python_version()}


# --------------------------------------------------------------------------- the core loop
def time_callable(fn: Callable[[], Any], *, warmup: int = 1, repeat: int | None = None,
                  number: int | None = None, min_run_time: float = 0.2, min_runs: int = 5,
                  max_runs: int = 1000, clock: Callable[[], float] = time.perf_counter,
                  sync: Callable[[Any], Any] | None = None, label: str = "",
                  device: str = "") -> Measurement:
    """Time ``fn()`` with warm-up, synchronization and repeated runs.

    Args:
        fn: the zero-argument callable to time; its return value is passed to ``sync``.
        warmup: calls made (and synchronized) before anything is recorded.
        repeat: exact number of recorded runs; ``None`` runs until ``min_run_time`` seconds
            are recorded, with at least ``min_runs`` and at most ``max_runs`` runs.
        number: calls per run; ``None`` picks the smallest of 1, 2, 5, 10, ... whose run takes
            at least ``min_run_time / 20`` (these calibration calls are not recorded either).
        min_run_time: seconds of recorded runs to aim for (when ``repeat`` is None).
        clock: the clock (seconds); tests pass a fake one.
        sync: called with the last result before every clock reading after work was issued
            (e.g. wait for a GPU); ``None`` for synchronous code.
        label, device: stored in the result.

    Returns:
        A :class:`Measurement` of per-call times.
    """
    for name, value in (("warmup", warmup), ("repeat", repeat), ("number", number),
                        ("min_runs", min_runs), ("max_runs", max_runs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeat is not None and repeat < 1:
        raise ValueError(f"repeat must be >= 1 or None, got {repeat}")
    if number is not None and number < 1:
        raise ValueError(f"number must be >= 1 or None, got {number}")
    if not 1 <= min_runs <= max_runs:
        raise ValueError(f"min_runs and max_runs must satisfy 1 <= min_runs <= max_runs, "
                         f"got {min_runs} and {max_runs}")
    do_sync = sync if sync is not None else (lambda result: None)

    def run(n: int) -> float:
        do_sync(None)
        start = clock()
        result = None
        for _ in range(n):
            result = fn()
        do_sync(result)
        return clock() - start

    for _ in range(warmup):
        do_sync(fn())
    if number is None:
        number, steps = 1, (2, 2.5, 2)
        k = 0
        while run(number) < min_run_time / 20 and number < 10**6:
            number = int(number * steps[k % 3])
            k += 1
    times = []
    total = 0.0
    while True:
        elapsed = run(number)
        times.append(elapsed / number)
        total += elapsed
        if repeat is not None:
            if len(times) >= repeat:
                break
        elif (total >= min_run_time and len(times) >= min_runs) or len(times) >= max_runs:
            break
    return Measurement(tuple(times), number=number, warmup=warmup, label=label, device=device)


def time_interleaved(fns: dict, *, warmup: int = 1, rounds: int = 15, number: int = 1,
                     clock: Callable[[], float] = time.perf_counter,
                     sync: Callable[[Any], Any] | None = None, device: str = "",
                     min_run_time: float | None = None) -> dict:
    """Time several callables round-robin so that each sees the same machine load.

    On a shared or throttling machine the absolute speed drifts from second to second; the
    ratio of two ops measured minutes apart then says more about the drift than about the ops.
    Here every round runs each callable once (``number`` calls, synchronized like
    :func:`time_callable`), so the floor and the op are measured side by side and their
    medians' ratio is robust.

    Args:
        fns: ``{label: zero-argument callable}``; the order is the order within a round.
        warmup: warm-up calls of each callable before the first round (not recorded).
        rounds: recorded rounds (runs per callable); with ``min_run_time`` set, rounds go on
            until the slowest callable has that many seconds recorded (at least ``rounds``).
        number, clock, sync: as in :func:`time_callable`.
        device: stored in the results.

    Returns:
        ``{label: Measurement}`` in the order of ``fns``.
    """
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise ValueError(f"fns must be a non-empty dict of {{label: callable}}, got {fns!r:.80}")
    for name, value in (("warmup", warmup), ("rounds", rounds), ("number", number)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if rounds < 1 or number < 1:
        raise ValueError(f"rounds and number must be >= 1, got {rounds} and {number}")
    do_sync = sync if sync is not None else (lambda result: None)
    for fn in fns.values():
        for _ in range(warmup):
            do_sync(fn())
    times = {label: [] for label in fns}
    done = 0
    while True:
        for label, fn in fns.items():
            do_sync(None)
            start = clock()
            result = None
            for _ in range(number):
                result = fn()
            do_sync(result)
            times[label].append((clock() - start) / number)
        done += 1
        if done >= rounds and (min_run_time is None or
                               max(sum(t) for t in times.values()) * number >= min_run_time):
            break
    return {label: Measurement(tuple(t), number=number, warmup=warmup, label=label, device=device)
            for label, t in times.items()}


# --------------------------------------------------------------------------- per framework
def time_numpy(fn: Callable[[], Any], *, warmup: int = 1, repeat: int | None = None,
               number: int | None = None, min_run_time: float = 0.2, min_runs: int = 5,
               clock: Callable[[], float] = timeit.default_timer, label: str = "") -> Measurement:
    """Time a NumPy callable (synchronous: no device to wait for) with :func:`time_callable`."""
    return time_callable(fn, warmup=warmup, repeat=repeat, number=number,
                         min_run_time=min_run_time, min_runs=min_runs, clock=clock, sync=None,
                         label=label, device=cpu_name())


def _torch_sync(device):
    import torch
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    mps = getattr(torch, "mps", None)
    if device.type == "mps" and mps is not None:
        return mps.synchronize
    return lambda: None


def torch_sync(device: Any = None) -> Callable[[Any], None]:
    """A ``sync(result)`` for :func:`time_callable` / :func:`time_interleaved` that waits for
    ``device`` (``torch.cuda.synchronize`` on a GPU; nothing on the CPU)."""
    wait = _torch_sync(device)
    return lambda result=None: wait()


def cuda_graph(step: Callable[[], Any], device: Any = None,
               warmup: int = 3) -> Callable[[], None]:
    """The ``replay`` of a CUDA graph holding one call of ``step``: time it to see the device's
    cost without the host's launch costs. ``step`` runs ``warmup`` times first on a side stream
    (kernels compiled, allocator pools settled), as capture requires; its tensors are the
    graph's static inputs and outputs, and random ops must draw from the default generator."""
    import torch

    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def tensorflow_sync(result: Any = None) -> None:
    """Wait until TensorFlow's queued work (and ``result``) is done: the ``sync`` for TF code."""
    _tensorflow_sync(result)


def time_torch(fn: Callable[[], Any], *, device: Any = None, warmup: int = 1,
               min_run_time: float = 0.2, method: str = "blocked", num_threads: int | None = None,
               clock: Callable[[], float] | None = None, sync: Callable[[], Any] | None = None,
               label: str = "") -> Measurement:
    """Time a PyTorch callable with :class:`torch.utils.benchmark.Timer`.

    The clock waits for ``device`` (``torch.cuda.synchronize``) before every reading, so queued
    GPU work is counted. ``warmup`` calls run first (not recorded). With ``method="blocked"``
    the block size is the smallest of 1, 2, 5, 10, ... calls whose block takes at least
    ``min_run_time / 20`` (calibration calls are not recorded), and ``Timer.timeit`` runs such
    blocks until ``min_run_time`` seconds and at least 5 blocks are recorded. (The Timer's own
    ``blocked_autorange`` sizes blocks until its clock's overhead is below 1/10,000 of a block;
    a clock that synchronizes a GPU costs microseconds, so it ran one or two blocks of several
    times ``min_run_time``, and the median and spread were those of one or two numbers.)

    Args:
        fn: zero-argument callable.
        device: the device the work runs on (``"cpu"``, ``"cuda"``, a ``torch.device``);
            default CPU.
        warmup: warm-up calls before the Timer starts.
        min_run_time: seconds of measurement (the blocks above), or the minimum for
            ``adaptive_autorange``.
        method: ``"blocked"`` (the blocks above, timed with ``Timer.timeit``) or
            ``"adaptive"`` (``Timer.adaptive_autorange``, stops when the IQR is within 10% of
            the median).
        num_threads: torch threads during the measurement; default ``torch.get_num_threads()``
            (the Timer's own default would be 1).
        clock, sync: fakes for tests; by default ``timeit.default_timer`` and the device's
            synchronize.
        label: stored in the result.

    Returns:
        A :class:`Measurement` (per-call times of the Timer's runs).
    """
    import torch
    from torch.utils import benchmark
    if method not in ("blocked", "adaptive"):
        raise ValueError(f"method must be 'blocked' or 'adaptive', got {method!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time!r}")
    synchronize = sync if sync is not None else _torch_sync(device)
    base_clock = clock if clock is not None else timeit.default_timer

    def synced_clock() -> float:
        synchronize()
        return base_clock()

    for _ in range(warmup):
        fn()
    synchronize()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, timer=synced_clock, label=label,
                            num_threads=num_threads or torch.get_num_threads())
    if method == "blocked":
        times, number = _timer_blocks(timer, min_run_time)
    else:
        m = timer.adaptive_autorange(min_run_time=min_run_time,
                                     max_run_time=max(10.0, min_run_time))
        times, number = tuple(m.times), int(m.number_per_run)
    name = torch_device_name(device) if sync is None else str(device or "cpu")
    return Measurement(times, number=number, warmup=warmup, label=label, device=name)


def _timer_blocks(timer, min_run_time: float, min_runs: int = 5, max_runs: int = 1000):
    """Per-call times of blocks run with ``timer.timeit(number)`` (a ``torch.utils.benchmark``
    Timer) and the block size: blocks of the smallest of 1, 2, 5, 10, ... calls that take at
    least ``min_run_time / 20``, until ``min_run_time`` seconds and ``min_runs`` blocks."""
    number, steps, k = 1, (2, 2.5, 2), 0
    while timer.timeit(number).times[0] * number < min_run_time / 20 and number < 10**6:
        number = int(number * steps[k % 3])
        k += 1
    times: list = []
    while (sum(times) * number < min_run_time or len(times) < min_runs) and len(times) < max_runs:
        times.append(timer.timeit(number).times[0])
    return tuple(times), number


def _tensorflow_sync(result):
    """Wait for TensorFlow's work without copying the result.

    On a GPU: ``tf.test.experimental.sync_devices()``. On the CPU with synchronous execution
    (TensorFlow's default) an op or ``tf.function`` call returns only when its outputs exist, so
    there is nothing to wait for; ``.numpy()`` would also work but copies the result to NumPy
    (about 3 ms for a 25 MiB tensor on the 2-core CPU), which would be timed with the op. Only
    with asynchronous execution does the helper fall back to ``.numpy()``.
    """
    import tensorflow as tf
    sync_devices = getattr(getattr(tf.test, "experimental", None), "sync_devices", None)
    if sync_devices is not None and tf.config.list_logical_devices("GPU"):
        sync_devices()
        return
    if tf.config.experimental.get_synchronous_execution():
        return
    if result is not None:  # .numpy() blocks until the value exists
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)


def time_tensorflow(fn: Callable[[], Any], *, warmup: int = 2, repeat: int | None = None,
                    number: int | None = None, min_run_time: float = 0.2, min_runs: int = 5,
                    clock: Callable[[], float] = timeit.default_timer,
                    sync: Callable[[Any], Any] | None = None, label: str = "") -> Measurement:
    """Time a TensorFlow callable, typically a ``tf.function`` (optionally ``jit_compile=True``).

    The first calls of a ``tf.function`` trace the Python function into a graph, and with XLA
    also compile it: they are the ``warmup`` calls and are not recorded. Before every clock
    reading the helper waits for the devices (``tf.test.experimental.sync_devices`` on a GPU;
    nothing on a CPU with TensorFlow's default synchronous execution, ``.numpy()`` of the
    result with asynchronous execution). Pass tensors that already live on the device as
    closures so no host-to-device copy is timed.

    Returns:
        A :class:`Measurement` of per-call times.
    """
    device = "" if sync is not None else tensorflow_device_name()
    return time_callable(fn, warmup=warmup, repeat=repeat, number=number,
                         min_run_time=min_run_time, min_runs=min_runs, clock=clock,
                         sync=sync if sync is not None else _tensorflow_sync, label=label,
                         device=device)


# --------------------------------------------------------------------------- sweeps
def sweep(cases: Iterable[Any], measure: Callable[[Any], Any], *, desc: str = "timing",
          progress: bool = True, file=None) -> list:
    """Run ``measure(case)`` for every case with a tqdm progress bar; returns the results in order.

    The bar goes to stderr (or ``file``); without tqdm installed, or with ``progress=False``,
    the sweep runs silently.
    """
    cases = list(cases)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(cases), desc=desc, file=file if file is not None else sys.stderr,
                       leave=False)
        except ImportError:
            bar = None
    results = []
    try:
        for case in cases:
            results.append(measure(case))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


# --------------------------------------------------------------------------- bandwidth floor
def bandwidth_floor_seconds(n_elements: int, bytes_per_element: float = 4, reads: float = 2,
                            writes: float = 1, bandwidth: float = 10e9) -> float:
    """Lower bound on the time of an elementwise op: bytes moved divided by memory bandwidth.

    Args:
        n_elements: elements of each array.
        bytes_per_element: bytes per element of each array read or written (4 for float32).
        reads, writes: arrays read and written (``x * mask``: 2 reads, 1 write).
        bandwidth: bytes per second (see :func:`measure_bandwidth`).

    Returns:
        Seconds.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth}")
    if n_elements < 0 or bytes_per_element < 0 or reads < 0 or writes < 0:
        raise ValueError("n_elements, bytes_per_element, reads and writes must be >= 0")
    return n_elements * bytes_per_element * (reads + writes) / bandwidth


def masked_multiply_bytes(n_elements: int, value_bytes: int = 4, mask_bytes: int = 4,
                          backward: bool = False) -> int:
    """Bytes a masked multiply must move: read x and the mask, write y.

    ``backward=True`` adds the backward pass, which is the same multiply on the incoming
    gradient (read grad and mask, write the input's gradient). A float32 mask costs 4 bytes per
    element, a boolean mask 1.
    """
    one = n_elements * (2 * value_bytes + mask_bytes)
    return 2 * one if backward else one


@dataclasses.dataclass(frozen=True)
class Bandwidth:
    """Result of :func:`measure_bandwidth`: bytes per second of a large copy and its timing."""
    bytes_per_second: float
    bytes_moved: int
    measurement: Measurement

    def __str__(self) -> str:
        mib = self.bytes_moved // 2 / 2**20
        return (f"{self.bytes_per_second / 1e9:.1f} GB/s (copy of {mib:.0f} "
                f"MiB, median of {self.measurement.runs} runs) on {self.measurement.device}")


def measure_bandwidth(n_bytes: int = 256 * 2**20, backend: str = "numpy", device: Any = None,
                      min_run_time: float = 0.3) -> Bandwidth:
    """Estimate memory bandwidth by timing a copy of ``n_bytes`` (one read plus one write).

    Pick ``n_bytes`` well above the last-level cache. ``backend="torch"`` copies a tensor on
    ``device`` (a GPU's bandwidth when ``device="cuda"``); ``"numpy"`` copies in host memory with
    one thread. Counts ``2 * n_bytes`` moved (write-allocate traffic, if any, is not counted, so
    this is if anything an underestimate of what the hardware can do).
    """
    n = max(1, n_bytes // 4)
    if backend == "numpy":
        import numpy as np
        src = np.ones(n, dtype=np.float32)
        dst = np.empty_like(src)
        m = time_numpy(lambda: np.copyto(dst, src), min_run_time=min_run_time,
                       label="copy")
    elif backend == "torch":
        import torch
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        m = time_torch(lambda: dst.copy_(src), device=device, min_run_time=min_run_time,
                       label="copy")
    else:
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    moved = 2 * n * 4
    return Bandwidth(moved / m.median, moved, m)


# --------------------------------------------------------------------------- committed results
def timing_files() -> list:
    """Names of the committed benchmark CSVs (package data under ``data/timings``)."""
    from importlib import resources
    folder = resources.files("structdrop_tutorial").joinpath("data", "timings")
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".csv"))


def load_timings(names: Sequence[str] | None = None) -> list:
    """Rows (dicts) of the committed benchmark CSVs, read with ``importlib.resources``.

    Numeric columns (``median_s``, ``iqr_s``, ``ratio``, ...) are converted to float where they
    are not empty. Works from an installed package, without the repository.
    """
    from importlib import resources
    folder = resources.files("structdrop_tutorial").joinpath("data", "timings")
    rows = []
    for name in (names if names is not None else timing_files()):
        with folder.joinpath(name).open("r", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in _NUMERIC and value not in ("", None):
                        row[key] = float(value)
                row["file"] = name
                rows.append(row)
    return rows


def load_timing_details() -> dict:
    """``{file name: parsed JSON}`` of the committed measurement details next to the CSVs
    (``data/timings/*.json``: per-kernel device times and host costs of a GPU run, with the
    device, software and method recorded in each file)."""
    import json
    from importlib import resources
    folder = resources.files("structdrop_tutorial").joinpath("data", "timings")
    if not folder.is_dir():
        return {}
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")}


_NUMERIC = {"median_s", "iqr_s", "runs", "number", "floor_median_s", "ratio", "elements",
            "saved_bytes_per_element", "peak_bytes", "floor_peak_bytes", "peak_ratio", "threads",
            "block", "rate"}
