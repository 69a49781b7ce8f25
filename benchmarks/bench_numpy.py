"""Benchmark the NumPy reference against the floor ``x * mask`` (forward only).

    python benchmarks/bench_numpy.py [--tiny] [--quick] [--out numpy.csv]

NumPy has no automatic differentiation, so only the forward pass is timed. Arrays are
channels_last (the NumPy default). Ops, each measured round-robin with the floor on the same
input (see ``structdrop_tutorial.timing.time_interleaved``):

* ``floor``: ``x * mask`` with a ready float32 mask (the cost of applying any mask);
* ``dropout``: i.i.d. dropout (one uniform per unit);
* ``spatial_dropout``: one draw per (sample, channel);
* ``dropblock``: per-channel DropBlock (the paper's), the package's sparse fast path;
* ``dropblock (dense reference)``: the same distribution via one uniform per seed position and a
  windowed OR (what the fast path replaces);
* ``dropblock share=channels``: one block mask per sample, shared by its channels.
"""
from __future__ import annotations

import common

args = common.parse_args(__doc__.splitlines()[0])

import numpy as np  # noqa: E402  (after the thread cap)

from structdrop_tutorial import numpy as sdn  # noqa: E402
from structdrop_tutorial.gamma import clip_block, resolve_gamma  # noqa: E402
from structdrop_tutorial.shapes import seed_grid_shape, spatial_dims  # noqa: E402
from structdrop_tutorial.timing import cpu_name, sweep, time_interleaved  # noqa: E402

DATA_FORMAT = "channels_last"


def measure(case: common.Case) -> list:
    rng = np.random.default_rng(0)
    shape = case.layout(DATA_FORMAT)
    x = rng.standard_normal(shape, dtype=np.float32)
    mask = ((rng.random(shape) >= case.rate) / (1 - case.rate)).astype(np.float32)
    block = clip_block(case.block, spatial_dims(shape, DATA_FORMAT))
    grid = seed_grid_shape(shape, block, DATA_FORMAT)
    g = resolve_gamma("exact", case.rate, block, spatial_dims(shape, DATA_FORMAT))
    fns = {
        "floor": lambda: x * mask,
        "dropout": lambda: sdn.dropout(x, case.rate, seed=rng),
        "spatial_dropout": lambda: sdn.spatial_dropout(x, case.rate, seed=rng),
        "dropblock": lambda: sdn.dropblock(x, case.rate, case.block, seed=rng),
        "dropblock (dense reference)": lambda: sdn.dropblock(x, case.rate, case.block,
                                                             gamma=g, uniform=rng.random(grid)),
        "dropblock share=channels": lambda: sdn.dropblock(x, case.rate, case.block, seed=rng,
                                                          share="channels"),
    }
    ms = time_interleaved(fns, warmup=1, rounds=args.rounds, device=cpu_name())
    env = common.environment_columns("numpy", np.__version__, cpu_name(), "cpu", args.threads)
    return [common.make_row(env, case, op, "fwd", m, ms["floor"], DATA_FORMAT)
            for op, m in ms.items()]


def main() -> list:
    results = sweep(common.cases(args), measure, desc="numpy", progress=not args.no_progress)
    rows = [r for rs in results for r in rs]
    common.print_ratios(rows)
    if args.out:
        print(f"\nwrote {common.write_csv(rows, args.out)}")
    return rows


if __name__ == "__main__":
    main()
