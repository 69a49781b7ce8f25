"""Shared test helpers (importable as ``helpers``; pyproject puts tests/ on the path).

A brute-force DropBlock mask that the fast implementations are checked against, and the
bound used by statistical tests."""
import itertools

import numpy as np


def brute_force_keep_mask(seed_grid, block, seeds="valid"):
    """Paint every seed's block one by one on a (*spatial) map; returns the boolean keep mask.

    ``seed_grid`` is a boolean array over seed positions for ONE map (spatial axes only).
    """
    seed_grid = np.asarray(seed_grid, dtype=bool)
    block = tuple(block)
    if seeds == "valid":
        shape = tuple(n + b - 1 for n, b in zip(seed_grid.shape, block))
    else:
        shape = tuple(n - b + 1 for n, b in zip(seed_grid.shape, block))
    dropped = np.zeros(shape, dtype=bool)
    for pos in zip(*np.nonzero(seed_grid)):
        index = []
        for s, b, n in zip(pos, block, shape):
            start = s if seeds == "valid" else s - b + 1
            index.append(slice(max(start, 0), min(start + b, n)))
        dropped[tuple(index)] = True
    return ~dropped


def five_sigma_fraction_bound(p, n_independent):
    """5-sigma bound on the mean of ``n_independent`` i.i.d. fractions in [0, 1] with mean ``p``.

    A fraction in [0, 1] with mean p has variance at most p (1 - p), so the mean of n of them has
    standard deviation at most sqrt(p (1 - p) / n); the bound is five of those (plus a 1e-12 floor).
    """
    return 5.0 * np.sqrt(p * (1.0 - p) / n_independent) + 1e-12


def all_seed_positions(shape):
    return itertools.product(*(range(n) for n in shape))


def triton_test_device() -> str:
    """The device the Triton path's tests run on: "cuda" on a GPU, else "cpu" where Triton's
    interpreter is on (tests/conftest.py turns it on); otherwise the calling module is skipped."""
    import os

    import pytest
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
    return "cpu"


def interpreted_bfloat16(p):
    """A float32 torch tensor cast to bfloat16 the way Triton's interpreter casts it in a kernel:
    the low 16 bits dropped (round toward zero), where compiled kernels and ``.to()`` round to
    nearest even."""
    import torch
    return (p.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
