"""Exercise 2: spatial dropout by hand in NumPy.

Questions: the keep mask from uniform noise, spatial dropout from a given uniform (compared with
:func:`structdrop_tutorial.numpy.spatial_dropout`), spatial dropout with the learner's own random
draws (checked by its properties: whole channels, inverted scaling, the dropped fraction within a
binomial interval, fresh masks per call) and measuring the dropped fraction of an output.
"""
from __future__ import annotations

import warnings

import numpy as np

from ...numpy import spatial_dropout
from ...shapes import noise_shape, spatial_axes
from ..core import (Property, Question, binomial_interval, call_checked, compare_arrays,
                    compare_values, describe, is_callable, not_constant, shared_over)

SEEDS = (0, 1, 2, 3, 4)
FORMATS = ("channels_last", "channels_first")


def _first_failure(props, name, detail):
    failed = [p for p in props if not p.passed]
    return failed[:1] if failed else [Property(name, True, detail)]


def _random_input(rng, rank, fmt, dtype):
    """A random input of rank 3 to 5 whose values are never exactly zero."""
    shape = tuple(int(v) for v in rng.integers(1, 6, size=rank))
    x = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return x.astype(dtype)


# --------------------------------------------------------------------------- Q1
def check_keep_from_uniform(answer):
    name = "keep_from_uniform"
    props = [is_callable(name, answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(200 + seed)
        shape = tuple(int(v) for v in rng.integers(1, 7, size=int(rng.integers(1, 5))))
        u = rng.random(shape)
        rate = float(rng.uniform(0.05, 0.95))
        got, fails = call_checked(name, answer, u, rate)
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        p = compare_arrays("kept where uniform >= rate", got, u >= rate,
                           context=f"seed {seed}, uniform of shape {shape}, rate={rate:.4f}")
        if p.passed and np.asarray(got).dtype != bool:
            p = Property("returns a boolean array", False,
                         f"expected dtype bool (True = kept), got {describe(got)}")
        cases.append(p)
    props += _first_failure(cases, "kept where uniform >= rate",
                            f"{len(SEEDS)} seeds, shapes of rank 1 to 4, exact, dtype bool")
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on the uniform", outs))
    u = np.array([0.0, 0.25, 0.5, 0.75, 0.999])
    got, fails = call_checked(name, answer, u, 0.5)
    props += fails or [compare_arrays("a draw equal to the rate is kept", got,
                                      np.array([False, False, True, True, True]),
                                      context="uniform [0, 0.25, 0.5, 0.75, 0.999], rate 0.5")]
    return props


# --------------------------------------------------------------------------- Q2
def check_spatial_dropout_np(answer):
    name = "spatial_dropout_np"
    props = [is_callable(name, answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        for fmt in FORMATS:
            rng = np.random.default_rng(210 + seed)
            rank = 3 + (seed % 3)
            dtype = np.float32 if seed % 2 else np.float64
            x = _random_input(rng, rank, fmt, dtype)
            u = rng.random(noise_shape("spatial", x.shape, fmt))
            rate = float(rng.uniform(0.1, 0.8))
            ctx = (f"seed {seed}, x of shape {x.shape} ({np.dtype(dtype).name}, {fmt}), "
                   f"rate={rate:.4f}")
            got, fails = call_checked(name, answer, x, rate, u, fmt)
            if fails:
                cases.extend(Property(f.name, False, f"{ctx}: {f.detail}") for f in fails)
                continue
            outs.append(got)
            tol = 1e-6 if dtype == np.float32 else 1e-12
            cases.append(compare_arrays("matches numpy.spatial_dropout", got,
                                        spatial_dropout(x, rate, fmt, uniform=u),
                                        atol=tol, rtol=tol, check_dtype=True, context=ctx))
    props += _first_failure(cases, "matches numpy.spatial_dropout",
                            f"{len(cases)} cases: ranks 3 to 5, both data formats, float32 "
                            "(atol=rtol=1e-6) and float64 (1e-12), dtype kept, input unchanged")
    if len(outs) == len(cases):
        props.append(not_constant("depends on the uniform", outs))
    rng = np.random.default_rng(219)
    x = _random_input(rng, 4, "channels_last", np.float32)
    u = rng.random(noise_shape("spatial", x.shape, "channels_last"))
    got, fails = call_checked(name, answer, x, 0.0, u, "channels_last")
    props += fails or [compare_arrays("rate 0 returns x", got, x, check_dtype=True)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, fails = call_checked(name, answer, x, 1.0, u, "channels_last")
    if fails:
        props += fails
    else:
        p = compare_arrays("rate 1 gives zeros, not NaN", got, np.zeros_like(x), check_dtype=True)
        if p.passed and caught:
            p = Property("rate 1 gives zeros, not NaN", False,
                         f"the result is right but a warning was raised: {caught[0].message}; "
                         "handle rate 1 before dividing by 1 - rate")
        props.append(p)
    return props


# --------------------------------------------------------------------------- Q3
def check_random_spatial_dropout(answer):
    name = "random_spatial_dropout"
    props = [is_callable(name, answer)]
    if not props[0].passed:
        return props
    structure, counts, outs = [], [0, 0], []
    for seed in SEEDS:
        for fmt in FORMATS:
            rng = np.random.default_rng(230 + seed)
            rank = 3 + (seed % 3)
            x = _random_input(rng, rank, fmt, np.float32)
            rate = (0.2, 0.5, 0.7)[seed % 3]
            ctx = f"seed {seed}, x of shape {x.shape} ({fmt}), rate={rate}"
            got, fails = call_checked(name, answer, x, rate, np.random.default_rng(seed), fmt)
            if fails:
                structure.extend(Property(f.name, False, f"{ctx}: {f.detail}") for f in fails)
                continue
            try:
                y = np.asarray(got)
            except Exception:
                y = None
            if y is None or y.shape != x.shape or y.dtype != x.dtype:
                structure.append(Property("same shape and dtype as x", False,
                                          f"{ctx}: expected {describe(x)}, got {describe(got)}"))
                continue
            outs.append(y)
            axes = spatial_axes(x.ndim, fmt)
            dropped = np.all(y == 0, axis=axes, keepdims=True)
            kept_ok = np.isclose(y, x / (1 - rate), rtol=1e-5, atol=0)
            ok = np.all(dropped | np.all(kept_ok, axis=axes, keepdims=True))
            if not ok:
                structure.append(Property(
                    "whole channels dropped, the rest scaled by 1 / (1 - rate)", False,
                    f"{ctx}: some (sample, channel) slice is neither all zeros nor "
                    "x / (1 - rate) on every spatial position (rtol=1e-5)"))
                continue
            structure.append(Property("structure", True))
            # Many independent draws for the dropped fraction.
            sub = np.random.default_rng(1000 + seed)
            big = np.ones((64, 3, 3, 16) if fmt == "channels_last" else (64, 16, 3, 3),
                          np.float32)
            for _ in range(5):
                got, fails = call_checked(name, answer, big, 0.3, sub, fmt)
                if fails:
                    structure.extend(fails)
                    break
                yb = np.asarray(got)
                zero = yb == 0
                maps = np.all(zero, axis=spatial_axes(4, fmt))   # (sample, channel) dropped
                if np.any(np.any(zero, axis=spatial_axes(4, fmt)) & ~maps):
                    structure.append(Property(
                        "one draw per (sample, channel)", False,
                        f"x of shape {big.shape} ({fmt}), rate 0.3: some (sample, channel) "
                        "maps are partly zero: one draw per element, not per (sample, channel)"))
                    break
                shared = shared_over(maps)
                if shared is not None:
                    structure.append(Property(
                        "one draw per (sample, channel)", False,
                        f"x of shape {big.shape} ({fmt}), rate 0.3: "
                        + ("in every sample all 16 channels were dropped or kept together: one "
                           "draw per sample, not per (sample, channel)" if shared == "channels"
                           else "all 64 samples got the same channel mask: one draw per "
                           "channel for the whole batch, not per (sample, channel)")
                        + " (independent draws do that with probability below 1e-100)"))
                    break
                counts[0] += int(maps.sum())
                counts[1] += 64 * 16
    props += _first_failure(structure, "whole channels dropped, the rest scaled by 1 / (1 - rate)",
                            f"{len(SEEDS) * 2} inputs: ranks 3 to 5, both data formats "
                            "(rtol=1e-5), input unchanged")
    if counts[1]:
        lo, hi = binomial_interval(counts[1], 0.3, sigmas=5.0)
        frac = counts[0] / counts[1]
        props.append(Property("dropped fraction close to the rate", lo <= frac <= hi,
                              f"{counts[1]} (sample, channel) draws at rate 0.3: dropped "
                              f"{frac:.4f}, allowed [{lo:.4f}, {hi:.4f}] (5 sigma)"
                              if not lo <= frac <= hi else
                              f"{counts[1]} draws at rate 0.3 within a 5-sigma binomial interval"))
    if len(outs) == 2 * len(SEEDS):
        rng = np.random.default_rng(239)
        x = np.ones((8, 4, 4, 8), np.float32)
        draws = []
        for _ in range(3):
            got, fails = call_checked(name, answer, x, 0.5, rng, "channels_last")
            if fails:
                props += fails
                break
            draws.append(got)
        if len(draws) == 3:
            p = not_constant("a new mask on every call with the same generator", draws,
                             "3 calls on the same input with one generator returned the same "
                             "output: draw from the generator passed in, on every call")
            props.append(p)
        a, fa = call_checked(name, answer, x, 0.5, np.random.default_rng(7), "channels_last")
        b, fb = call_checked(name, answer, x, 0.5, np.random.default_rng(7), "channels_last")
        if fa or fb:
            props += fa or fb
        else:
            props.append(compare_arrays("the same seed gives the same mask", b, a,
                                        context="two generators made with seed 7"))
    return props


# --------------------------------------------------------------------------- Q4
def _ref_fraction(y, fmt):
    return float(np.mean(np.all(y == 0, axis=spatial_axes(y.ndim, fmt))))


def check_dropped_fraction(answer):
    name = "dropped_fraction"
    props = [is_callable(name, answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        for fmt in FORMATS:
            rng = np.random.default_rng(240 + seed)
            x = _random_input(rng, 3 + seed % 3, fmt, np.float64)
            x = np.concatenate([x, x], axis=0)  # at least two samples
            rate = float(rng.uniform(0.2, 0.8))
            y = spatial_dropout(x, rate, fmt, seed=rng)
            if fmt == "channels_first" and x.ndim > 3:
                y[0, 0, 0] = 0.0  # a partly zero channel is not a dropped channel
            got, fails = call_checked(name, answer, y, fmt)
            if fails:
                cases.extend(fails)
                continue
            outs.append(got)
            want = _ref_fraction(y, fmt)
            try:
                ok = abs(float(got) - want) <= 1e-12
            except Exception:
                ok = False
            cases.append(Property("fraction of all-zero (sample, channel) maps", ok, "" if ok else
                                  f"seed {seed}, output of shape {y.shape} ({fmt}): expected "
                                  f"{want:.6f}, got {describe(got)} (atol=1e-12)"))
    props += _first_failure(cases, "fraction of all-zero (sample, channel) maps",
                            f"{len(cases)} outputs, ranks 3 to 5, both formats, atol=1e-12")
    if len(outs) == len(cases):
        props.append(not_constant("depends on the output", outs))
    y = np.ones((2, 3, 3, 4))
    y[1, :, :, 2] = 0
    got, fails = call_checked(name, answer, y, "channels_last")
    props += fails or [compare_values("one dropped map of eight", _round(got), 0.125,
                                      context="a (2, 3, 3, 4) output with one zero map")]
    return props


def _round(v):
    try:
        return round(float(v), 12)
    except Exception:
        return v


QUESTIONS = [
    Question("ex02.keep_from_uniform", 1, "keep_from_uniform", check_keep_from_uniform,
             "A unit is dropped where uniform < rate, so it is kept where uniform >= rate; "
             "return the comparison itself (a boolean array).",
             "the keep mask from uniform noise"),
    Question("ex02.spatial_dropout_np", 3, "spatial_dropout_np", check_spatial_dropout_np,
             "The uniform has shape (batch, 1, ..., channels) or (batch, channels, 1, ...); "
             "broadcasting keep * x spreads one draw over a whole map. Scale by 1 / (1 - rate) "
             "in x's dtype, return zeros at rate 1 and never write into x.",
             "spatial dropout from a given uniform, both data formats"),
    Question("ex02.random_spatial_dropout", 3, "random_spatial_dropout",
             check_random_spatial_dropout,
             "Draw rng.random(noise shape) with one value per (sample, channel) and reuse your "
             "spatial_dropout_np; take the generator as given, do not create a new one inside.",
             "spatial dropout with your own random draws"),
    Question("ex02.dropped_fraction", 1, "dropped_fraction", check_dropped_fraction,
             "A channel map is dropped when it is zero at every spatial position: np.all(y == 0, "
             "axis=spatial axes), then the mean.",
             "measure the fraction of dropped channel maps"),
]
