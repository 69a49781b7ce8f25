"""A planned DropBlock call without Python between the launches (an optional C++ extension).

On a GPU an eager DropBlock step is bound by the host's time (book chapter 8): after
:mod:`._prepared` has removed the per-call checks and lookups, what is left on the host is the
Python around two launches in the forward pass and a Python autograd function whose backward
pass the autograd engine has to call back into Python for. ``_native.cpp`` does the planned
call's work in C++: the key from the generator's seed and Philox offset (advanced by 4, as
:func:`._triton.host_key` does), the row-word buffer, the mask kernel's launch and a C++
autograd function whose forward and backward launch the product kernel (its backward applies
the same function to the gradient, which also serves double backward).

The kernels are those the Python plan launches, compiled by Triton: the extension receives their
``CUfunction`` handles, grids and argument values, and calls the driver's ``cuLaunchKernel``
through its address (from ``ctypes``), so it builds with a C++ compiler, ninja and PyTorch's
headers alone (no CUDA toolkit). A child process builds it with
:func:`torch.utils.cpp_extension.load` into PyTorch's cache (``TORCH_EXTENSIONS_DIR``), and this
process imports it (:func:`_load` says why); building took 23 s on the host of an H200 machine.

When it is used: on a CUDA machine, for plans with direct launches (``Plan.ints``), except
``inplace`` calls. ``STRUCTDROP_NATIVE`` in the environment decides how it is built:

* unset or ``auto`` (the default): in a background thread started by the first plan; until it
  is ready the Python plan serves every call, and each plan takes the native call from its
  first call after that;
* ``1``: at the first plan, which waits for it;
* ``0``: never.

:func:`status` says where it stands and can wait for it; :func:`native_extension`
(``structdrop_tutorial.torch.native_extension``) builds it at once, before a timing say. Each
plan checks once, before its first native call (eagerly, on the plan's device), that the
extension's output for a fixed key is bit for bit the Python plan's. Where the build fails (no
compiler, no ninja, no writable cache) or a plan's check fails (a launch error, another output),
the extension is switched off for good, for every plan: with a warning, except for a build that
failed in the background (:func:`status` says why). The native backward pass launches even
where the Python one would first check that direct launches are still allowed (launch hooks,
``_launch.VERIFY``): the forward pass, which makes those checks, decides for both. The kernels
stay loaded while the extension holds their handles (Triton does not unload a compiled module).

Measured on H200s (``benchmarks/native_call.py``, the same public call with the extension on
and off in the same loops, three machines): eager forward+backward 1.20 to 1.34 floors against
1.68 to 1.87 through the Python plan, at the three ResNet shapes.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
import warnings
from pathlib import Path

import torch

from . import _triton

_MODE = os.environ.get("STRUCTDROP_NATIVE", "auto").strip().lower() or "auto"
#: Use the extension where a plan allows it.
ENABLED = _MODE not in ("0", "off", "false", "no")
#: Build it in a background thread (else the first plan waits for it).
BACKGROUND = _MODE not in ("1", "on", "true", "yes")
SOURCE = Path(__file__).with_name("_native.cpp")
_MODULE: list = []   # the loaded extension, once built
_FAILED: list = []   # why it was switched off, once it failed
_THREAD: list = []   # the background build, once started
_LOCK = threading.Lock()

# bytes of each Triton parameter type (pointers are 8)
_SIZES = {"i1": 1, "i8": 1, "u8": 1, "i16": 2, "u16": 2, "fp16": 2, "bf16": 2, "i32": 4,
          "u32": 4, "fp32": 4, "i64": 8, "u64": 8, "fp64": 8}
_FLOATS = {"fp32": "<f", "fp64": "<d"}


def enable(on: bool = True, background: bool = False) -> None:
    """Use the extension from now on (``background=False``: the next plan waits for its
    build), or stop using it (plans that have it keep it, unused while this is off)."""
    global ENABLED, BACKGROUND
    ENABLED, BACKGROUND = bool(on), bool(background)


NAME = "structdrop_native"
#: A lock file of PyTorch's build older than this (seconds) is left over from a killed build.
STALE_LOCK_S = 300
#: The longest a build may take (seconds).
BUILD_TIMEOUT_S = 900
#: The compiler's flags: frame pointers kept, so that a stack walked by frame pointers (when an
#: error is raised, say) never reads a register used for data as a frame address.
CFLAGS = ("-O2", "-fno-omit-frame-pointer")

# The child process that builds the extension: it first waits out a lock that a build in
# progress holds, removes one left over from a killed build, then builds into PyTorch's cache.
_CHILD = """
import os, sys, time
from torch.utils.cpp_extension import _get_build_directory, load
name, source, stale = sys.argv[1], sys.argv[2], float(sys.argv[3])
lock = os.path.join(_get_build_directory(name, False), "lock")
while True:
    try:
        age = time.time() - os.stat(lock).st_mtime
    except OSError:
        break
    if age > stale:
        try:
            os.remove(lock)
        except OSError:
            pass
        break
    time.sleep(1)
load(name=name, sources=[source], extra_cflags=sys.argv[4:], verbose=False)
"""


def _load():
    """Build the extension in a child process, then import what it built.

    PyTorch's ``cpp_extension.load`` holds a lock file while it builds and removes it when it
    is done; a build cut short (a background thread ends with the interpreter) leaves the file,
    and every later build waits on it forever. A child process is not cut short by this
    interpreter's exit, and it removes a lock older than :data:`STALE_LOCK_S`; this process only
    imports the module from PyTorch's cache."""
    import subprocess
    import sys
    from torch.utils.cpp_extension import _get_build_directory, _import_module_from_library
    done = subprocess.run([sys.executable, "-c", _CHILD, NAME, str(SOURCE), str(STALE_LOCK_S),
                           *CFLAGS], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-1500:] or f"exit status {done.returncode}")
    return _import_module_from_library(NAME, _get_build_directory(NAME, False), True)


def _build() -> None:
    with _LOCK:
        if _MODULE or _FAILED:
            return
        try:
            mod = _load()
        except Exception as exc:  # no compiler, no ninja, headers missing, cache not writable
            fail(f"building the extension failed: {type(exc).__name__}: {exc}",
                 loud=not BACKGROUND)
            return
        _MODULE.append(mod)


def module(wait: bool = False):
    """The built extension, or None: off, failed, or (``BACKGROUND`` and not ``wait``) still
    building in the thread this call starts if none has started."""
    if not ENABLED or _FAILED:
        return None
    if _MODULE:
        return _MODULE[0]
    if BACKGROUND and not wait:
        if not _THREAD:
            thread = threading.Thread(target=_build, name="structdrop-native-build",
                                      daemon=True)
            _THREAD.append(thread)
            thread.start()
        return None
    _build()
    return _MODULE[0] if _MODULE else None


def status(wait: bool = False) -> str:
    """``"ready"``, ``"building"``, ``"not built"`` (no plan has asked for it yet), ``"off"``
    or ``"failed: <why>"``; ``wait=True`` waits for a build that has started."""
    if wait and _THREAD:
        _THREAD[0].join()
    if _FAILED:
        return "failed: " + _FAILED[0]
    if _MODULE and ENABLED:
        return "ready"
    if not ENABLED:
        return "off"
    return "building" if _THREAD and _THREAD[0].is_alive() else "not built"


def native_extension(wait: bool = True) -> str:
    """Build the C++ planned DropBlock call now rather than at the first plan, and say where it
    stands (:func:`status`): on a CUDA machine where it is on, ``wait=True`` builds it in the
    calling thread (or waits for the background build), ``wait=False`` starts the background
    build. A timing that should not share the CPU with the compiler calls this first."""
    if ENABLED and torch.cuda.is_available():
        module(wait=wait)  # waiting takes the build's lock, which a background build holds
    return status()


def fail(why: str, loud: bool = True) -> None:
    """Switch the extension off for good (``loud``: with one warning): plans that have a native
    plan stop using it, and no plan gets one."""
    global ENABLED
    ENABLED = False
    if not _FAILED and loud:
        warnings.warn(f"structdrop: native DropBlock calls off ({why[:300]}); the Python plan "
                      "serves them", RuntimeWarning, stacklevel=3)
    _FAILED.append(why)


def driver() -> list:
    """The addresses of the driver's ``cuLaunchKernel``, ``cuCtxGetCurrent`` and
    ``cuCtxSetCurrent``, and the calling thread's current context (the current device's primary
    context, which the extension binds to a thread without one, as Triton's launcher does:
    autograd's device thread may not have one when its first kernel is the extension's)."""
    lib = ctypes.CDLL("libcuda.so.1")
    ctx = ctypes.c_void_p()
    if lib.cuCtxGetCurrent(ctypes.byref(ctx)) != 0 or not ctx.value:
        raise RuntimeError("no current CUDA context")
    return [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
            for name in ("cuLaunchKernel", "cuCtxGetCurrent", "cuCtxSetCurrent")] + [ctx.value]


def param_sizes(function: int):
    """The sizes in bytes of a ``CUfunction``'s parameters, as the driver reports them
    (``cuFuncGetParamInfo``, CUDA 12.4 and later), or None where it cannot say (a fake
    function in the CPU tests, an older driver)."""
    if not function or function < 1 << 16:
        return None
    try:
        info = ctypes.CDLL("libcuda.so.1").cuFuncGetParamInfo
    except (OSError, AttributeError):
        return None
    sizes = []
    offset, size = ctypes.c_size_t(), ctypes.c_size_t()
    while len(sizes) <= 64 and info(ctypes.c_void_p(function), ctypes.c_size_t(len(sizes)),
                                    ctypes.byref(offset), ctypes.byref(size)) == 0:
        sizes.append(size.value)
    return sizes or None


def slots(compiled, args: tuple, dynamic: tuple) -> tuple:
    """A kernel's parameters as 8-byte slots, the slots of the ``dynamic`` arguments and each
    parameter's size in bytes.

    ``args`` holds every argument of the Triton kernel in its order (constexprs included,
    pointers as ints, None where a dynamic value goes); ``compiled.src.signature`` says which
    are constexprs (not passed) and each passed one's type. Two zero slots follow: the global
    and profile scratch pointers Triton 3.6 adds (unused by a kernel that needs no scratch; a
    kernel with fewer parameters ignores them)."""
    signature = list(compiled.src.signature.items())
    if len(signature) != len(args):
        raise ValueError(f"{len(args)} arguments for {len(signature)} parameters")
    values, where, sizes = [], {}, []
    for i, ((name, ty), value) in enumerate(zip(signature, args)):
        if ty == "constexpr":
            if i in dynamic:
                raise ValueError(f"dynamic argument {name} is a constant")
            continue
        sizes.append(8 if ty.startswith("*") else _SIZES.get(ty, 0))
        if i in dynamic:
            where[i] = len(values)
            values.append(0)
        elif ty.startswith("*"):
            values.append(0 if value is None else int(value))
        elif ty in _FLOATS:
            values.append(int.from_bytes(struct.pack(_FLOATS[ty], value).ljust(8, b"\0"),
                                         "little"))
        elif ty in _SIZES and ty not in ("fp16", "bf16"):
            values.append(int(value) & ((1 << (8 * _SIZES[ty])) - 1))
        else:
            raise ValueError(f"parameter {name} has a type this launcher does not know: {ty}")
    values += [0, 0]
    return values, [where[i] for i in dynamic], sizes + [8, 8]


def kernel_spec(compiled, args: tuple, dynamic: tuple, grid: tuple) -> tuple:
    """``(function, grid, threads, shared, slots, dynamic slots)`` for ``make_plan``."""
    values, where, sizes = slots(compiled, args, dynamic)
    driver = param_sizes(int(compiled.function))
    if driver is not None and driver != sizes[:len(driver)]:
        raise ValueError(f"the kernel's parameters have {driver} bytes, the launch {sizes}")
    meta = compiled.metadata
    if getattr(meta, "num_ctas", 1) != 1:
        raise ValueError("clusters of CTAs are not launched by this launcher")
    if getattr(meta, "launch_pdl", False) or getattr(meta, "launch_cooperative_grid", False):
        raise ValueError("programmatic dependent or cooperative launches are not made here")
    return (int(compiled.function), [int(g) for g in grid], 32 * int(meta.num_warps),
            int(meta.shared), values, where)


def attach(plan, x: torch.Tensor, mask_compiled, prod_compiled) -> None:
    """Give ``plan`` (a :class:`._prepared.Plan` with direct launches on a GPU) its native plan
    in ``plan.native``, once the extension's output for a fixed key is the Python plan's; while
    the extension builds in the background, keep the compiled kernels in ``plan.pending`` for
    the call that finds it built (:func:`._prepared.dropblock`)."""
    from . import _prepared
    plan.native, plan.pending = None, None
    if mask_compiled is None or prod_compiled is None:  # not launched directly: no plan
        return
    mod = module()
    if mod is None:
        if ENABLED and not _FAILED:  # building in the background: a later call attaches
            plan.pending = (mask_compiled, prod_compiled)
        return
    if (torch.cuda.current_device() != plan.index
            or torch.cuda.is_current_stream_capturing()):  # the check launches and waits:
        plan.pending = (mask_compiled, prod_compiled)      # a planned call (on the plan's
        return                                             # device, eager) attaches
    try:
        mask = kernel_spec(mask_compiled, (None, None, None, None, None) + tuple(plan.mask_tail)
                           + (False,), (0, 1, 2, 4), plan.mask_grid)
        prod = kernel_spec(prod_compiled, (None, None, None) + tuple(plan.prod_tail), (0, 1, 2),
                           plan.prod_grid)
        native = mod.make_plan(driver(), True, plan.index, plan.rows, list(plan.strides),
                               *mask, *prod)
    except Exception as exc:  # a Triton whose compiled kernels look otherwise
        fail(f"{type(exc).__name__}: {exc}")
        return
    try:  # the check: a fixed key through both, on ones laid out as x
        acc, scratch = _triton._row_state(plan.device, plan.scratch, True)
        ones = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).fill_(1)
        key = _triton._mix(0x5EED, 0)
        words = _prepared.mask_words(plan, key)
        want = torch.empty_like(ones)
        _prepared.product(plan, ones, words, want)
        got = mod.call_key(native, ones, key, scratch.data_ptr(), acc.data_ptr())
        same = torch.equal(got, want)
    except Exception as exc:
        fail(f"the first native launch failed: {type(exc).__name__}: {exc}")
        return
    if not same:  # the extension passed other arguments than the launcher: never use it
        fail("the native call's output for a fixed key differed from the Python plan's")
        return
    plan.native = native
