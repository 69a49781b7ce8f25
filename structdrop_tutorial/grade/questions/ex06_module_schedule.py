"""Exercise 6: a DropBlock module for PyTorch and its linear schedule.

Questions: a ``DropBlock2d(rate, block_size)`` ``torch.nn.Module`` that respects train/eval;
the linear rate schedule as a function (compared with
:func:`structdrop_tutorial.schedule.linear_rate`); and ``ScheduledDropBlock2d``, whose rate grows
with every *training* forward pass and never in evaluation, with the step counter saved in its
``state_dict``.

Everything is graded by behaviour, so any correct implementation passes: eval mode is the
identity, dropped units form whole blocks inside the map, survivors share one scale
``numel / kept`` (the paper's batch normalization) and the realized drop fraction lies within
five standard errors of the rate, the standard error estimated from the per-map fractions
(maps are independent; units within a map are not). Random draws are seeded, so a check gives the
same verdict every time. PyTorch is imported inside the checkers.
"""
from __future__ import annotations

import math

import numpy as np

from ...gamma import clip_block, expected_drop_fraction, paper_gamma
from ...numpy import dropblock_keep_mask
from ...schedule import linear_rate
from ..core import (Property, Question, call_checked, call_safely, compare_arrays,
                    compare_values, describe, is_callable, shared_over, to_numpy)


def _first_failure(props):
    return [p for p in props if not p.passed][:1]


def _positive_input(rng, shape):
    """A float32 input with no zeros, so a zero in the output means 'dropped'."""
    return (0.5 + np.abs(rng.standard_normal(shape))).astype(np.float32)


def _opening(dropped, window):
    """The union of the ``window``-sized boxes inside each (n, c) map that are dropped entirely
    (the morphological opening, valid positions only)."""
    windows = np.lib.stride_tricks.sliding_window_view(dropped, window, axis=(2, 3))
    full = windows.all(axis=(-2, -1))                        # windows dropped entirely
    return ~dropblock_keep_mask(np.where(full, 0.0, 1.0), 0.5, window, "channels_first", "valid")


def _union_of_blocks(dropped, block):
    """True when the dropped set of every (n, c) map is a union of whole blocks inside the map:
    exactly then the opening with a ``block`` window leaves it unchanged."""
    bh, bw = clip_block(block, dropped.shape[2:])
    return bool(np.array_equal(_opening(dropped, (bh, bw)), dropped))


def _blocks_too_large(dropped, block):
    """The axis ("tall" or "wide") along which every dropped region is longer than the (clipped)
    block, or None.

    A union of ``block`` boxes is also a union of boxes one unit taller exactly when opening it
    with the taller window leaves it unchanged; a too-large block (``block_size + 1``) or whole
    dropped maps (spatial dropout) do that along every axis the block does not fill. A correct
    mask does not: a block that overlaps no other is removed by the opening. Where the checkers
    call this (at least 256 maps, rates 0.1 to 0.2) the chance that not one block of a correct
    mask is isolated along an axis is below 1e-10, and the draws are seeded.
    """
    h, w = dropped.shape[2:]
    bh, bw = clip_block(block, (h, w))
    for axis, window, room in (("tall", (bh + 1, bw), bh < h), ("wide", (bh, bw + 1), bw < w)):
        if room and np.array_equal(_opening(dropped, window), dropped):
            return axis
    return None


def _too_large(ctx, axis, block, spatial):
    bh, bw = clip_block(block, spatial)
    return Property(
        "blocks of block_size, not larger", False,
        f"{ctx}: every dropped region is at least "
        + (f"{bh + 1} units tall" if axis == "tall" else f"{bw + 1} units wide")
        + f", so the dropped units are not {bh}x{bw} blocks: blocks larger than block_size, or "
        "whole maps dropped")


def _fraction_property(name, dropped, rate, context, block=None, spatial=None):
    """Property: the mean per-map drop fraction is within 5 standard errors of ``rate``."""
    per_map = dropped.reshape(dropped.shape[0] * dropped.shape[1], -1).mean(axis=1)
    n = per_map.size
    mean = float(per_map.mean())
    se = float(per_map.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    bound = 5 * se + 1e-3
    ok = abs(mean - rate) <= bound
    detail = (f"{context}: dropped {mean:.4f} on average over {n} maps, expected {rate:.4f} "
              f"+- {bound:.4f} (5 standard errors of the per-map fractions, plus 0.001)")
    if not ok and block is not None:
        paper = expected_drop_fraction(min(1.0, paper_gamma(rate, block, spatial)), block, spatial)
        if abs(mean - paper) <= bound:
            detail += (f"; {paper:.4f} is what the paper's gamma gives: use gamma='exact' "
                       "(the default of structdrop_tutorial.torch.dropblock)")
    return Property(name, ok, detail)


# --------------------------------------------------------------------------- Q1
def _make(answer, *args):
    import torch

    module, failure = call_safely("construct the module", answer, *args)
    if failure is not None:
        return None, failure
    if not isinstance(module, torch.nn.Module):
        return None, Property("is a torch.nn.Module", False,
                              f"{answer!r}({', '.join(map(repr, args))}) gave {describe(module)}")
    return module, None


def _forward(label, module, x):
    """Call module(x) (never modifying x); returns (numpy output or None, failures)."""
    import torch

    got, fails = call_checked(label, module, x)
    if fails:
        return None, fails
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(x.shape):
        return None, [Property(label, False, f"expected a tensor of shape {tuple(x.shape)}, "
                                             f"got {describe(got)}")]
    return to_numpy(got), []


def check_dropblock_module(answer):
    import torch

    props = [is_callable("DropBlock2d", answer)]
    if not props[0].passed:
        return props
    module, failure = _make(answer, 0.2, 3)
    if failure is not None:
        return props + [failure]
    props.append(Property("DropBlock2d(0.2, 3) is a torch.nn.Module", True))
    rng = np.random.default_rng(600)
    x_np = _positive_input(rng, (8, 4, 9, 11))
    x = torch.from_numpy(x_np.copy())

    # Evaluation: the identity, also when the parent module is switched to eval.
    module.eval()
    y, fails = _forward("eval mode", module, x)
    props.extend(fails or [compare_arrays("eval mode returns x", y, x_np, atol=0,
                                          context="after module.eval()")])
    parent = torch.nn.Sequential(torch.nn.Identity(), module)
    parent.train()
    parent.eval()
    y, fails = _forward("eval via the parent", parent, x)
    props.extend(fails or [compare_arrays("eval mode set by a parent module returns x", y, x_np,
                                          atol=0, context="nn.Sequential(..., module).eval()")])
    zero, failure = _make(answer, 0.0, 3)
    if failure is None:
        zero.train()
        y, fails = _forward("rate 0", zero, x)
        props.extend(fails or [compare_arrays("training with rate 0 returns x", y, x_np,
                                              atol=0, context="DropBlock2d(0.0, 3).train()")])
    else:
        props.append(failure)

    # Training: blocks, one scale, the right fraction, different masks per call.
    torch.manual_seed(601)
    struct_cases, frac_cases = [], []
    for rate, block, shape in ((0.2, 3, (64, 32, 12, 12)), (0.1, 4, (32, 16, 10, 14)),
                               (0.15, 5, (16, 16, 4, 9))):
        ctx = f"DropBlock2d({rate}, {block}) on x of shape {shape}"
        m, failure = _make(answer, rate, block)
        if failure is not None:
            struct_cases.append(failure)
            continue
        m.train()
        xs_np = _positive_input(rng, shape)
        xs = torch.from_numpy(xs_np.copy())
        y, fails = _forward("training mode", m, xs)
        if fails:
            struct_cases.extend(fails)
            continue
        dropped = y == 0
        if not dropped.any() or dropped.all():
            what = "nothing" if not dropped.any() else "everything"
            struct_cases.append(Property("drops blocks in training mode", False,
                                         f"{ctx}: {what} was dropped"))
            continue
        if not _union_of_blocks(dropped, block):
            struct_cases.append(Property(
                "dropped units form whole blocks inside the map", False,
                f"{ctx}: the dropped units of some map are not a union of "
                f"{min(block, shape[2])}x{min(block, shape[3])} blocks lying inside the map"))
            continue
        larger = _blocks_too_large(dropped, block)
        if larger is not None:
            struct_cases.append(_too_large(ctx, larger, block, shape[2:]))
            continue
        ratio = y[~dropped] / xs_np[~dropped]
        want = dropped.size / np.count_nonzero(~dropped)
        if not np.allclose(ratio, want, rtol=1e-5, atol=0):
            struct_cases.append(Property(
                "survivors are scaled by numel / kept", False,
                f"{ctx}: kept values are x times {float(np.min(ratio)):.5g} to "
                f"{float(np.max(ratio)):.5g}, expected x times numel / kept = {want:.5g} "
                "(one scale for the whole batch)"))
            continue
        shared = shared_over(dropped)
        if shared is not None:
            struct_cases.append(Property(
                "one mask per sample and channel", False,
                f"{ctx}: " + ("in every sample all channels have the same mask (a mask shared "
                              "across channels)" if shared == "channels" else
                              "every sample has the same mask (a mask shared across the batch)")
                + "; independent masks coincide like that with probability below 1e-30 in "
                "every configuration checked"))
            continue
        struct_cases.append(Property("drops blocks", True))
        frac_cases.append(_fraction_property("drops a fraction rate", dropped, rate, ctx,
                                             block, shape[2:]))
    props.extend(_first_failure(struct_cases) or [Property(
        "training mode: whole blocks inside the map, one mask per sample and channel, survivors "
        "scaled by numel / kept", True,
        "3 configurations, odd, even and clipped blocks, non-square maps")])
    if frac_cases:
        props.extend(_first_failure(frac_cases) or [Property(
            "training mode: drops a fraction rate", True,
            "3 configurations, within 5 standard errors of the per-map fractions")])
    if not struct_cases or _first_failure(struct_cases):
        return props
    m, _ = _make(answer, 0.2, 3)
    m.train()
    a, _ = _forward("training mode", m, x)
    b, _ = _forward("training mode", m, x)
    if a is not None and b is not None:
        props.append(Property("a new mask on every call", not np.array_equal(a, b),
                              "two calls gave different masks" if not np.array_equal(a, b)
                              else "two training calls on the same input dropped the same units"))
    return props


# --------------------------------------------------------------------------- Q2
def check_scheduled_rate(answer):
    props = [is_callable("scheduled_rate", answer)]
    if not props[0].passed:
        return props
    rng = np.random.default_rng(610)
    cases = []
    for total, final in ((10, 0.1), (1000, 0.25), (7, 0.5), (1, 0.3), (0, 0.2),
                         (int(rng.integers(2, 500)), float(rng.uniform(0.05, 0.5)))):
        steps = sorted({0, 1, total // 3, total // 2, max(total - 1, 0), total, total + 1,
                        3 * total + 5})
        for step in steps:
            ctx = f"scheduled_rate({step}, {total}, {final:.4g})"
            got, fails = call_checked("scheduled_rate", answer, step, total, final)
            if fails:
                cases.extend(fails)
                continue
            cases.append(compare_arrays("matches the linear schedule", np.float64(got),
                                        linear_rate(step, total, final), atol=1e-12, rtol=1e-12,
                                        context=ctx))
    props.extend(_first_failure(cases) or [Property(
        "matches the linear schedule", True,
        f"{len(cases)} (step, total_steps, final_rate) cases: start, ramp, end, beyond the end, "
        "total_steps 0 and 1 (atol 1e-12)")])
    got, fails = call_checked("scheduled_rate", answer, 3, 10, 0.1)
    if not fails:
        ok = isinstance(got, (float, np.floating)) and not isinstance(got, bool)
        props.append(Property("returns a float", ok, "" if ok else
                              f"expected a Python float, got {describe(got)}"))
    return props


# --------------------------------------------------------------------------- Q3
def _state(module):
    """(steps, rate) of a scheduled module as Python numbers; raises if missing."""
    return int(module.steps), float(module.rate)


def check_scheduled_dropblock(answer):
    import torch

    props = [is_callable("ScheduledDropBlock2d", answer)]
    if not props[0].passed:
        return props
    final, block, total = 0.2, 3, 8
    module, failure = _make(answer, final, block, total)
    if failure is not None:
        return props + [failure]
    label = f"ScheduledDropBlock2d({final}, {block}, {total})"
    try:
        start = _state(module)
    except Exception as exc:
        return props + [Property("has .steps and .rate", False,
                                 f"{label}: reading int(module.steps) and float(module.rate) "
                                 f"raised {type(exc).__name__}: {exc}")]
    props.append(compare_values("starts at step 0 with rate 0", start, (0, 0.0), context=label))

    rng = np.random.default_rng(620)
    x_np = _positive_input(rng, (4, 3, 8, 8))
    x = torch.from_numpy(x_np.copy())
    torch.manual_seed(621)
    module.train()
    y, fails = _forward("first training forward", module, x)
    first = fails or [compare_arrays("the first training forward (rate 0) returns x", y,
                                     x_np, atol=0, context=label)]
    if not _first_failure(first):
        # With total_steps=1 a counter advanced before dropping would drop at the full rate.
        quick, failure = _make(answer, 0.5, block, 1)
        if failure is not None:
            first = [failure]
        else:
            big_np = _positive_input(rng, (16, 8, 16, 16))
            quick.train()
            y, fails = _forward("first training forward", quick, torch.from_numpy(big_np.copy()))
            first = fails or [compare_arrays(
                "the first training forward (rate 0) returns x", y, big_np, atol=0,
                context="ScheduledDropBlock2d(0.5, 3, 1) on x of shape (16, 8, 16, 16): the "
                        "forward drops with the rate of the current step, then counts it")]
    props.extend(first)

    # Rates after k training forwards, with eval forwards in between that must not count.
    sched_cases, eval_cases = [], []
    done = 1
    for k in (1, 2, 4, 5, 8, 11):
        fails = []
        while done < k:
            module.train()
            _, fails = _forward("training forward", module, x)
            if fails:
                sched_cases.extend(fails)
                break
            done += 1
        if fails:
            break
        try:
            got = _state(module)
        except Exception as exc:
            sched_cases.append(Property("rate after k training steps", False,
                                        f"raised {type(exc).__name__}: {exc}"))
            break
        want = (k, linear_rate(k, total, final))
        ok = got[0] == want[0] and abs(got[1] - want[1]) <= 1e-9
        sched_cases.append(Property(
            "steps and rate after k training forwards", ok,
            f"{label} after {k} training forwards: expected (steps, rate) = "
            f"({want[0]}, {want[1]:.4g}), got ({got[0]}, {got[1]:.4g})"))
        module.eval()
        with torch.no_grad():
            ye, fails = _forward("eval forward", module, x)
            _forward("eval forward", module, x)
        if fails:
            eval_cases.extend(fails)
            continue
        eval_cases.append(compare_arrays("eval forwards return x", ye, x_np, atol=0,
                                         context=f"{label} in eval mode after {k} steps"))
        after = _state(module)
        eval_cases.append(Property(
            "eval forwards do not advance the schedule", after == got,
            f"after 2 eval forwards (steps, rate) went from ({got[0]}, {got[1]:.4g}) to "
            f"({after[0]}, {after[1]:.4g})"))
    props.extend(_first_failure(sched_cases) or [Property(
        "steps and rate follow the linear schedule, one step per training forward", True,
        f"checked after 1, 2, 4, 5, 8 and 11 training forwards (total_steps={total})")])
    props.extend(_first_failure(eval_cases) or [Property(
        "eval forwards return x and do not advance the schedule", True,
        "2 eval forwards after each check")])

    # At the end of the ramp: drops about final_rate, in whole blocks.
    m2, failure = _make(answer, 0.1, 3, 4)
    if failure is not None:
        props.append(failure)
        return props
    m2.train()
    small = torch.from_numpy(x_np.copy())
    for _ in range(4):
        _forward("training forward", m2, small)
    shape = (64, 32, 11, 11)
    xs_np = _positive_input(rng, shape)
    torch.manual_seed(622)
    y, fails = _forward("training forward after the ramp", m2, torch.from_numpy(xs_np.copy()))
    if fails:
        props.extend(fails)
    else:
        dropped = y == 0
        ctx = f"ScheduledDropBlock2d(0.1, 3, 4) after 4 training forwards, x of shape {shape}"
        if not _union_of_blocks(dropped, 3):
            props.append(Property("drops whole 3x3 blocks", False,
                                  f"{ctx}: dropped units are not a union of 3x3 blocks"))
        elif (larger := _blocks_too_large(dropped, 3)) is not None:
            props.append(_too_large(ctx, larger, 3, shape[2:]))
        else:
            props.append(_fraction_property("after the ramp, drops a fraction final_rate",
                                            dropped, 0.1, ctx, 3, shape[2:]))

    # The counter survives a checkpoint.
    try:
        fresh, failure = _make(answer, final, block, total)
        if failure is not None:
            props.append(failure)
            return props
        fresh.load_state_dict(module.state_dict())
        got, want = _state(fresh), _state(module)
        props.append(Property(
            "the step counter is saved in state_dict", got == want,
            f"a fresh module loaded from state_dict() has (steps, rate) = ({got[0]}, {got[1]:.4g}),"
            f" the trained one ({want[0]}, {want[1]:.4g})"
            + ("" if got == want else ": register the counter with register_buffer")))
    except Exception as exc:
        props.append(Property("the step counter is saved in state_dict", False,
                              f"saving and loading the state_dict raised "
                              f"{type(exc).__name__}: {exc}"))
    return props


QUESTIONS = [
    Question("ex06.dropblock_module", 4, "DropBlock2d", check_dropblock_module,
             "Subclass torch.nn.Module and store rate and block_size; in forward call the "
             "package's PyTorch DropBlock function (channels_first input, its default "
             "gamma='exact') and tell it which mode the module is in.",
             "a DropBlock module that respects train/eval"),
    Question("ex06.scheduled_rate", 2, "scheduled_rate", check_scheduled_rate,
             "final_rate * min(step / total_steps, 1), and final_rate from the start when "
             "total_steps == 0.",
             "the linear rate schedule"),
    Question("ex06.scheduled_dropblock", 4, "ScheduledDropBlock2d", check_scheduled_dropblock,
             "Keep the step counter in a registered buffer, so that state_dict saves it; the "
             "rate follows scheduled_rate of that counter; a training forward drops with the "
             "current rate and only then counts the step; eval returns x and leaves the counter "
             "alone.",
             "a DropBlock whose rate grows per training step"),
]
