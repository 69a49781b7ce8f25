"""Benchmark the TensorFlow structured dropout against the floor ``x * mask`` (issue 5).

Every figure is a ratio to a floor measured in the same run, because absolute times on a
shared CPU mean little:

* DropBlock's floor is ``x * mask`` with a ready-made float mask of x's shape: what any
  implementation must do at least once the mask exists.
* Spatial dropout's floor is ``x * mask`` with a ready-made ``(N, 1, 1, C)`` mask.

Every op is timed forward only (a ``tf.function`` returning the output) and forward + backward
(one ``tf.function`` returning the output and the input's gradient for a fixed upstream
gradient, so neither pass is pruned), each once as a plain graph and once with
``jit_compile=True`` (XLA). Inputs are channels_last (NHWC).

Timing: :func:`structdrop_tutorial.timing.time_tensorflow` (warm-up calls first, which trace and
compile; the device is waited for before every clock reading, which on a CPU, where an op
returns when its work is done, means nothing is waited for and nothing is copied). The ops of one case are
measured in interleaved rounds (floor, op, floor, op, ...) so that load from other processes
hits all of them alike; the median and IQR pool the rounds, and the ratio is the op's median
over the floor's median. Each row also gives the minor page faults per call seen while its
rounds ran: TensorFlow allocates on its thread-pool threads, whose memory glibc keeps apart
unless ``MALLOC_ARENA_MAX=1`` (part of ``common.MALLOC_KEEP``, which ``run_all.py`` sets).

keras-cv's ``DropBlock2D`` is measured when keras-cv is importable (it is not a dependency).

Usage::

    python benchmarks/bench_tensorflow.py --csv timings_tf.csv     # 2 threads, 5 shapes
    python benchmarks/bench_tensorflow.py --quick --tiny           # smoke run
    python benchmarks/bench_tensorflow.py --shapes 16x256x56x56 --jit off --modes fwd+bwd
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import common  # noqa: E402

# NHWC: the ResNet-50 stages, then a 3-D and a 1-D case (as in benchmarks/common.py)
SHAPES = [(32, 14, 14, 1024), (32, 28, 28, 512), (16, 56, 56, 256), (16, 16, 16, 16, 64),
          (32, 1024, 256)]
TINY_SHAPES = [(4, 14, 14, 64), (2, 28, 28, 32)]
BLOCK, RATE = 7, 0.1


def nchw_label(shape) -> str:
    """The case's name in every framework's rows: its NCHW shape (channels moved forward)."""
    return "x".join(map(str, (shape[0], shape[-1]) + tuple(shape[1:-1])))


COLUMNS = ["framework", "op", "shape", "mode", "jit", "median_s", "iqr_s", "ratio_to_floor",
           "floor_op", "floor_median_s", "device", "tf_version", "keras_version", "threads",
           "runs", "number", "case", "data_format", "dtype", "elements", "reference_version",
           "page_faults_per_call"]


def keras_cv_version() -> str:
    """The installed keras-cv's version, or "" (its rows name the version they measured)."""
    try:
        from importlib.metadata import version
        return version("keras-cv")
    except Exception:
        return ""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", "--out", dest="csv", type=Path, default=None,
                   help="CSV file to write (default: print only)")
    p.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    p.add_argument("--tiny", action="store_true", help="small shapes")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: $OMP_NUM_THREADS or 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per op (default 15)")
    p.add_argument("--jit", choices=["both", "off", "on"], default="both",
                   help="plain graphs, XLA, or both (default)")
    p.add_argument("--modes", default="fwd,fwd+bwd",
                   help="comma-separated passes to time: fwd, fwd+bwd (default both)")
    p.add_argument("--shapes", help="comma-separated cases by their NCHW names, such as "
                   "32x1024x14x14 (run as NHWC; default: the five cases above)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (stderr)")
    args = p.parse_args(argv)
    args.shapes = [nhwc_shape(item, p) for item in args.shapes.split(",")] if args.shapes else None
    args.threads = int(args.threads or os.environ.get("OMP_NUM_THREADS") or 2)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    return args


def make_ops(shape, seed=0):
    """Name -> (fn(x) -> y, floor name). Floors' masks are made here, once, outside the timing."""
    import keras
    import tensorflow as tf

    from structdrop_tutorial import tensorflow as sdtf
    rng = tf.random.Generator.from_seed(seed)
    n, c = shape[0], shape[-1]
    full_mask = tf.cast(rng.uniform(shape) >= RATE, tf.float32) / (1.0 - RATE)
    ones = (1,) * (len(shape) - 2)
    channel_mask = tf.cast(rng.uniform((n,) + ones + (c,)) >= RATE, tf.float32) / (1.0 - RATE)
    gens = {k: keras.random.SeedGenerator(seed + k) for k in range(4)}
    ops = {
        "floor x*mask": (lambda x: x * full_mask, None),
        "dropblock": (lambda x: sdtf.dropblock(x, RATE, BLOCK, seed=gens[0]), "floor x*mask"),
        "dropblock dense-ref": (lambda x: sdtf.dropblock(x, RATE, BLOCK, seed=gens[1],
                                                         sampler="dense"), "floor x*mask"),
        "floor x*mask(N,1,1,C)": (lambda x: x * channel_mask, None),
        "spatial_dropout": (lambda x: sdtf.spatial_dropout(x, RATE, seed=gens[2]),
                            "floor x*mask(N,1,1,C)"),
    }
    if len(shape) != 4:
        return ops  # keras-cv has a 2-D DropBlock only
    try:  # keras-cv is optional and often broken on Keras 3
        import keras_cv  # noqa: F401
        layer = keras_cv.layers.DropBlock2D(rate=RATE, block_size=BLOCK, seed=seed)
        # keras-cv's layer fails inside tf.function on Keras 3, so it is timed eagerly, against
        # the same floor run eagerly (names ending in "(eager)" run without tf.function)
        ops["floor x*mask (eager)"] = (lambda x: x * full_mask, None)
        ops["keras_cv DropBlock2D (eager)"] = (lambda x: layer(x, training=True),
                                               "floor x*mask (eager)")
    except Exception as exc:  # ImportError, or its import failing on this Keras
        print(f"keras_cv DropBlock2D not measured: {type(exc).__name__}: {exc}"[:200],
              file=sys.stderr)
    return ops


def forward(op, x, jit, eager=False):
    import tensorflow as tf

    def step():
        return op(x)
    return step if eager else tf.function(step, jit_compile=jit, reduce_retracing=True)


def fwd_bwd(op, x, dy, jit, eager=False):
    import tensorflow as tf

    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = op(x)
        return y, tape.gradient(y, x, output_gradients=dy)
    return step if eager else tf.function(step, jit_compile=jit, reduce_retracing=True)


def nhwc_shape(item: str, parser) -> tuple:
    """The NHWC shape of a case named by its NCHW shape (``nchw_label``'s inverse)."""
    try:
        nchw = tuple(int(v) for v in item.strip().split("x"))
    except ValueError:
        nchw = ()
    if not 3 <= len(nchw) <= 5 or min(nchw) < 1:
        parser.error(f"--shapes: {item!r} is not a shape such as 32x1024x14x14 "
                     "(rank 3 to 5, sizes >= 1)")
    return (nchw[0],) + nchw[2:] + (nchw[1],)


def measure_case(shape, jit, rounds, quick, mode="fwd+bwd"):
    """Interleaved rounds of every op; returns name -> (per-call seconds of each round, floor
    name, calls per round, minor page faults per call during the rounds)."""
    import tensorflow as tf

    from structdrop_tutorial.timing import time_tensorflow
    x = tf.random.stateless_normal(shape, seed=[1, 2])
    dy = tf.random.stateless_normal(shape, seed=[3, 4])
    ops = make_ops(shape)
    steps, numbers, times, faults = {}, {}, {}, {}
    for name, (op, _) in ops.items():
        eager = name.endswith("(eager)")
        if eager and jit:
            continue  # eager ops have no XLA variant
        try:
            steps[name] = (fwd_bwd(op, x, dy, jit, eager) if mode == "fwd+bwd"
                           else forward(op, x, jit, eager))
            # warm-up (trace, compile) and calibration: calls per round of >= ~20 ms
            # (>= ~10 ms for a --quick smoke run)
            m = time_tensorflow(steps[name], warmup=2, repeat=1, min_run_time=0.2 if quick else 0.4)
            numbers[name] = m.number
            times[name], faults[name] = [], 0
        except Exception as exc:  # e.g. keras-cv failing inside tf.function
            print(f"{name}: not measured ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
            steps.pop(name, None)
    for _ in range(rounds):
        for name, step in steps.items():
            before = common.minor_faults()
            m = time_tensorflow(step, warmup=0, repeat=1, number=numbers[name])
            faults[name] += common.minor_faults() - before
            times[name].append(m.times[0])
    return {name: (t, ops[name][1], numbers[name], faults[name] / (rounds * numbers[name]))
            for name, t in times.items()}


def quartile_spread(ts):
    if len(ts) < 2:
        return 0.0
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[2] - q[0]


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from structdrop_tutorial.timing import sweep, tensorflow_device_name
    device = tensorflow_device_name()
    reference = keras_cv_version()
    shapes = args.shapes or (TINY_SHAPES if args.tiny else SHAPES)
    jits = {"both": [False, True], "off": [False], "on": [True]}[args.jit]
    rows = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("fwd", "fwd+bwd"):
            raise SystemExit(f"--modes: unknown pass {mode!r} (allowed: fwd, fwd+bwd)")
    cases = [(shape, jit, mode) for shape in shapes for jit, mode in itertools.product(jits, modes)]

    def measure(case):  # one case: a shape, graph or XLA, a pass
        shape, jit, mode = case
        results = measure_case(shape, jit, args.rounds, args.quick, mode)
        medians = {name: statistics.median(t) for name, (t, _, _, _) in results.items()}
        label = f"{mode} xla" if jit else mode
        elements = 1
        for size in shape:
            elements *= size
        for name, (t, floor, number, faults) in results.items():
            ratio = medians[name] / medians[floor] if floor else 1.0
            rows.append({"framework": "tensorflow", "op": name,
                         "shape": "x".join(map(str, shape)), "case": nchw_label(shape),
                         "mode": label, "jit": jit,
                         "median_s": f"{medians[name]:.6g}",
                         "iqr_s": f"{quartile_spread(t):.3g}",
                         "ratio_to_floor": f"{ratio:.3f}", "floor_op": floor or name,
                         "floor_median_s": f"{medians[floor or name]:.6g}",
                         "device": device, "tf_version": tf.__version__,
                         "keras_version": keras.__version__, "threads": args.threads,
                         "runs": len(t), "number": number,
                         "data_format": "channels_last", "dtype": "float32",
                         "elements": elements, "page_faults_per_call": f"{faults:.4g}",
                         "reference_version": reference if name.startswith("keras_cv") else ""})
        print_rows([r for r in rows if r["shape"] == "x".join(map(str, shape))
                    and r["mode"] == label])

    sweep(cases, measure, desc="tensorflow", progress=not args.no_progress)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv}")
    return 0


def print_rows(rows):
    if not rows:
        return
    r0 = rows[0]
    print(f"\n{r0['shape']} (NHWC), {r0['mode']}, block {BLOCK}, rate {RATE} on {r0['device']}, "
          f"{r0['threads']} threads")
    for r in rows:
        print(f"  {r['op']:<24s} median {float(r['median_s']) * 1e3:9.2f} ms "
              f"(IQR {float(r['iqr_s']) * 1e3:7.2f})  {float(r['ratio_to_floor']):6.2f}x "
              f"{r['floor_op']:24s} {float(r['page_faults_per_call']):8.0f} faults/call")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
