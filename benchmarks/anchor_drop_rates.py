"""Measure the drop fraction the reference DropBlock layers really give, for chapter 5.

    python benchmarks/anchor_drop_rates.py            # writes the package's committed JSON
    python benchmarks/anchor_drop_rates.py --out /tmp/rates.json --batches 2

Chapter 5 models each library's recipe with the package's own building blocks and computes the
drop fraction it gives exactly. This script runs the libraries themselves, where they are
installed (torchvision ``drop_block2d``; timm ``DropBlock2d``, with its default mask shared by
the channels of a sample and, where it has ``couple_channels``, one mask per channel), on
batches of ones, and records the fraction of zeros in the output: the mean over ``--batches``
independent batches and its standard error (the batches' spread over the square root of their
number). A library that is missing is reported and left out. The book's environment has none of
them: the committed file was measured in a separate environment and names its versions.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import platform
import statistics
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "structdrop_tutorial" / "data" / "anchors" / \
    "drop_fractions.json"
#: (rate, block, map side): the ResNet-50 stages of the paper, and rate 1 with a small block
#: (where the paper's gamma is no probability once blocks overlap; chapter 5)
SETTINGS = ((0.1, 7, 14), (0.1, 7, 28), (0.1, 7, 56), (1.0, 3, 14))
BATCH, CHANNELS = 256, 8


def layers(torch):
    """{name: (library, callable(x, rate, block) -> y)} for the installed references."""
    found = {}
    try:
        from torchvision.ops import drop_block2d
        found["torchvision drop_block2d"] = (
            "torchvision", lambda x, p, b: drop_block2d(x, p, b, training=True))
    except Exception as exc:  # not installed, or not importable with this torch
        print(f"torchvision not measured: {type(exc).__name__}: {exc}"[:200], file=sys.stderr)
    try:
        from timm.layers import DropBlock2d

        def timm_layer(**kw):
            return lambda x, p, b: DropBlock2d(p, b, **kw).train()(x)
        found["timm DropBlock2d"] = ("timm", timm_layer())
        if "couple_channels" in inspect.signature(DropBlock2d).parameters:
            found["timm DropBlock2d couple_channels=False"] = (
                "timm", timm_layer(couple_channels=False))
    except Exception as exc:
        print(f"timm not measured: {type(exc).__name__}: {exc}"[:200], file=sys.stderr)
    return found


def measure(fn, torch, rate, block, side, batches, seed):
    """Mean and standard error of the dropped fraction over ``batches`` batches of ones."""
    torch.manual_seed(seed)
    fractions = []
    with torch.no_grad():
        for _ in range(batches):
            y = fn(torch.ones(BATCH, CHANNELS, side, side), rate, block)
            fractions.append((y == 0).double().mean().item())
    se = statistics.stdev(fractions) / len(fractions) ** 0.5 if len(fractions) > 1 else float("nan")
    return statistics.fmean(fractions), se


def versions(names) -> dict:
    from importlib.metadata import version
    return {name: version(name) for name in ["torch", *sorted(set(names))]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON to write (default: {OUT})")
    p.add_argument("--batches", type=int, default=20, help="independent batches per setting")
    args = p.parse_args(argv)
    if args.batches < 2:
        p.error(f"--batches must be >= 2 (the standard error needs two), got {args.batches}")
    import torch
    torch.set_num_threads(2)
    found = layers(torch)
    if not found:
        raise SystemExit("none of torchvision and timm is installed: nothing to measure")
    results = []
    for name, (library, fn) in found.items():
        for k, (rate, block, side) in enumerate(SETTINGS):
            mean, se = measure(fn, torch, rate, block, side, args.batches, seed=k)
            results.append({"op": name, "library": library, "rate": rate, "block": block,
                            "map": [side, side], "dropped": round(mean, 6),
                            "standard_error": round(se, 6)})
            print(f"{name:40s} rate {rate:<4g} block {block} {side}x{side}: "
                  f"dropped {mean:.4f} +- {se:.4f}")
    record = {
        "what": "fraction of zeros in the output of each layer on batches of ones",
        "batch_shape": [BATCH, CHANNELS], "batches": args.batches,
        "versions": versions(lib for lib, _ in found.values()),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
