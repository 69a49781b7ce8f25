"""Exercise 5: DropBlock's seed probability gamma, from the paper's formula to the exact solution.

Every answer is compared with :mod:`structdrop_tutorial.gamma` on random maps (non-square),
blocks (odd, even, non-square, larger than the map) and rates from several seeds.
"""
from __future__ import annotations

import numbers

import numpy as np

from ... import gamma as G
from ..core import (Property, Question, call_checked, compare_arrays, describe, is_callable,
                    not_constant, timed_out)

SEEDS = (0, 1, 2, 3, 4, 5)


def _case(seed, base):
    """A random 2-D map, block (int or pair; sometimes larger than the map) and rate."""
    rng = np.random.default_rng(base + seed)
    shape = (int(rng.integers(3, 30)), int(rng.integers(3, 30)))
    if seed % 3 == 0:
        block = int(rng.integers(1, 10))
    else:
        block = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    rate = float(rng.uniform(0.02, 0.6))
    return shape, block, rate


def _summary(name, props, ok_detail):
    failed = [p for p in props if not p.passed]
    return failed[:1] if failed else [Property(name, True, ok_detail)]


def _number(name, got, ctx):
    """A failed Property unless ``got`` is a real number (Python or NumPy scalar)."""
    if isinstance(got, np.ndarray) and got.shape == ():
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return None, Property(name, False, f"{ctx}: expected a float, got {describe(got)}")
    return float(got), None


def _close(name, got, expected, atol, rtol, ctx):
    value, bad = _number(name, got, ctx)
    if bad:
        return bad
    ok = abs(value - expected) <= atol + rtol * abs(expected)
    return Property(name, ok, "" if ok else f"{ctx}: expected {expected:.12g}, got {value:.12g} "
                                            f"(tolerance atol={atol:g}, rtol={rtol:g})")


# --------------------------------------------------------------------------- Q1
def check_paper_gamma(answer):
    props = [is_callable("paper_gamma", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        shape, block, rate = _case(seed, 500)
        got, fails = call_checked("paper_gamma", answer, rate, block, shape)
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        cases.append(_close("matches the paper's formula", got,
                            G.paper_gamma(rate, block, shape), 0.0, 1e-9,
                            f"paper_gamma({rate:.4f}, {block}, {shape})"))
    props += _summary("matches the paper's formula", cases,
                      f"{len(SEEDS)} random rates, non-square maps and blocks (rtol=1e-9)")
    # The paper's square case, to recognise the formula.
    got, fails = call_checked("paper_gamma", answer, 0.1, 7, (14, 14))
    props += fails or [_close("the paper's example: rate 0.1, block 7, 14 x 14 map", got,
                              G.paper_gamma(0.1, 7, (14, 14)), 0.0, 1e-9,
                              "paper_gamma(0.1, 7, (14, 14))")]
    got, fails = call_checked("paper_gamma", answer, 0.2, (9, 3), (5, 11))
    props += fails or [_close("a block taller than the map is clipped", got,
                              G.paper_gamma(0.2, (9, 3), (5, 11)), 0.0, 1e-9,
                              "paper_gamma(0.2, (9, 3), (5, 11))")]
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on its arguments", outs))
    return props


# --------------------------------------------------------------------------- Q2
def check_coverage_counts(answer):
    props = [is_callable("coverage_counts", answer)]
    if not props[0].passed:
        return props
    cases = []
    for seed in SEEDS:
        shape, block, _ = _case(seed, 510)
        got, fails = call_checked("coverage_counts", answer, block, shape)
        if fails:
            cases.extend(fails)
            continue
        p = compare_arrays("matches gamma.coverage_counts", got,
                           G.coverage_counts(block, shape, "valid"),
                           context=f"coverage_counts({block}, {shape})")
        if p.passed and np.asarray(got).dtype.kind not in "iu":
            p = Property("returns integers", False, f"expected an integer array, got "
                                                    f"{describe(got)}")
        cases.append(p)
    props += _summary("matches gamma.coverage_counts", cases,
                      f"{len(SEEDS)} random maps and blocks, exact, integer dtype")
    got, fails = call_checked("coverage_counts", answer, (2, 3), (6, 5))
    if not fails:
        total = int(np.sum(np.asarray(got)))
        expected = 5 * 3 * 2 * 3
        props.append(Property("counts add up to (seed positions) x (block area)",
                              total == expected,
                              f"block (2, 3) on a (6, 5) map: {expected} expected, {total} got"))
    else:
        props += fails
    return props


# --------------------------------------------------------------------------- Q3
def check_expected_drop_fraction(answer):
    props = [is_callable("expected_drop_fraction", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        shape, block, rate = _case(seed, 520)
        gamma = float(np.random.default_rng(seed).uniform(0.001, 0.3))
        got, fails = call_checked("expected_drop_fraction", answer, gamma, block, shape)
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        cases.append(_close("matches gamma.expected_drop_fraction", got,
                            G.expected_drop_fraction(gamma, block, shape), 1e-10, 0.0,
                            f"expected_drop_fraction({gamma:.5f}, {block}, {shape})"))
    props += _summary("matches gamma.expected_drop_fraction", cases,
                      f"{len(SEEDS)} random gammas, maps and blocks (atol=1e-10)")
    ends = []
    for g, want in ((0.0, 0.0), (1.0, 1.0)):
        got, fails = call_checked("expected_drop_fraction", answer, g, 3, (8, 6))
        ends += fails or [_close(f"gamma = {g:g} drops a fraction {want:g}", got, want, 1e-12,
                                 0.0, f"expected_drop_fraction({g}, 3, (8, 6))")]
    props += _summary("gamma = 0 drops nothing, gamma = 1 everything", ends, "atol=1e-12")
    # Below the paper's promise: the paper's gamma realises less than the rate.
    got, fails = call_checked("expected_drop_fraction", answer,
                              G.paper_gamma(0.3, 5, (12, 12)), 5, (12, 12))
    if not fails:
        value, bad = _number("the paper's gamma falls short", got, "rate 0.3, block 5, 12 x 12")
        props.append(bad or Property("the paper's gamma falls short of the rate",
                                     value < 0.3 - 1e-3,
                                     f"rate 0.3, block 5, 12 x 12: {value:.4f} < 0.3"
                                     if value < 0.3 - 1e-3 else
                                     f"rate 0.3, block 5, 12 x 12: your fraction {value:.4f} is "
                                     "not below 0.3, but overlapping blocks must make the "
                                     "paper's gamma fall short"))
    else:
        props += fails
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on its arguments", outs))
    return props


# --------------------------------------------------------------------------- Q4
def check_exact_gamma(answer):
    props = [is_callable("exact_gamma", answer)]
    if not props[0].passed:
        return props
    cases, fracs, outs = [], [], []
    for seed in SEEDS:
        shape, block, rate = _case(seed, 530)
        ctx = f"exact_gamma({rate:.4f}, {block}, {shape})"
        got, fails = call_checked("exact_gamma", answer, rate, block, shape, time_limit_s=20)
        if timed_out(fails):
            return props + [Property(f.name, False, f"{ctx} {f.detail}; the remaining calls "
                                     "were not made") for f in fails]
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        cases.append(_close("matches gamma.exact_gamma", got,
                            G.exact_gamma(rate, block, shape), 1e-9, 0.0, ctx))
        value, bad = _number("in [0, 1]", got, ctx)
        if bad is None and 0.0 <= value <= 1.0:
            frac = G.expected_drop_fraction(value, block, shape)
            fracs.append(Property("its expected drop fraction is the rate",
                                  abs(frac - rate) <= 1e-7,
                                  f"{ctx} = {value:.9g} drops {frac:.9g} on average, "
                                  f"not {rate:.9g} (tolerance 1e-7)"))
        elif bad is None:
            fracs.append(Property("gamma is a probability", False,
                                  f"{ctx}: {value!r} is not in [0, 1]"))
    props += _summary("matches gamma.exact_gamma", cases,
                      f"{len(SEEDS)} random rates, maps and blocks (atol=1e-9)")
    props += _summary("its expected drop fraction is the rate", fracs,
                      "checked with gamma.expected_drop_fraction (atol=1e-7)")
    ends = []
    for r in (0.0, 1.0):
        got, fails = call_checked("exact_gamma", answer, r, 3, (7, 9), time_limit_s=20)
        ends += fails or [_close(f"rate {r:g} gives gamma {r:g}", got, r, 1e-9, 0.0,
                                 f"exact_gamma({r}, 3, (7, 9))")]
    props += _summary("rate 0 gives gamma 0, rate 1 gives gamma 1", ends, "atol=1e-9")
    got, fails = call_checked("exact_gamma", answer, 0.25, 9, (9, 9), time_limit_s=20)
    props += fails or [_close("block as large as the map: gamma equals the rate", got, 0.25,
                              1e-9, 0.0, "exact_gamma(0.25, 9, (9, 9))")]
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on its arguments", outs))
    return props


QUESTIONS = [
    Question("ex05.paper_gamma", 2, "paper_gamma", check_paper_gamma,
             "gamma = rate / (bh * bw) * (H * W) / ((H - bh + 1) * (W - bw + 1)), with the "
             "block clipped to the map on each axis first.",
             "the paper's gamma on a non-square map"),
    Question("ex05.coverage_counts", 2, "coverage_counts", check_coverage_counts,
             "Clip the block to the map first (b = min(b, n) per axis); then along one axis, unit "
             "i is covered by the seed positions s with max(0, i - b + 1) <= s <= min(i, n - b); "
             "the 2-D count is the outer product.",
             "how many seed positions cover each unit"),
    Question("ex05.expected_drop_fraction", 2, "expected_drop_fraction",
             check_expected_drop_fraction,
             "A unit covered c times survives with probability (1 - gamma) ** c; average "
             "1 - (1 - gamma) ** c over the map.",
             "the exact expected drop fraction"),
    Question("ex05.exact_gamma", 3, "exact_gamma", check_exact_gamma,
             "The expected drop fraction grows with gamma from 0 to 1: bisect on [0, 1] until "
             "the bracket is narrower than 1e-12 (about 40 halvings).",
             "the exact gamma by bisection"),
]
