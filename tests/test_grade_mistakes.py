"""Plausible wrong answers that the grader must reject, and correct variants it must accept.

Each wrong answer is a mistake a learner can make while every simpler check still passes (right
shapes, right scale, roughly the right fraction): masks shared across channels or across the
batch, one draw per element where one per channel was asked, blocks larger than asked or whole
maps dropped, a schedule counter advanced before dropping, a block not clipped to the map.
"""
import numpy as np
import pytest

from structdrop_tutorial import grade
from structdrop_tutorial.grade import core

torch = pytest.importorskip("torch")
from structdrop_tutorial import torch as sdt  # noqa: E402


def failed(qid, answer):
    """Names of the failed properties (empty when the answer passes)."""
    result = core.grade(grade.question(qid), answer, time_limit_s=120)
    return [p.name for p in result.properties if not p.passed]


def test_shared_over_names_the_shared_axis():
    d = np.zeros((4, 3, 5), bool)
    d[1] = True
    assert core.shared_over(d) == "channels"
    d = np.zeros((4, 3, 5), bool)
    d[:, 1] = True
    assert core.shared_over(d) == "samples"
    d[0, 0, 0] = True
    assert core.shared_over(d) is None
    assert core.shared_over(np.zeros((1, 1, 5), bool)) is None
    assert core.shared_over(np.zeros((4, 3, 5), bool)) is None   # constant: says nothing
    assert core.shared_over(np.ones((4, 3, 5), bool)) is None


# --------------------------------------------------------------------------- ex02
def _spatial_np(x, rate, rng, data_format, per):
    c = x.shape[-1] if data_format == "channels_last" else x.shape[1]
    n = x.shape[0]
    if per == "sample":
        u = np.repeat(rng.random((n, 1)), c, axis=1)
    elif per == "batch":
        u = np.repeat(rng.random((1, c)), n, axis=0)
    else:
        u = rng.random((n, c))
    shape = [1] * x.ndim
    shape[0] = n
    shape[-1 if data_format == "channels_last" else 1] = c
    keep = (u >= rate).reshape(shape)
    return np.where(keep, x / np.float32(1 - rate), np.float32(0)).astype(x.dtype)


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_ex02_rejects_masks_shared_over_an_axis(per):
    def answer(x, rate, rng, data_format="channels_last"):
        return _spatial_np(x, rate, rng, data_format, per)
    assert "one draw per (sample, channel)" in failed("ex02.random_spatial_dropout", answer)


def test_ex02_names_one_draw_per_element():
    def answer(x, rate, rng, data_format="channels_last"):
        return (x * (rng.random(x.shape) >= rate) / np.float32(1 - rate)).astype(x.dtype)
    result = core.grade(grade.question("ex02.random_spatial_dropout"), answer, time_limit_s=120)
    details = [p.detail for p in result.properties if not p.passed]
    assert details and "one draw per element" in details[0], details


def test_ex02_accepts_one_draw_per_sample_and_channel():
    def answer(x, rate, rng, data_format="channels_last"):
        return _spatial_np(x, rate, rng, data_format, "unit")
    assert failed("ex02.random_spatial_dropout", answer) == []


# --------------------------------------------------------------------------- ex03
def test_ex03_rejects_one_channel_mask_for_the_batch():
    def answer(x, rate, training=True):
        if not training:
            return x
        keep = torch.bernoulli(torch.full((1, x.shape[1], 1), 1 - rate))
        return x * keep / (1 - rate)
    assert "each sample gets its own channel mask" in failed("ex03.channel_dropout_1d", answer)


# --------------------------------------------------------------------------- ex06
def _module(**options):
    class DropBlock2d(torch.nn.Module):
        def __init__(self, rate, block_size):
            super().__init__()
            self.rate, self.block_size = rate, block_size

        def forward(self, x):
            return sdt.dropblock(x, self.rate, self.block_size, training=self.training, **options)
    return DropBlock2d


@pytest.mark.parametrize("share", ["channels", "batch"])
def test_ex06_rejects_shared_dropblock_masks(share):
    assert "one mask per sample and channel" in failed("ex06.dropblock_module",
                                                        _module(share=(share,)))


def test_ex06_accepts_per_channel_masks():
    assert failed("ex06.dropblock_module", _module()) == []


def _sized_module(size):
    class DropBlock2d(torch.nn.Module):
        def __init__(self, rate, block_size):
            super().__init__()
            self.rate, self.block_size = rate, block_size

        def forward(self, x):
            return sdt.dropblock(x, self.rate, size(self.block_size), training=self.training)
    return DropBlock2d


class _WholeMaps(torch.nn.Module):
    """Spatial dropout with DropBlock's batch scale: whole maps are unions of blocks too."""

    def __init__(self, rate, block_size):
        super().__init__()
        self.rate, self.block_size = rate, block_size

    def forward(self, x):
        if not self.training:
            return x
        keep = sdt.spatial_dropout(torch.ones_like(x), self.rate, "channels_first") != 0
        return x * keep * (keep.numel() / keep.sum().clamp(min=1))


@pytest.mark.parametrize("answer", [_sized_module(lambda b: b + 1), _sized_module(lambda b: 2 * b),
                                    _WholeMaps], ids=["block+1", "2*block", "whole maps"])
def test_ex06_rejects_blocks_larger_than_asked(answer):
    assert "blocks of block_size, not larger" in failed("ex06.dropblock_module", answer)


def _scheduled(count_first, grow=0):
    class ScheduledDropBlock2d(torch.nn.Module):
        def __init__(self, final_rate, block_size, total_steps):
            super().__init__()
            self.final_rate, self.block_size, self.total_steps = final_rate, block_size, total_steps
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

        @property
        def rate(self):
            if self.total_steps == 0:
                return self.final_rate
            return self.final_rate * min(int(self.steps) / self.total_steps, 1.0)

        def forward(self, x):
            if not self.training:
                return x
            if count_first:
                self.steps += 1
            y = sdt.dropblock(x, self.rate, self.block_size + grow)
            if not count_first:
                self.steps += 1
            return y
    return ScheduledDropBlock2d


def test_ex06_rejects_a_counter_advanced_before_dropping():
    assert "the first training forward (rate 0) returns x" in failed(
        "ex06.scheduled_dropblock", _scheduled(count_first=True))
    assert failed("ex06.scheduled_dropblock", _scheduled(count_first=False)) == []


def test_ex06_rejects_a_scheduled_block_larger_than_asked():
    assert "blocks of block_size, not larger" in failed(
        "ex06.scheduled_dropblock", _scheduled(count_first=False, grow=1))


# --------------------------------------------------------------------------- ex05
def test_ex05_coverage_needs_the_block_clipped_to_the_map():
    def counts(block_size, spatial_shape, clip):
        b = (block_size,) * 2 if np.ndim(block_size) == 0 else tuple(block_size)

        def axis(n, k):
            k = min(k, n) if clip else k
            i = np.arange(n)
            return np.minimum(i, n - k) - np.maximum(0, i - k + 1) + 1
        return np.outer(axis(spatial_shape[0], b[0]), axis(spatial_shape[1], b[1]))
    assert failed("ex05.coverage_counts", lambda b, s: counts(b, s, clip=False))
    assert failed("ex05.coverage_counts", lambda b, s: counts(b, s, clip=True)) == []


def test_ex05_exact_gamma_stops_at_the_first_call_that_hangs():
    """A bisection that never ends costs the learner one 20 s time-out, not one per case."""
    import time
    calls = []

    def exact_gamma(rate, block_size, spatial_shape):
        calls.append(rate)
        while True:
            time.sleep(0.05)
    result = core.grade(grade.question("ex05.exact_gamma"), exact_gamma, time_limit_s=120)
    details = [p.detail for p in result.properties if not p.passed]
    assert len(calls) == 1
    assert any("did not return within 20 s; the remaining calls were not made" in d
               for d in details), details
