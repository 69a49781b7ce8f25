"""How much of an eager DropBlock step on a GPU is the package's Python around the launches?

``eager_parts.py`` builds a planned call up part by part; this script asks the opposite
question. It times, as full-size eager forward+backward steps, the public call
``sdt.dropblock`` next to a **flattened** copy of what a planned call does for a contiguous
channels_first input: the plan lookup, the key from the generator, the row-word buffer, the two
launches through the plan's launchers and an autograd function whose forward and backward
launch the product kernel, all in one function, without ``dropblock``'s argument handling, the
helper calls of :mod:`structdrop_tutorial.torch._prepared` and the checks its backward pass
repeats (whether plans are still on, direct launches allowed, double backward, layouts,
alignment). The flattened call is a measuring device, not a replacement: it keeps only what
this one input needs. Before timing, the script checks that the plan is one the flattened call
can take and that the flattened call gives the public call's output and gradient bit for bit
from the same generator state (``same`` in the results; it stops otherwise).

The steps are interleaved over ``--rounds`` rounds (each a loop of ``--n`` steps, the device
synchronized at both ends; the median per case), and the public call, the flattened call and
the floor run twice per round, so that an effect of the order shows as a difference between a
case and its repeat. ``find + _prepared.dropblock`` calls the plan directly (without
``dropblock``'s argument handling).

Usage (on a CUDA machine whose Triton path is planned, as in ``run_gpu.sh``)::

    python benchmarks/flat_call.py --out flat_call.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from host_probe import BLOCK, RATE, SHAPES, interleaved_us  # noqa: E402

from structdrop_tutorial import torch as sdt  # noqa: E402
from structdrop_tutorial.torch import _native, _prepared, _triton  # noqa: E402
from structdrop_tutorial.torch import functional  # noqa: E402

_C = torch._C


class FlatProduct(torch.autograd.Function):
    """:class:`_prepared.PlannedProduct` for a contiguous input with 16-byte aligned pointers
    and plain (not double) backward passes, launching from the plan without further checks."""

    @staticmethod
    def forward(ctx, x, words, plan, stream):
        out = torch.empty_like(x)
        g = plan.prod_grid
        plan.prod_run(g[0], g[1], g[2], stream, *plan.prod_lead, x.data_ptr(), words.data_ptr(),
                      out.data_ptr(), *plan.prod_tail)
        ctx.save_for_backward(words)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad):
        (words,) = ctx.saved_tensors
        plan = ctx.plan
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        g = plan.prod_grid
        plan.prod_run(g[0], g[1], g[2], _C._cuda_getCurrentRawStream(plan.index), *plan.prod_lead,
                      grad.data_ptr(), words.data_ptr(), out.data_ptr(), *plan.prod_tail)
        return out, None, None, None


_APPLY = super(torch.autograd.Function, FlatProduct).apply


def flat_dropblock(x, rate, block_size, data_format="channels_first", *, gamma="exact",
                   seeds="valid", normalize="batch", seed=None):
    """The planned call in one function (see the module docstring); raises where the public
    call would not take a plan. Only for what :func:`measure` gives it: a contiguous
    channels_first CUDA input whose plan launches with integer pointers, and ``seed`` None or a
    CUDA generator (the plan's layout is not checked, unlike the public call's)."""
    if functional._compiling():
        raise RuntimeError("flat_dropblock: not under torch.compile")
    if type(x) is not torch.Tensor or type(rate) is not float or type(block_size) is not int:
        raise RuntimeError("flat_dropblock: a plain tensor, float rate and int block only")
    plan = _prepared._PLANS.get((x.shape, x.stride(), x.dtype, x.device, rate, block_size,
                                 data_format, gamma, seeds, normalize))
    if (plan is None or not _prepared._usable(plan) or _C._are_functorch_transforms_active()
            or _C._functorch.is_functorch_wrapped_tensor(x)):
        raise RuntimeError("flat_dropblock: no usable plan for this call")
    gen = plan.generator if seed is None else seed
    s, o = gen.initial_seed(), gen.get_offset()
    gen.set_offset(o + 4)
    key = _triton._mix(s, o)
    words = torch.empty(plan.rows + 1, dtype=torch.int64, device=plan.device)
    stream = _C._cuda_getCurrentRawStream(plan.index)
    acc, scratch = _triton._STATE[(plan.index, stream)]
    gr = plan.mask_grid
    plan.mask_run(gr[0], gr[1], gr[2], stream, *plan.mask_lead, words.data_ptr(),
                  scratch.data_ptr(), acc.data_ptr(), None, key, *plan.mask_tail, False)
    return _APPLY(x, words, plan, stream)


def measure(shape, rounds, n, warmup=20):
    """Case -> median microseconds per eager step at ``shape``, and whether the flattened call
    gave the public call's output and gradient."""
    x = torch.randn(shape, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    mask = (torch.rand_like(x) > RATE).float()
    ga = torch.Generator(device="cuda").manual_seed(5)
    gb = torch.Generator(device="cuda").manual_seed(5)
    for _ in range(3):  # the second ordinary call makes the plan
        torch.autograd.grad(sdt.dropblock(x, RATE, BLOCK, seed=ga), x, g)
    plan = _prepared.find(x, RATE, BLOCK, "channels_first", "exact", "valid", "batch")
    state = None if plan is None else _triton._STATE.get(
        (plan.index, _C._cuda_getCurrentRawStream(plan.index)))
    if (plan is None or plan.channels_last or not plan.ints or state is None
            or state[1].numel() < plan.scratch):  # what flat_dropblock takes for granted
        raise RuntimeError(f"{tuple(shape)}: no plan with integer pointers and kept scratch "
                           "memory for a contiguous input (byte masks, or the Triton path off)")
    gb.set_offset(ga.get_offset())
    ya, yb = sdt.dropblock(x, RATE, BLOCK, seed=ga), flat_dropblock(x, RATE, BLOCK, seed=gb)
    (da,), (db,) = torch.autograd.grad(ya, x, g), torch.autograd.grad(yb, x, g)
    same = bool(torch.equal(ya, yb) and torch.equal(da, db))
    if not same:  # then the two would not time the same work
        raise RuntimeError(f"{tuple(shape)}: the flattened call's output or gradient differs "
                           "from the public call's")

    def planned(t):
        plan = _prepared.find(t, RATE, BLOCK, "channels_first", "exact", "valid", "batch")
        return _prepared.dropblock(plan, t, None, False)

    def step(fn):
        return lambda: torch.autograd.grad(fn(x), x, g)

    cases = {
        "floor x*mask": step(lambda t: t * mask),
        "dropblock": step(lambda t: sdt.dropblock(t, RATE, BLOCK)),
        "flattened": step(lambda t: flat_dropblock(t, RATE, BLOCK)),
        "find + _prepared.dropblock": step(planned),
        "dropblock again": step(lambda t: sdt.dropblock(t, RATE, BLOCK)),
        "flattened again": step(lambda t: flat_dropblock(t, RATE, BLOCK)),
        "floor x*mask again": step(lambda t: t * mask),
    }
    return interleaved_us(cases, "cuda", rounds, n, warmup), same


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _native.enable(False)  # these figures are the Python plan's (native_call.py: the C++ one)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--n", type=int, default=60, help="steps per timing")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the flattened call launches the plan's CUDA launchers)")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "rounds": args.rounds, "n": args.n, "steps_us": {}, "same": {}}
    for shape in SHAPES:
        label = "x".join(map(str, shape))
        row, same = measure(shape, args.rounds, args.n)
        res["steps_us"][label], res["same"][label] = row, same
        floor = row["floor x*mask"]
        for name, us in row.items():
            print(f"{label:16s} {name:28s} {us:9.2f} {us / floor:6.2f}", flush=True)
        print(f"{label:16s} flattened call gave the public call's output and gradient: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
