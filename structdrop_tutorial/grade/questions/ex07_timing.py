"""Exercise 7: timing done right, and the memory-bandwidth floor.

Questions: ``time_it`` (warm-up calls that are not recorded, synchronization before every clock
reading, the median of single-call times), the bandwidth floor of a masked multiply
``y = x * mask`` for torch tensors of any dtype (the mask may broadcast), and the ratio of
measured medians to a floor.

Nothing here reads a real clock: ``time_it`` is graded with fake clocks. In the synchronous
fake every call advances the clock by a scripted duration; in the asynchronous fake (a GPU) a
call only queues its work and the clock advances when ``sync()`` is called, so a timer that
forgets to synchronize measures almost nothing. PyTorch is imported inside the checkers.
"""
from __future__ import annotations

import statistics

import numpy as np

from ..core import (Property, Question, call_checked, call_safely, compare_arrays, describe,
                    is_callable, not_constant)


def _first_failure(props):
    return [p for p in props if not p.passed][:1]


# --------------------------------------------------------------------------- fakes
class _FakeDevice:
    """A scripted device: ``fn`` does work of known durations, ``clock`` reads fake time.

    ``asynchronous=False``: each call advances the clock by its duration (a CPU).
    ``asynchronous=True``: a call queues its duration; ``sync()`` waits, i.e. advances the clock
    by everything queued (a GPU). Every event is logged as "call", "sync" or "clock".
    """

    def __init__(self, durations, asynchronous):
        self.durations = list(durations)
        self.asynchronous = asynchronous
        self.now = 1000.0
        self.pending = 0.0
        self.calls = 0
        self.events = []

    def fn(self):
        d = self.durations[self.calls] if self.calls < len(self.durations) else 1.0
        self.calls += 1
        self.events.append("call")
        if self.asynchronous:
            self.pending += d
        else:
            self.now += d
        return self.calls

    def sync(self):
        self.events.append("sync")
        self.now += self.pending
        self.pending = 0.0

    def clock(self):
        self.events.append("clock")
        return self.now


def _durations(rng, warmup, repeat):
    """Slow warm-up calls, then timed calls with one slow outlier (median != mean != min)."""
    warm = [float(rng.uniform(0.2, 0.5)) for _ in range(warmup)]
    timed = [float(rng.uniform(1e-3, 2e-3)) for _ in range(repeat)]
    if repeat >= 3:
        timed[int(rng.integers(0, repeat))] = float(rng.uniform(0.05, 0.1))
    return warm, timed


def _diagnose(got, warm, timed):
    """A hint when the answer equals a common wrong statistic."""
    options = {"the mean of the timed calls": statistics.fmean(timed),
               "the fastest timed call": min(timed),
               "the median including the warm-up calls": statistics.median(warm + timed),
               "the total of the timed calls": sum(timed)}
    for label, value in options.items():
        if abs(got - value) <= 1e-9 * max(abs(value), 1e-12) and \
                abs(value - statistics.median(timed)) > 1e-12:
            return f" (that is {label})"
    return ""


# --------------------------------------------------------------------------- Q1
def check_time_it(answer):
    props = [is_callable("time_it", answer)]
    if not props[0].passed:
        return props
    configs = ((1, 5), (3, 4), (0, 7), (2, 1), (2, 9))
    count_cases, median_cases, sync_cases, outs = [], [], [], []
    for asynchronous in (False, True):
        for i, (warmup, repeat) in enumerate(configs):
            rng = np.random.default_rng(700 + 10 * asynchronous + i)
            warm, timed = _durations(rng, warmup, repeat)
            dev = _FakeDevice(warm + timed, asynchronous)
            kind = "asynchronous device (sync given)" if asynchronous else "synchronous, sync=None"
            ctx = f"{kind}, warmup={warmup}, repeat={repeat}"
            got, fails = call_checked("time_it", answer, dev.fn, warmup=warmup, repeat=repeat,
                                      clock=dev.clock, sync=dev.sync if asynchronous else None)
            if fails:
                count_cases.extend(fails)
                continue
            count_cases.append(Property(
                "calls fn warmup + repeat times", dev.calls == warmup + repeat,
                f"{ctx}: fn was called {dev.calls} times, expected {warmup + repeat}"))
            if asynchronous:
                # Every clock reading that follows a call must have a sync in between.
                ok, seen_call = True, False
                for e in dev.events:
                    if e == "call":
                        seen_call = True
                    elif e == "sync":
                        seen_call = False
                    elif e == "clock" and seen_call:
                        ok = False
                        break
                sync_cases.append(Property(
                    "synchronizes before every clock reading", ok,
                    f"{ctx}: the clock was read while work was still queued (events: "
                    f"{' '.join(dev.events[:12])}{' ...' if len(dev.events) > 12 else ''}); call "
                    "sync() after the warm-up and after each timed call, before reading the clock"))
            try:
                value = float(got)
            except Exception:
                median_cases.append(Property("returns the median of the timed calls", False,
                                             f"{ctx}: expected a number of seconds, got "
                                             f"{describe(got)}"))
                continue
            outs.append(value)
            want = statistics.median(timed)
            p = compare_arrays("returns the median of the timed calls", np.float64(value), want,
                               rtol=1e-9, context=ctx)
            if not p.passed:
                p = Property(p.name, False, f"{ctx}: expected {want:.6g} s, got {value:.6g} s"
                                            f"{_diagnose(value, warm, timed)}")
            median_cases.append(p)
    props.extend(_first_failure(count_cases) or [Property(
        "calls fn warmup + repeat times", True,
        f"{2 * len(configs)} runs, warm-up 0 to 3, repeat 1 to 9")])
    if sync_cases:
        props.extend(_first_failure(sync_cases) or [Property(
            "synchronizes before every clock reading", True,
            "no clock reading while work was queued on the fake asynchronous device")])
    if median_cases:
        props.extend(_first_failure(median_cases) or [Property(
            "returns the median of the timed calls", True,
            "slow warm-up calls excluded, one slow outlier among the timed calls, odd and even "
            "repeat (rtol 1e-9)")])
    if len(outs) == 2 * len(configs):
        props.append(not_constant("depends on the measured times", outs))
    return props


# --------------------------------------------------------------------------- Q2
def _bytes(x, mask):
    return 2 * x.numel() * x.element_size() + mask.numel() * mask.element_size()


def _floor_cases():
    import torch

    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    return [  # (x shape, x dtype, mask shape, mask dtype, bandwidth bytes/s, backward)
        ((32, 1024, 14, 14), f32, (32, 1024, 14, 14), f32, 20e9, False),
        ((32, 1024, 14, 14), f32, (32, 1024, 14, 14), torch.bool, 20e9, False),
        ((16, 256, 56, 56), f16, (16, 256, 56, 56), f16, 3.35e12, True),
        ((16, 256, 56, 56), bf16, (16, 256, 1, 1), bf16, 900e9, False),
        ((8, 64, 28, 28), f32, (8, 64, 1, 1), torch.bool, 50e9, True),
        ((4, 3, 5), f64, (4, 3, 5), torch.uint8, 1e9, False),
        ((64, 197, 768), f32, (64, 1, 1), f32, 2e12, True),
    ]


def check_masked_multiply_floor(answer):
    import torch

    props = [is_callable("masked_multiply_floor", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for xs, xd, ms, md, bw, backward in _floor_cases():
        x = torch.empty(xs, dtype=xd, device="meta")
        mask = torch.empty(ms, dtype=md, device="meta")
        want = _bytes(x, mask) * (2 if backward else 1) / bw
        dt = lambda d: str(d).replace("torch.", "")
        ctx = (f"x {xs} {dt(xd)}, mask {ms} {dt(md)}, bandwidth {bw:.3g} B/s, "
               f"backward={backward}")
        got, failure = call_safely("masked_multiply_floor", answer, x, mask, bw,
                                   backward=backward)
        if failure is not None:
            cases.append(failure)
            continue
        try:
            value = float(got)
        except Exception:
            cases.append(Property("bytes moved / bandwidth", False,
                                  f"{ctx}: expected seconds as a float, got {describe(got)}"))
            continue
        outs.append(value)
        p = compare_arrays("bytes moved / bandwidth", np.float64(value), want, rtol=1e-9,
                           context=ctx)
        if not p.passed:
            full = 3 * x.numel() * x.element_size() * (2 if backward else 1) / bw
            extra = (" (that counts the mask as if it had x's shape and dtype: use the mask's "
                     "own numel() and element_size())" if abs(value - full) <= 1e-9 * full
                     else "")
            p = Property(p.name, False, f"{ctx}: expected {want:.6g} s, got {value:.6g} s"
                                        f"{extra}")
        cases.append(p)
    props.extend(_first_failure(cases) or [Property(
        "bytes moved / bandwidth", True,
        f"{len(cases)} cases: float32/16/64 and bfloat16 inputs, float, bool and uint8 masks, "
        "full and broadcast masks, forward and forward + backward (rtol 1e-9)")])
    if len(outs) == len(cases):
        props.append(not_constant("depends on its arguments", outs))
    return props


# --------------------------------------------------------------------------- Q3
def check_ratios_to_floor(answer):
    props = [is_callable("ratios_to_floor", answer)]
    if not props[0].passed:
        return props
    cases = []
    for seed in range(4):
        rng = np.random.default_rng(720 + seed)
        names = ["floor x * mask", "dropblock", "spatial dropout", "dropout"][: 2 + seed % 3]
        runs = {}
        for name in names:
            n = int(rng.integers(3, 10))
            base = float(rng.uniform(1e-4, 5e-3))
            times = list(base * (1 + 0.05 * rng.random(n)))
            times[int(rng.integers(0, n))] = base * float(rng.uniform(5, 20))  # an outlier
            runs[name] = times
        floor = float(rng.uniform(5e-5, 1e-3))
        ctx = f"seed {seed}, {len(names)} ops, floor {floor:.4g} s"
        got, fails = call_checked("ratios_to_floor", answer, runs, floor)
        if fails:
            cases.extend(fails)
            continue
        if not isinstance(got, dict) or set(got) != set(runs):
            cases.append(Property("returns a dict with the same keys", False,
                                  f"{ctx}: expected keys {sorted(runs)}, got {describe(got)}"))
            continue
        for name, times in runs.items():
            want = statistics.median(times) / floor
            try:
                value = float(got[name])
            except Exception:
                cases.append(Property("median / floor", False,
                                      f"{ctx}, {name!r}: got {describe(got[name])}"))
                continue
            p = compare_arrays("median / floor", np.float64(value), want, rtol=1e-9,
                               context=f"{ctx}, {name!r}")
            if not p.passed:
                hint = ""
                if abs(value - statistics.fmean(times) / floor) <= 1e-9 * value:
                    hint = " (that is the mean: one outlier run moves it a lot)"
                elif abs(value - min(times) / floor) <= 1e-9 * value:
                    hint = " (that is the fastest run, not the median)"
                elif abs(value - floor / statistics.median(times)) <= 1e-9 * value:
                    hint = " (that is floor / median: upside down)"
                p = Property(p.name, False, f"{ctx}, {name!r}: expected {want:.6g}, got "
                                            f"{value:.6g}{hint}")
            cases.append(p)
    props.extend(_first_failure(cases) or [Property(
        "returns median / floor for every op", True,
        f"{len(cases)} ops in 4 tables, each with an outlier run (rtol 1e-9)")])
    return props


QUESTIONS = [
    Question("ex07.time_it", 4, "time_it", check_time_it,
             "Call fn() warmup times (then sync) before anything is recorded; for each of the "
             "repeat runs read the clock, call fn() once, sync, read the clock again; return "
             "statistics.median of the repeat durations. Call sync only when it is not None.",
             "time a callable with warm-up, synchronization and the median"),
    Question("ex07.masked_multiply_floor", 3, "masked_multiply_floor",
             check_masked_multiply_floor,
             "y = x * mask reads x and the mask and writes y (x's size and dtype), each at its "
             "own element size; the backward pass moves as much again; time = bytes / "
             "bandwidth (bytes/s).",
             "the memory-bandwidth floor of a masked multiply"),
    Question("ex07.ratios_to_floor", 2, "ratios_to_floor", check_ratios_to_floor,
             "For every op: statistics.median of its run times divided by floor_s; keep the keys.",
             "medians as multiples of the floor"),
]
