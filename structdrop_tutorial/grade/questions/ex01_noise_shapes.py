"""Exercise 1: noise shapes (which units share one Bernoulli draw).

Reference: :mod:`structdrop_tutorial.shapes` (``noise_shape``, ``all_noise_shapes``).
"""
from __future__ import annotations

import numpy as np

from ...shapes import all_noise_shapes, noise_shape
from ..core import Property, Question, call_checked, compare_values, describe, is_callable

SEEDS = (0, 1, 2, 3, 4)


def _random_shape(rng, rank, low=1, high=9):
    return tuple(int(s) for s in rng.integers(low, high, size=rank))


def _resolve(noise, shape):
    """Keras's rule: a None entry of the noise shape takes the input's size on that axis."""
    return tuple(s if n is None else n for n, s in zip(noise, shape))


# --------------------------------------------------------------------------- Q1
def _check_spatial1d(answer):
    name = "spatial1d_noise_shape"
    if not isinstance(answer, (tuple, list)):
        return [Property(f"{name} is a tuple", False,
                         f"expected a tuple such as (None, 2, None), got {describe(answer)}")]
    props = [Property(f"{name} is a tuple", True)]
    if len(answer) != 3:
        return props + [Property("rank", False, f"inputs are (batch, steps, channels): expected "
                                                f"3 entries, got {len(answer)}")]
    if not all(a is None or (isinstance(a, (int, np.integer)) and not isinstance(a, bool))
               for a in answer):
        return props + [Property("entries", False,
                                 f"entries must be None or ints, got {tuple(answer)!r}")]
    rng = np.random.default_rng(101)
    shapes = [(8, 20, 16), (1, 5, 3)] + [_random_shape(rng, 3, 2, 40) for _ in range(5)]
    for shape in shapes:
        want = noise_shape("spatial", shape, "channels_last")
        got = _resolve(answer, shape)
        if got != want:
            detail = (f"for an input of shape {shape} your noise shape becomes {got}, "
                      f"SpatialDropout1D uses {want}")
            if got == noise_shape("timestep", shape, "channels_last"):
                detail += " (yours drops whole time steps: that is the other way round)"
            return props + [Property("works for every input shape", False, detail)]
    props.append(Property("works for every input shape", True,
                          f"{len(shapes)} input shapes, None entries resolved as Keras does"))
    return props


# --------------------------------------------------------------------------- Q2
def _check_all_shapes(fn):
    name = "admissible_noise_shapes"
    props = [is_callable(name, fn)]
    if not props[0].passed:
        return props
    rng = np.random.default_rng(202)
    cases = [(3, 4, 5), (2, 1, 3), (7,), (1, 1)]
    cases += [_random_shape(rng, int(rng.integers(1, 5)), 1, 6) for _ in range(6)]
    for shape in cases:
        got, failures = call_checked(name, fn, shape)
        if failures:
            return props + failures
        want = all_noise_shapes(shape)
        try:
            got_list = [tuple(int(s) for s in g) for g in got]
        except Exception:
            return props + [Property("returns shapes", False, f"input {shape}: expected a list "
                                     f"of tuples, got {describe(got)}")]
        if len(got_list) != len(set(got_list)):
            dup = sorted({g for g in got_list if got_list.count(g) > 1})
            return props + [Property("no duplicates", False,
                                     f"input {shape}: {dup[:3]} listed more than once "
                                     "(axes of size 1 give the same shape either way)")]
        if set(got_list) != set(want):
            missing = sorted(set(want) - set(got_list))[:3]
            extra = sorted(set(got_list) - set(want))[:3]
            return props + [Property("the right set of shapes", False,
                                     f"input {shape}: expected {len(want)} shapes, got "
                                     f"{len(got_list)}; missing {missing}, not admissible {extra}")]
    props.append(Property("the right set of shapes", True,
                          f"{len(cases)} input shapes of rank 1 to 4, compared as sets"))
    props.append(Property("no duplicates", True))
    return props


# --------------------------------------------------------------------------- Q3
def _check_noise_shape_fn(fn):
    name = "noise_shape_for"
    props = [is_callable(name, fn)]
    if not props[0].passed:
        return props
    n = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        for kind in ("dropout", "spatial", "timestep"):
            for fmt in ("channels_last", "channels_first"):
                ranks = (3,) if kind == "timestep" else (3, 4, 5)
                for rank in ranks:
                    shape = list(_random_shape(rng, rank, 1, 33))
                    if rng.random() < 0.3:
                        shape[int(rng.integers(0, rank))] = None
                    shape = tuple(shape)
                    got, failures = call_checked(name, fn, kind, shape, fmt)
                    if failures:
                        return props + [Property(f.name, False, f"{name}({kind!r}, {shape}, "
                                                 f"{fmt!r}): {f.detail}") for f in failures]
                    want = noise_shape(kind, shape, fmt)
                    p = compare_values("matches the reference", got, want,
                                       context=f"{name}({kind!r}, {shape}, {fmt!r})")
                    if not p.passed:
                        return props + [p]
                    n += 1
    props.append(Property("matches the reference", True,
                          f"{n} cases: 3 kinds, both data formats, ranks 3 to 5, None entries"))
    _, failures = call_checked(name, fn, "channels", (4, 8, 8, 3), "channels_last")
    if failures and "ValueError" in failures[0].detail:
        props.append(Property("unknown kind raises ValueError", True))
    else:
        props.append(Property("unknown kind raises ValueError", False,
                              "noise_shape_for('channels', (4, 8, 8, 3), 'channels_last') should "
                              "raise ValueError naming the allowed kinds"
                              + ("" if failures else " but returned normally")))
    return props


# --------------------------------------------------------------------------- Q4
def _check_per_sample(fn):
    name = "per_sample_noise_shape"
    props = [is_callable(name, fn)]
    if not props[0].passed:
        return props
    rng = np.random.default_rng(404)
    cases = [(16, 7, 7, 64), (3, 10), (5,)] + [
        _random_shape(rng, int(rng.integers(1, 6)), 1, 20) for _ in range(6)]
    for shape in cases:
        got, failures = call_checked(name, fn, shape)
        if failures:
            return props + failures
        want = (shape[0],) + (1,) * (len(shape) - 1)
        p = compare_values("one draw per sample", got, want, context=f"input shape {shape}")
        if not p.passed:
            return props + [p]
    props.append(Property("one draw per sample", True, f"{len(cases)} input shapes, ranks 1 to 5"))
    return props


QUESTIONS = [
    Question("ex01.spatial1d_noise_shape", 1, "spatial1d_noise_shape", _check_spatial1d,
             hint="SpatialDropout1D drops whole channels of each sample, so the mask is shared "
                  "along the steps axis: that axis gets 1, the others None.",
             title="Keras noise_shape that makes Dropout act like SpatialDropout1D"),
    Question("ex01.admissible_noise_shapes", 2, "admissible_noise_shapes", _check_all_shapes,
             hint="Each axis is either kept (its size) or shared (1): loop over the 2**rank "
                  "choices, e.g. with itertools.product, and drop repeated shapes.",
             title="list every admissible noise shape of an input shape"),
    Question("ex01.noise_shape_for", 3, "noise_shape_for", _check_noise_shape_fn,
             hint="Find the channel axis first (1 for channels_first, the last for "
                  "channels_last); 'spatial' keeps batch and channels, 'timestep' keeps all but "
                  "the channels, 'dropout' keeps everything. None entries are copied through.",
             title="noise shape for a kind of dropout and a data format"),
    Question("ex01.per_sample_noise_shape", 1, "per_sample_noise_shape", _check_per_sample,
             hint="Stochastic depth drops a whole residual branch per sample: keep the batch "
                  "size, 1 everywhere else.",
             title="noise shape of stochastic depth (one draw per sample)"),
]
