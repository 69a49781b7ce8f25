"""Compile the Triton DropBlock kernels for NVIDIA GPUs on a machine without one; count SASS.

Triton compiles ahead of time for any target with the ``ptxas`` it ships, so this script needs
Triton but no GPU and no CUDA driver. It runs the host side of the Triton path
(:func:`structdrop_tutorial.torch._triton.keep_mask`, ``seed_grid`` and the product) on CPU
tensors with the kernel launches intercepted, so every kernel is compiled with exactly the
arguments, constexprs and specializations (integers equal to 1, 16-byte alignment, 32- or
64-bit integers) a real launch would use, then:

* ``--check`` (what ``tests/test_torch_triton_compile.py`` runs): compiles the kernels of a set
  of geometries (1-, 2-, 3-D, valid/padded, even and clipped blocks, both threshold widths,
  the product for four dtypes) for every ``--arch`` and exits non-zero on the first failure.
  The CPU test suite runs the kernels in Triton's interpreter, which accepts some programs the
  compiler rejects; this closes that gap.
* otherwise: prints, for the three ResNet-50 shapes of issue 5 and 1, 2 and 4 warps, the
  static SASS instruction count of both mask kernels (byte masks and row words) and the
  warp-instructions per unit it implies (static count x warps / units per program; loops
  counted once: the row-word kernel unrolls its loops, so it is counted in full), tensor-core
  instructions and the most frequent opcodes. A static count is not a timing; it says where
  the instructions go.

Usage::

    python benchmarks/triton_sass.py                      # SASS table for sm_90
    python benchmarks/triton_sass.py --check --arch 75,80,90
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from structdrop_tutorial import clip_block  # noqa: E402
from structdrop_tutorial.torch import _triton, _triton_channels_last  # noqa: E402
from structdrop_tutorial.torch import _triton_kernels as kernels  # noqa: E402

SHAPES = [(32, 1024, 14, 14), (32, 512, 28, 28), (16, 256, 56, 56)]
# (shape, block, seeds, gamma): every kernel variant the tests run, in a few calls
CHECKS = [((4, 3, 40), 5, "padded", 0.1), ((37, 1, 9), 9, "valid", 0.7),
          ((2, 3, 9, 9), 3, "valid", 0.1), ((1, 1, 70, 130), (2, 3), "padded", 0.7),
          ((37, 1, 5, 7), 3, "padded", 0.3), ((2, 2, 5, 6, 7), (2, 3, 3), "padded", 0.1),
          ((1, 1, 3, 70, 9), 2, "valid", 1.0), ((32, 1024, 14, 14), 7, "valid", 0.01),
          ((16, 256, 56, 56), 7, "valid", 0.01), ((2, 3, 6, 1), 3, "padded", 0.3)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


def recorded_launches(run):
    """The launches ``run()`` makes through :func:`_triton._kernels`, as (kernel, args, kwargs)."""
    calls = []
    fake = SimpleNamespace(**{name: _Recorder(getattr(kernels, name), calls)
                              for name in ("dropblock_mask_kernel", "seed_grid_kernel",
                                           "masked_scale_kernel", "dropblock_rows_kernel",
                                           "masked_rows_kernel", "masked_rows_cl_kernel")})
    real = _triton._kernels
    _triton._kernels = lambda: fake
    try:
        run()
    finally:
        _triton._kernels = real
    return calls


def compile_launch(fn, args, kwargs, arch: int):
    """Compile one recorded launch for ``sm_<arch>`` as Triton's launcher would specialize it."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, False,
                                            not param.do_not_specialize, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = value
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = backend.parse_attr(attr)
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options={"num_warps": num_warps})


def sass_counts(compiled):
    """Opcode counts of the compiled kernel's SASS (cuobjdump from Triton's wheel)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    return collections.Counter(ops)


def _mask_run(shape, block, seeds, gamma):
    def run():
        blk = clip_block(block, shape[2:])
        key = torch.zeros(1, dtype=torch.int64)
        if _triton.geometry(shape, blk, seeds) is not None:
            _triton.keep_mask(shape, "cpu", gamma, blk, seeds, key)
            _triton.seed_grid(shape, "cpu", gamma, blk, seeds, key)
        if _triton.row_geometry(shape, blk, seeds) is not None:
            _triton.row_words(shape, "cpu", gamma, blk, seeds, key)
    return run


def _product_run(dtype, from_count, width=None):
    """The byte-mask product, or the row-word one for rows ``width`` wide."""
    def run():
        x = torch.zeros(4096 if width is None else (64, width), dtype=dtype)
        mask = (torch.ones(4096, dtype=torch.bool) if width is None
                else torch.zeros(65, dtype=torch.int64))  # 64 row words, the count
        param = torch.ones(1, dtype=torch.int64) if from_count else 1.25
        _triton._apply(x, mask, param, from_count, torch.empty_like(x))
    return run


def _product_cl_run(dtype, from_count, shape):
    """The row-word product for channels innermost in memory, ``shape`` in memory order."""
    def run():
        p = torch.zeros(shape, dtype=dtype)
        words = torch.zeros(p.numel() // shape[-2] + 1, dtype=torch.int64)
        _triton_channels_last.product(p, words, None if from_count else 1.25, from_count,
                                      torch.empty_like(p))
    return run


def check(archs) -> int:
    runs = [_mask_run(*c) for c in CHECKS]
    runs += [_product_run(d, f, w) for d in DTYPES for f in (True, False) for w in (None, 56)]
    runs += [_product_cl_run(d, f, s) for d in DTYPES for f in (True, False)
             for s in ((2, 14, 14, 64), (2, 5, 7, 9, 3), (4, 40, 3))]
    launches, seen = [], set()
    for run in runs:
        for fn, args, kwargs in recorded_launches(run):
            key = (fn.__name__, tuple(native_specialize_impl(BaseBackend, a, False, True, True)
                                      if not isinstance(a, torch.Tensor) else str(a.dtype)
                                      for a in args), tuple(sorted(kwargs.items())))
            if key not in seen:
                seen.add(key)
                launches.append((fn, args, kwargs))
    for arch in archs:
        for fn, args, kwargs in launches:
            try:
                compile_launch(fn, args, kwargs, arch)
            except Exception as exc:
                print(f"sm_{arch}: {fn.__name__} {kwargs} failed to compile:\n{exc}")
                return 1
        print(f"sm_{arch}: {len(launches)} kernel variants compiled")
    return 0


def table(arch: int, shapes, block=7, gamma=0.01):
    print(f"mask kernels, sm_{arch}, block {block}, valid seeds (static SASS; loops counted once; "
          "* = the package's warp choice; per unit: per unit of the tile, padding included)")
    print(f"{'shape':18s} {'kernel':6s} {'maps x tile':14s} {'window':7s} {'warps':6s} "
          f"{'instr':>6s} {'warp-instr/unit':>15s} {'MMA':>4s}  top opcodes")
    for shape in shapes:
        launches = recorded_launches(_mask_run(shape, block, "valid", gamma))
        for kernel, name in ((kernels.dropblock_mask_kernel, "bytes"),
                             (kernels.dropblock_rows_kernel, "rows")):
            for fn, args, kwargs in [c for c in launches if c[0] is kernel]:
                kwargs = dict(zip(fn.arg_names, args), **kwargs)  # constants passed by position
                rows = name == "rows"
                width = args[fn.arg_names.index("W")] if rows else kwargs["TW"]
                window = (f"{kwargs['GTH']}x{4 * kwargs['GQ']}" if rows
                          else f"{kwargs['GTH']}x{kwargs['GTW']}")
                for warps in (1, 2, 4):
                    ops = sass_counts(compile_launch(fn, args, dict(kwargs, num_warps=warps), arch))
                    total = sum(ops.values())
                    units = kwargs["BM"] * kwargs["TH"] * width
                    mma = sum(v for k, v in ops.items() if "MMA" in k)
                    top = ", ".join(f"{k} {v}" for k, v in ops.most_common(5))
                    chosen = "*" if warps == kwargs["num_warps"] else ""
                    tile = f"{kwargs['BM']} x {kwargs['TH']}x{width}"
                    print(f"{'x'.join(map(str, shape)):18s} {name:6s} {tile:14s} {window:7s} "
                          f"{warps:<2d}{chosen:4s} {total:6d} {total * warps / units:15.2f} "
                          f"{mma:4d}  {top}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="90", help="comma-separated compute capabilities, e.g. 75,80,90")
    p.add_argument("--check", action="store_true", help="compile every variant, exit 1 on failure")
    args = p.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    if args.check:
        return check(archs)
    for arch in archs:
        table(arch, SHAPES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
