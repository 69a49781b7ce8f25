"""DropBlock's gamma computed inside a TensorFlow graph.

:mod:`structdrop_tutorial.gamma` computes gamma in Python from concrete numbers. Inside a
``tf.function`` the rate may be a tensor (a schedule changes it without retracing) and the map
size may be unknown until run time, so this module computes the same quantities with TensorFlow
ops, in float64, and works under ``jit_compile=True`` (XLA): every shape here depends only on
the static block size, never on the map size.

* ``paper_gamma``: the paper's closed form with the block clipped per axis, capped at 1.
* ``exact_gamma``: ``seeds="padded"`` is closed form; for ``seeds="valid"`` the expected drop
  fraction ``sum_c w_c (1 - (1 - gamma) ** c)`` over the histogram of coverage counts ``c`` is
  inverted by a vectorized bisection (64 brackets per round, 8 rounds: width ``64 ** -8``).

The tests check both against :mod:`structdrop_tutorial.gamma` to 1e-6.

Reference: G. Ghiasi, T.-Y. Lin, Q. V. Le, "DropBlock", NeurIPS 2018, arXiv:1810.12890.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

_BRACKETS = 64
_ROUNDS = 8


def _f64(v):
    return tf.cast(v, tf.float64)


def clipped_block(block: Sequence[int], spatial: Sequence) -> list:
    """``min(block, map)`` per axis (at least 1); Python ints where the map size is static."""
    out = []
    for b, n in zip(block, spatial):
        if isinstance(n, int):
            out.append(max(1, min(b, n)))
        else:
            out.append(tf.maximum(tf.minimum(tf.cast(n, tf.int32), b), 1))
    return out


def paper_gamma(rate, block: Sequence[int], spatial: Sequence):
    """The paper's gamma ``rate / prod(b) * prod(n) / prod(n - b + 1)``, capped at 1 (float64)."""
    bs = clipped_block(block, spatial)
    g = _f64(rate)
    for b, n in zip(bs, spatial):
        n = _f64(tf.maximum(tf.cast(n, tf.int32), 1))
        g = g * n / (_f64(b) * (n - _f64(b) + 1.0))
    return tf.minimum(g, 1.0)


def _axis_weights(n, b, upper: int):
    """Fraction of the ``n`` units of one axis covered by exactly 1, 2, ..., ``upper`` valid seeds."""
    n = tf.cast(n, tf.int32)
    b = tf.cast(b, tf.int32)
    i = tf.range(n)
    counts = tf.minimum(i, n - b) - tf.maximum(0, i - b + 1) + 1
    hist = tf.reduce_sum(tf.one_hot(counts - 1, upper, dtype=tf.float64), axis=0)
    return hist / _f64(tf.maximum(n, 1))


def expected_drop_fraction(gamma, values, weights):
    """``sum(weights * (1 - (1 - gamma) ** values))`` for one or many gammas (last axis)."""
    gamma = _f64(gamma)[..., None]
    log_keep = tf.math.log1p(-tf.minimum(gamma, 1.0))
    return tf.reduce_sum(weights * -tf.math.expm1(values * log_keep), axis=-1)


def coverage_histogram(block: Sequence[int], spatial: Sequence, seeds: str = "valid"):
    """Coverage counts ``values`` and their frequencies ``weights`` over the map (float64).

    Both have ``prod(block)`` entries whatever the map size: per axis the count of a unit is at
    most the (static) block size, and counts multiply across axes.
    """
    bs = clipped_block(block, spatial)
    values = np.array([math.prod(v) for v in itertools.product(*[range(1, b + 1) for b in block])],
                      dtype=np.float64)
    weights = tf.ones((), tf.float64)
    for b, n, upper in zip(bs, spatial, block):
        if seeds == "padded":
            w = tf.one_hot(tf.cast(b, tf.int32) - 1, upper, dtype=tf.float64)
        else:
            w = _axis_weights(n, b, upper)
        weights = weights[..., None] * w
    return tf.constant(values), tf.reshape(weights, [-1])


def exact_gamma(rate, block: Sequence[int], spatial: Sequence, seeds: str = "valid"):
    """The gamma whose expected drop fraction is ``rate`` (float64 scalar tensor).

    ``block`` holds the requested (static) block size per axis; it is clipped to ``spatial``,
    whose entries may be Python ints or scalar tensors.
    """
    rate = tf.clip_by_value(_f64(rate), 0.0, 1.0)
    bs = clipped_block(block, spatial)
    if seeds == "padded":
        area = _f64(1)
        for b in bs:
            area = area * _f64(b)
        return -tf.math.expm1(tf.math.log1p(-rate) / area)
    values, weights = coverage_histogram(block, spatial, seeds)
    # the root lies in [rate / mean coverage, rate] (every unit is covered at least once), as
    # in structdrop_tutorial.gamma: relative to the rate however small it is
    lo, hi = rate / tf.reduce_sum(values * weights), rate
    steps = tf.range(1, _BRACKETS, dtype=tf.float64) / _BRACKETS
    for _ in range(_ROUNDS):
        width = hi - lo
        below = expected_drop_fraction(lo + width * steps, values, weights) < rate
        j = tf.reduce_sum(tf.cast(below, tf.float64))
        lo, hi = lo + width * j / _BRACKETS, lo + width * (j + 1.0) / _BRACKETS
    gamma = 0.5 * (lo + hi)
    return tf.where(rate <= 0.0, tf.zeros_like(gamma), tf.where(rate >= 1.0, tf.ones_like(gamma), gamma))
