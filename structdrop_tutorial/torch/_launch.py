"""Launching a Triton kernel again without Triton's per-call argument handling.

``kernel[grid](*args)`` costs the host more than the launch itself: Triton binds the arguments,
works out how each one specializes the kernel (its type, whether an integer is 1 or a multiple
of 16, whether a pointer is 16-byte aligned), builds a cache key from them and looks the
compiled kernel up. The DropBlock path launches two or three kernels per forward pass, the
backward pass one more, so on a GPU whose work per call is a few tens of microseconds that
bookkeeping is a visible share of the step.

:func:`launch` keeps the compiled kernel that Triton's first launch returns under a key that
the caller builds from everything that decides the specialization (the geometry and every
integer that is fixed by it, dtypes, pointer alignment), and later calls with the same key go
straight to the compiled kernel's launcher with the same arguments. Arguments that change from
call to call (a key passed by value, a scale) must be ``do_not_specialize`` in the kernel and
stay out of the caller's key. ``VERIFY`` (set by the GPU tests) makes every direct launch
also ask Triton which kernel it would have used (``warmup``, which launches nothing) and fail
if it is not the cached one.

The launcher's arguments are Triton's internals (those of Triton 3.4 to 3.6 here); should the
first direct launch of a kernel fail (it fails while parsing its arguments, before anything
runs), direct launches are switched off for good, with one warning, and the call goes through
Triton. Triton's interpreter (the CPU tests), a machine without CUDA and Triton before 3.4
always take the ordinary launch; so does a call while ``torch.compile`` traces (dynamo follows
``kernel[grid]`` calls, not launchers) and a call with Triton launch hooks installed
(profilers).

Measured on an H100 (``benchmarks/host_probe.py``, three runs): the product kernel's launch
costs the host 16-32 us through ``kernel[grid]`` and 10-15 us directly; a whole DropBlock
forward+backward on a tiny input 458 us with ordinary launches and 209 us with direct ones
(the floor ``x * mask``: 69 us). In the two probes committed with the H100 timings (other
machines, later code): 35 and 13 us, 29 and 19 us for the product kernel's launch.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Dict, Tuple

import torch

from ._fast import _compiling

#: Launch kernels directly once they have compiled (tests switch it off to compare).
DIRECT = True
#: Check every direct launch against Triton's own cache lookup (tests on a GPU).
VERIFY = False

# full key -> (compiled kernel, launch function, its leading arguments, launched directly yet,
# the launch function is the C launcher): the launch function is the compiled kernel's C
# launcher where it needs no scratch memory (Triton 3.6's ``CudaLauncher.launch``), else its
# ``run``.
_COMPILED: Dict[Tuple, tuple] = {}
_MAX_COMPILED = 4096
# Why direct launches were switched off for good (a Triton whose launcher takes other
# arguments); empty while they work.
_BROKEN: list = []
# Changes whenever kept launchers may no longer be used (clear(), direct launches switched off):
# callers that keep a launcher of :func:`prepared` compare it with the value they saw.
GENERATION = 0


@functools.lru_cache(maxsize=None)
def _ordinary_only() -> bool:
    """Interpreter, no CUDA, or a Triton older than 3.4 (whose launcher takes other arguments):
    ordinary launches only."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not torch.cuda.is_available():
        return True
    try:
        import triton
        return not hasattr(triton, "knobs")
    except ImportError:
        return True


@functools.lru_cache(maxsize=None)
def _runtime_knobs():
    from triton import knobs
    return knobs.runtime


def _hooks_installed() -> bool:
    rt = _runtime_knobs()
    return bool(getattr(rt.launch_enter_hook, "calls", rt.launch_enter_hook)
                or getattr(rt.launch_exit_hook, "calls", rt.launch_exit_hook))


def _entry(compiled) -> tuple:
    """How to launch ``compiled`` directly: its C launcher when it needs no scratch memory,
    else its ``run`` (which allocates that memory first)."""
    launcher = compiled.run  # loads the module on first use
    c_launch = getattr(launcher, "launch", None)
    if (c_launch is not None and getattr(launcher, "global_scratch_size", 1) == 0
            and getattr(launcher, "profile_scratch_size", 1) == 0
            and hasattr(launcher, "launch_cooperative_grid") and hasattr(launcher, "launch_pdl")):
        return c_launch, (compiled.function, launcher.launch_cooperative_grid, launcher.launch_pdl,
                          None, None, compiled.packed_metadata, None, None, None), True
    return launcher, (compiled.function, compiled.packed_metadata, None, None, None), False


def launch(kernel, grid: tuple, key: tuple, args: tuple, num_warps: int) -> None:
    """``kernel[grid](*args, num_warps=num_warps)``; ``args`` holds every parameter of the kernel
    in its order, compile-time constants included. ``key`` must determine how Triton
    specializes these arguments (see the module docstring); the grid may vary freely."""
    if not DIRECT or _ordinary_only() or _BROKEN or _compiling():
        kernel[grid](*args, num_warps=num_warps)
        return
    device = torch._C._cuda_getDevice()
    full = (kernel, num_warps, device) + key
    entry = _COMPILED.get(full)
    if entry is None or _hooks_installed():
        used = kernel[grid](*args, num_warps=num_warps)
        if entry is None and hasattr(used, "packed_metadata"):
            if len(_COMPILED) >= _MAX_COMPILED:  # keys holding a value that keeps changing
                _COMPILED.clear()                 # (a threshold under a rate schedule)
            run, lead, c_launcher = _entry(used)
            _COMPILED[full] = (used, run, lead, False, c_launcher)
        return
    compiled, run, lead, tried, c_launcher = entry
    if VERIFY:  # the kernel Triton's own lookup picks for these arguments (no launch)
        if kernel.warmup(*args, grid=grid, num_warps=num_warps) is not compiled:
            raise AssertionError(f"{getattr(kernel, '__name__', kernel)}: launch key {key} "
                                 "selected a kernel compiled for other arguments")
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    stream = torch._C._cuda_getCurrentRawStream(device)
    if tried:
        run(grid[0], g1, g2, stream, *lead, *args)
        return
    try:  # the first direct launch of this kernel: a launcher taking other arguments fails here
        run(grid[0], g1, g2, stream, *lead, *args)
    except Exception as exc:  # argument parsing fails before anything is launched
        global GENERATION
        GENERATION += 1
        _BROKEN.append(f"{type(exc).__name__}: {exc}")
        warnings.warn(f"structdrop: direct Triton launches failed ({_BROKEN[0][:200]}); "
                      "launching through Triton from now on", RuntimeWarning, stacklevel=3)
        kernel[grid](*args, num_warps=num_warps)
        return
    _COMPILED[full] = (compiled, run, lead, True, c_launcher)


def ready() -> bool:
    """Whether a launcher from :func:`prepared` may be called now: direct launches on, not
    verified, no launch hooks, nothing being compiled (the checks :func:`launch` makes per call,
    except the key's)."""
    if _ordinary_only():
        return not _compiling()
    return DIRECT and not VERIFY and not _BROKEN and not _compiling() and not _hooks_installed()


def prepared(kernel, num_warps: int, device: int, key: tuple):
    """``(run, lead, pointers_as_ints)`` to launch ``kernel`` for ``key`` later as
    ``run(gx, gy, gz, stream, *lead, *args)`` without :func:`launch`'s bookkeeping, or None.

    On a GPU it is the compiled kernel's C launcher, once :func:`launch` has launched this key
    directly: ``args`` may then pass pointers as integers (``Tensor.data_ptr()``; the launcher
    takes an int as the address, without asking the driver about it) and must match ``key``'s
    specialization. Under Triton's interpreter it is an ordinary launch of tensors. Callers
    check :func:`ready` and :data:`GENERATION` before each use."""
    if _ordinary_only():
        def run(gx, gy, gz, stream, *args):
            kernel[(gx, gy, gz)](*args, num_warps=num_warps)
        return run, (), False
    if not DIRECT or _BROKEN:
        return None
    entry = _COMPILED.get((kernel, num_warps, device) + key)
    if entry is None or not entry[3] or not entry[4]:
        return None
    return entry[1], entry[2], True


def compiled(kernel, num_warps: int, device: int, key: tuple):
    """The Triton compiled kernel :func:`prepared` launches for ``key``, or None."""
    entry = _COMPILED.get((kernel, num_warps, device) + key)
    return None if entry is None else entry[0]


def clear() -> None:
    """Forget the compiled kernels kept for direct launches (and a failure of them)."""
    global GENERATION
    GENERATION += 1
    _COMPILED.clear()
    _BROKEN.clear()
