"""Measure the pieces of the Triton DropBlock path on a GPU and pick its launch parameters.

Prints (and writes as JSON with ``--out``):

* host-side costs per call (microseconds of wall time, the GPU idle): the argument plan, the key
  draw, the counter allocation, an empty Triton launch, ``autograd.Function.apply``, and a whole
  ``dropblock`` forward and forward+backward on a tiny input (where the host is the bottleneck);
* device time (``triton.testing.do_bench``, median, L2 flushed) of the byte-mask kernel for
  several maps-per-program targets and warp counts, of the row-word mask kernel for several
  grid rows per program and warp counts, and of both product kernels for several block sizes,
  at the three ResNet-50 shapes, against the floor ``x * mask`` measured the same way;
* the launch parameters with the lowest total time over the shapes (``--out`` JSON: pass it to
  ``bench_torch.py --triton-config`` to measure with them).

Usage (on a CUDA machine)::

    python benchmarks/gpu_tune.py --out triton_config.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _triton, functional  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import host_probe  # noqa: E402  (the host-time loop and the benchmark's gamma)
from bench_torch import switched  # noqa: E402  (an op with one Triton setting changed)

SHAPES = [(32, 1024, 14, 14), (32, 512, 28, 28), (16, 256, 56, 56)]
BLOCK, RATE = 7, 0.1


def wall_us(fn, n=300):
    """Host wall time per call, one loop of ``n`` calls (host_probe.py takes a median of three)."""
    return host_probe.wall_us(fn, "cuda", n, repeats=1)


def device_us(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def host_costs(dev):
    import triton

    @triton.jit
    def nothing(ptr):
        pass

    tiny = torch.randn(1, 1, 16, 16, device=dev, requires_grad=True)
    g = torch.ones_like(tiny)
    mask = torch.ones_like(tiny)
    one = torch.empty(1, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    costs = {
        "plan (cached checks + gamma)": lambda: functional._dropblock_plan(
            (32, 1024, 14, 14), RATE, BLOCK, "channels_first", "exact", "valid", (), "batch"),
        "key: _triton.new_key (on the host where it can)": lambda: _triton.new_key(dev, gen),
        "counter: zeros(1)": lambda: torch.zeros(1, dtype=torch.int64, device=dev),
        "empty bool like x": lambda: torch.empty(tiny.shape, dtype=torch.bool, device=dev),
        "empty Triton launch": lambda: nothing[(1,)](one),
        "Function.apply": lambda: Identity.apply(tiny),
        "x * mask (tiny)": lambda: tiny * mask,
        "x * mask fwd+bwd (tiny)": lambda: torch.autograd.grad(tiny * mask, tiny, g),
        "dropblock fwd (tiny)": lambda: sdt.dropblock(tiny.detach(), RATE, BLOCK, seed=gen),
        "dropblock fwd+bwd (tiny)": lambda: torch.autograd.grad(
            sdt.dropblock(tiny, RATE, BLOCK, seed=gen), tiny, g),
    }
    # the pieces of a row-word and a byte-mask forward, one by one
    shape, block = tuple(tiny.shape), (BLOCK, BLOCK)
    gamma = host_probe.gamma_of(shape)
    key = _triton.new_key(dev, gen)
    rgeo = _triton.row_geometry(shape, block, "valid", _triton.ROW_ITEMS)
    bgeo = _triton.geometry(shape, block, "valid", _triton.TILE_UNITS)
    words = _triton._row_buffer(rgeo, torch.device(dev), gamma, key)  # words, then the count
    keep, count = _triton._mask_bytes(bgeo, shape, dev, gamma, key)
    out_ = torch.empty_like(tiny)
    costs.update({
        "row-word mask kernel + buffers": lambda: _triton._row_buffer(rgeo, torch.device(dev),
                                                                      gamma, key),
        "byte mask kernel + buffers": lambda: _triton._mask_bytes(bgeo, shape, dev, gamma, key),
        "row-word product launch": lambda: _triton._apply(tiny.detach(), words, None, True, out_),
        "byte product launch": lambda: _triton._apply(tiny.detach(), keep, count, True, out_),
        "MaskedScale.apply fwd (row words)": lambda: _triton.MaskedScale.apply(
            tiny, words, None, True, False),
        "MaskedScale fwd+bwd (row words)": lambda: torch.autograd.grad(
            _triton.MaskedScale.apply(tiny, words, None, True, False), tiny, g),
        "_triton.dropblock fwd (no_grad)": lambda: _no_grad(
            _triton.dropblock, tiny, gamma, block, "valid", "batch", RATE, gen, False),
    })
    out = {name: round(wall_us(fn), 2) for name, fn in costs.items()}
    for name in ("dropblock fwd (tiny)", "dropblock fwd+bwd (tiny)"):  # one mask byte per unit
        bytes_ = switched(lambda _, fn=costs[name]: fn(), "ROW_WORDS", False)
        out[name.replace("tiny", "tiny, byte masks")] = round(wall_us(lambda: bytes_(None)), 2)
    return out


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def cprofile(dev, n=2000, top=35):
    """cProfile of ``n`` tiny DropBlock forward+backward steps (row words, then byte masks):
    which Python functions the host time goes to."""
    import cProfile
    import io
    import pstats
    tiny = torch.randn(1, 1, 16, 16, device=dev, requires_grad=True)
    g = torch.ones_like(tiny)
    gen = torch.Generator(device=dev).manual_seed(0)

    def steps(_=None):
        for _ in range(n):
            torch.autograd.grad(sdt.dropblock(tiny, RATE, BLOCK, seed=gen), tiny, g)
        torch.cuda.synchronize()

    text = []
    for rows in (True, False):
        run = switched(steps, "ROW_WORDS", rows)
        run(None)  # warm
        prof = cProfile.Profile()
        prof.enable()
        run(None)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        text.append(f"==== row words: {rows}, {n} steps ====\n" + buf.getvalue())
    return "\n".join(text)


def sweep(dev):
    results = {"mask": {}, "apply": {}, "rows": {}, "apply_rows": {}, "floor": {}}
    gen = torch.Generator(device=dev).manual_seed(0)
    for shape in SHAPES:
        s = "x".join(map(str, shape))
        x = torch.randn(shape, device=dev)
        m = (torch.rand(shape, device=dev) >= RATE).float()
        results["floor"][s] = device_us(lambda: x * m)
        block = (BLOCK, BLOCK)
        gamma = host_probe.gamma_of(shape)
        key = _triton.new_key(dev, gen)
        for units in (256, 1024, 4096):  # only changes tiles of whole maps (14x14 here)
            for warps in (1, 2, 4):
                _triton.TILE_UNITS, _triton.MASK_WARPS = units, warps
                t = device_us(lambda: _triton.keep_mask(shape, dev, gamma, block, "valid", key))
                results["mask"].setdefault(f"{units}/{warps}", {})[s] = t
        keep, count = _triton.keep_mask(shape, dev, gamma, block, "valid", key)
        out = torch.empty_like(x)
        for size in (1024, 2048, 4096, 8192):
            for warps in (4, 8):
                _triton.APPLY_BLOCK, _triton.APPLY_WARPS = size, warps
                t = device_us(lambda: _triton._apply(x, keep, count, True, out))
                results["apply"].setdefault(f"{size}/{warps}", {})[s] = t
        for items in (128, 256, 512):  # row words
            for warps in (1, 2, 4):
                _triton.ROW_ITEMS, _triton.ROW_WARPS = items, warps
                t = device_us(lambda: _triton.row_words(shape, dev, gamma, block, "valid", key))
                results["rows"].setdefault(f"{items}/{warps}", {})[s] = t
        rgeo = _triton.row_geometry(shape, block, "valid", _triton.ROW_ITEMS)
        words = _triton._row_buffer(rgeo, torch.device(dev), gamma, key)  # words, the count
        for size in (2048, 4096):  # a compile per row width and configuration: fewer here
            for warps in (4, 8):
                _triton.APPLY_BLOCK, _triton.APPLY_WARPS = size, warps
                t = device_us(lambda: _triton._apply(x, words, None, True, out))
                results["apply_rows"].setdefault(f"{size}/{warps}", {})[s] = t
    return results


def best(table):
    return min(table, key=lambda k: sum(table[k].values()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--host-only", action="store_true", help="host costs only, no kernel sweep")
    p.add_argument("--cprofile", type=Path, help="write a cProfile of tiny steps to this file")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    costs = host_costs(dev)
    print("\nhost wall time per call (us):")
    for name, t in costs.items():
        print(f"  {name:34s} {t:8.2f}")
    if args.cprofile:
        args.cprofile.write_text(cprofile(dev))
    if args.host_only:
        if args.out:
            args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(dev),
                                            "torch": torch.__version__, "host_us": costs}, indent=1))
        return costs
    res = sweep(dev)
    print("\ndevice time (us, median):  floor x*mask:",
          {s: round(t, 1) for s, t in res["floor"].items()})
    for part in ("mask", "apply", "rows", "apply_rows"):
        print(f"  {part} kernel, config -> per shape")
        for cfg, per in res[part].items():
            print(f"    {cfg:10s} " + "  ".join(f"{t:8.1f}" for t in per.values())
                  + f"   (sum {sum(per.values()):.1f})")
    units, warps = map(int, best(res["mask"]).split("/"))
    items, rwarps = map(int, best(res["rows"]).split("/"))
    # the product kernels share their launch parameters: the best for the row words, which the
    # benchmark shapes use
    size, awarps = map(int, best(res["apply_rows"]).split("/"))
    config = {"TILE_UNITS": units, "MASK_WARPS": warps, "ROW_ITEMS": items, "ROW_WARPS": rwarps,
              "APPLY_BLOCK": size, "APPLY_WARPS": awarps}
    print("\nbest:", config)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(dev),
                                        "torch": torch.__version__, "config": config,
                                        "host_us": costs, "device_us": res}, indent=1))
    return config


if __name__ == "__main__":
    main()
