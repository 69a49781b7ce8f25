"""Exercise 4: DropBlock's mask, built by hand in NumPy.

Questions: the seed grid's shape, growing seeds into blocks, the full keep mask from a uniform
array (compared with :func:`structdrop_tutorial.numpy.dropblock_keep_mask`) and the batch
normalization that must survive a mask where everything was dropped.
"""
from __future__ import annotations

import warnings

import numpy as np

from ...gamma import clip_block
from ...numpy import dropblock_keep_mask
from ...shapes import seed_grid_shape
from ..core import (Property, Question, call_checked, compare_arrays, compare_values,
                    describe, is_callable, not_constant)

SEEDS = (0, 1, 2, 3, 4)


def _first_failure(props):
    """Keep only the first failure of a list of per-case properties (else one summary)."""
    failed = [p for p in props if not p.passed]
    return failed[:1] if failed else []


# --------------------------------------------------------------------------- references
def _ref_seed_grid(spatial_shape, block_size, seeds):
    block = clip_block(block_size, spatial_shape)
    full = (1,) + tuple(spatial_shape) + (1,)
    return tuple(seed_grid_shape(full, block, "channels_last", seeds)[1:-1])


def _ref_expand(seed_map, block):
    u = np.where(np.asarray(seed_map, dtype=bool), 0.0, 1.0)[None, :, :, None]
    return ~dropblock_keep_mask(u, 0.5, block, "channels_last", "valid")[0, :, :, 0]


def _as_pair(b):
    return (int(b), int(b)) if np.ndim(b) == 0 else tuple(int(v) for v in b)


# --------------------------------------------------------------------------- Q1
def check_seed_grid(answer):
    props = [is_callable("seed_grid", answer)]
    if not props[0].passed:
        return props
    cases = {"valid seeds, block inside the map": [], "a block larger than the map is clipped": [],
             "padded seeds": []}
    for seed in SEEDS:
        rng = np.random.default_rng(400 + seed)
        nd = int(rng.integers(1, 4))
        shape = tuple(int(v) for v in rng.integers(3, 17, size=nd))
        block = tuple(int(rng.integers(1, s + 1)) for s in shape)
        big = tuple(int(s + rng.integers(0, 5)) for s in shape)
        bint = int(rng.integers(1, min(shape) + 1))
        for label, args in (("valid seeds, block inside the map", (shape, block, "valid")),
                            ("valid seeds, block inside the map", (shape, bint, "valid")),
                            ("a block larger than the map is clipped", (shape, big, "valid")),
                            ("padded seeds", (shape, block, "padded")),
                            ("padded seeds", (shape, big, "padded"))):
            ctx = f"seed_grid{args}"
            got, fails = call_checked("seed_grid", answer, *args)
            if fails:
                cases[label].extend(fails)
                continue
            cases[label].append(compare_values(label, got, _ref_seed_grid(*args), context=ctx))
    for label, ps in cases.items():
        bad = _first_failure(ps)
        props.extend(bad or [Property(label, True, f"{len(ps)} random cases (1 to 3 axes)")])
    got, fails = call_checked("seed_grid", answer, (9, 7), (3, 2), "valid")
    if not fails:
        ok = isinstance(got, tuple) and all(isinstance(v, (int, np.integer)) for v in got)
        props.append(Property("returns a tuple of ints", ok, "" if ok else
                              f"expected a tuple like (7, 6), got {describe(got)}"))
    return props


# --------------------------------------------------------------------------- Q2
def check_expand_seeds(answer):
    props = [is_callable("expand_seeds", answer)]
    if not props[0].passed:
        return props
    # One seed: exactly one block, starting at the seed.
    for label, block, grid, pos in (("one seed, odd block 3", 3, (6, 7), (2, 4)),
                                    ("one seed, even block 2", 2, (5, 4), (4, 0)),
                                    ("one seed, block (2, 5)", (2, 5), (4, 3), (1, 2))):
        seed_map = np.zeros(grid, dtype=bool)
        seed_map[pos] = True
        got, fails = call_checked(label, answer, seed_map, block)
        if fails:
            props.extend(fails)
            continue
        props.append(compare_arrays(label, got, _ref_expand(seed_map, _as_pair(block)),
                                    context=f"seeds {grid} with one seed at {pos}, "
                                            f"block_size={block}"))
    # Random seed maps against the reference.
    outs, cases = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(410 + seed)
        block = int(rng.integers(1, 6)) if seed % 2 else tuple(int(v) for v in rng.integers(1, 6, 2))
        grid = tuple(int(v) for v in rng.integers(2, 12, 2))
        seed_map = rng.random(grid) < rng.uniform(0.05, 0.3)
        got, fails = call_checked("expand_seeds", answer, seed_map, block)
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        p = compare_arrays("random seeds match the reference", got,
                           _ref_expand(seed_map, _as_pair(block)),
                           context=f"seed {seed}, seeds of shape {grid}, block_size={block}")
        if p.passed:
            g = np.asarray(got)
            if g.dtype != bool:
                p = Property("returns a boolean array", False,
                             f"expected dtype bool (True = dropped), got {describe(got)}")
        cases.append(p)
    props.extend(_first_failure(cases) or [Property(
        "random seeds match the reference", True,
        f"{len(SEEDS)} seeds, odd/even/non-square blocks, exact, dtype bool")])
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on the seeds", outs))
    none = np.zeros((4, 5), dtype=bool)
    got, fails = call_checked("no seeds", answer, none, 3)
    props.extend(fails or [compare_arrays("no seeds: nothing dropped", got,
                                          np.zeros((6, 7), dtype=bool))])
    return props


# --------------------------------------------------------------------------- Q3
def check_keep_mask(answer):
    props = [is_callable("keep_mask", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(420 + seed)
        h, w = (int(v) for v in rng.integers(4, 14, 2))
        block = int(rng.integers(1, min(h, w) + 1))
        if seed == 3:
            block = (int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1)))
        bh, bw = _as_pair(block)
        n = int(rng.integers(1, 4))
        c = 1 if seed == 2 else int(rng.integers(1, 4))
        u = rng.random((n, h - bh + 1, w - bw + 1, c))
        gamma = float(rng.uniform(0.02, 0.3))
        got, fails = call_checked("keep_mask", answer, u, gamma, block)
        if fails:
            cases.extend(fails)
            continue
        outs.append(got)
        p = compare_arrays("matches dropblock_keep_mask", got,
                           dropblock_keep_mask(u, gamma, block, "channels_last", "valid"),
                           context=f"seed {seed}, uniform of shape {u.shape}, gamma={gamma:.4f}, "
                                   f"block_size={block}")
        if p.passed and np.asarray(got).dtype != bool:
            p = Property("returns a boolean array", False,
                         f"expected dtype bool (True = kept), got {describe(got)}")
        cases.append(p)
    props.extend(_first_failure(cases) or [Property(
        "matches dropblock_keep_mask", True,
        f"{len(SEEDS)} seeds, shapes and gammas vary, exact, dtype bool")])
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on the uniform", outs))
    # gamma 0 keeps all; gamma above every draw drops all.
    rng = np.random.default_rng(429)
    u = rng.random((2, 4, 5, 3))
    got, fails = call_checked("gamma = 0", answer, u, 0.0, 3)
    props.extend(fails or [compare_arrays("gamma = 0 keeps everything", got,
                                          np.ones((2, 6, 7, 3), dtype=bool))])
    got, fails = call_checked("gamma = 1", answer, u, 1.0, 3)
    props.extend(fails or [compare_arrays("gamma = 1 drops everything", got,
                                          np.zeros((2, 6, 7, 3), dtype=bool))])
    return props


# --------------------------------------------------------------------------- Q4
def _ref_apply(x, keep):
    kept = np.count_nonzero(keep)
    scale = keep.size / kept if kept else 0.0
    return x * keep * x.dtype.type(scale)


def check_apply_mask(answer):
    props = [is_callable("apply_mask", answer)]
    if not props[0].passed:
        return props
    cases = []
    for seed in SEEDS:
        rng = np.random.default_rng(430 + seed)
        shape = tuple(int(v) for v in rng.integers(1, 7, size=4))
        dtype = np.float32 if seed % 2 else np.float64
        x = rng.standard_normal(shape).astype(dtype)
        keep = rng.random(shape) >= rng.uniform(0.1, 0.6)
        if not keep.any():
            keep.flat[0] = True
        got, fails = call_checked("apply_mask", answer, x, keep)
        if fails:
            cases.extend(fails)
            continue
        tol = 1e-5 if dtype == np.float32 else 1e-12
        p = compare_arrays("x * keep * keep.size / keep.sum()", got, _ref_apply(x, keep),
                           atol=tol, rtol=tol, check_dtype=True,
                           context=f"seed {seed}, x of shape {shape} and dtype "
                                   f"{np.dtype(dtype).name}, {int(keep.sum())} kept")
        cases.append(p)
    props.extend(_first_failure(cases) or [Property(
        "x * keep * keep.size / keep.sum()", True,
        f"{len(SEEDS)} seeds, float32 (atol=rtol=1e-5) and float64 (1e-12), dtype kept")])
    rng = np.random.default_rng(439)
    x = rng.standard_normal((2, 3, 4, 2)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, fails = call_checked("all dropped", answer, x, np.zeros(x.shape, dtype=bool))
    if fails:
        props.extend(fails)
    else:
        p = compare_arrays("everything dropped gives zeros, not NaN", got, np.zeros_like(x),
                           check_dtype=True)
        if p.passed and caught:
            p = Property("everything dropped gives zeros, not NaN", False,
                         f"the result is right but a warning was raised: {caught[0].message}; "
                         "test for an empty mask before dividing")
        props.append(p)
    got, fails = call_checked("all kept", answer, x, np.ones(x.shape, dtype=bool))
    props.extend(fails or [compare_arrays("everything kept gives x back", got, x, atol=0,
                                          check_dtype=True)])
    return props


QUESTIONS = [
    Question("ex04.seed_grid", 1, "seed_grid", check_seed_grid,
             "Clip the block to the map first (min(block, map) per axis); valid seeds give "
             "map - block + 1 positions per axis, padded seeds map + block - 1.",
             "the shape of the seed grid"),
    Question("ex04.expand_seeds", 3, "expand_seeds", check_expand_seeds,
             "Pad the seed map with block - 1 False entries on both sides of each axis, then "
             "take the OR (max) over every window of block entries; the seed at s drops "
             "s .. s + block - 1.",
             "grow seeds into blocks"),
    Question("ex04.keep_mask", 3, "keep_mask", check_keep_mask,
             "Seeds are where uniform < gamma; grow them over axes 1 and 2 only (batch and "
             "channels stay separate) and return the complement, True = kept.",
             "the keep mask from a uniform array"),
    Question("ex04.apply_mask", 2, "apply_mask", check_apply_mask,
             "Scale by keep.size / number kept, in x's dtype (NumPy 2 makes that ratio a float64: "
             "use x.dtype.type(ratio)); when nothing is kept return zeros without dividing by "
             "zero.",
             "apply the mask with batch normalization"),
]
