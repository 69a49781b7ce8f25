"""Exercise 3: the same op in PyTorch and TensorFlow.

Questions: spatial dropout in PyTorch (channels_first) and in TensorFlow (channels_last) from a
given uniform noise, compared with :func:`structdrop_tutorial.numpy.spatial_dropout`; converting a
channels_last noise shape to channels_first; porting a TF1 ``tf.nn.dropout(x, keep_prob, ...)``
call to TF2 (graded by behaviour: what is dropped and how the survivors are scaled); and channel
dropout of a ``(N, C, L)`` tensor in PyTorch without the ``Dropout2d``-on-3-D trap.

PyTorch and TensorFlow are imported inside the checkers, so loading the registry stays cheap.
"""
from __future__ import annotations

import warnings

import numpy as np

from ...numpy import spatial_dropout as np_spatial_dropout
from ...shapes import noise_shape
from ..core import (Property, Question, binomial_interval, call_checked, compare_arrays,
                    compare_values, describe, is_callable, not_constant, shared_over, to_numpy)

SEEDS = (0, 1, 2, 3, 4)


def _first_failure(props):
    failed = [p for p in props if not p.passed]
    return failed[:1]


def _kind(x) -> str:
    return (type(x).__module__ or "").split(".")[0]


def _spatial_cases(base_seed):
    """(seed, rank, shape channels_first, rate, numpy dtype) for the spatial dropout questions."""
    cases = []
    for seed in SEEDS:
        rng = np.random.default_rng(base_seed + seed)
        rank = 3 + seed % 3
        n = int(rng.integers(1, 5))
        c = int(rng.integers(1, 7))
        spatial = tuple(int(v) for v in rng.integers(1, 6, size=rank - 2))
        rate = float(rng.uniform(0.1, 0.9))
        dtype = np.float64 if seed == 3 else np.float32
        cases.append((rng, rank, (n, c) + spatial, rate, dtype))
    return cases


def _reference_spatial(x, rate, uniform, data_format):
    """The NumPy reference, fed the (N, C) uniform reshaped to the spatial noise shape."""
    ns = noise_shape("spatial", x.shape, data_format)
    return np_spatial_dropout(x, rate, data_format, uniform=np.asarray(uniform).reshape(ns))


# --------------------------------------------------------------------------- Q1 torch
def check_torch_spatial_dropout(answer):
    import torch

    props = [is_callable("torch_spatial_dropout", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for rng, rank, shape, rate, dtype in _spatial_cases(300):
        x_np = rng.standard_normal(shape).astype(dtype)
        u_np = rng.random(shape[:2])
        x, u = torch.from_numpy(x_np.copy()), torch.from_numpy(u_np)
        ctx = (f"x of shape {shape} ({np.dtype(dtype).name}), uniform of shape {shape[:2]}, "
               f"rate={rate:.3f}")
        got, fails = call_checked("torch_spatial_dropout", answer, x, rate, u)
        if fails:
            cases.extend(fails)
            continue
        if not isinstance(got, torch.Tensor):
            cases.append(Property("returns a torch tensor", False,
                                  f"{ctx}: expected a torch.Tensor, got {describe(got)}"))
            continue
        outs.append(got)
        tol = 1e-6 if dtype == np.float32 else 1e-12
        cases.append(compare_arrays("matches the NumPy reference (channels_first)", got,
                                    _reference_spatial(x_np, rate, u_np, "channels_first"),
                                    atol=tol, rtol=tol, check_dtype=True, context=ctx))
    props.extend(_first_failure(cases) or [Property(
        "matches the NumPy reference (channels_first)", True,
        f"{len(SEEDS)} cases, ranks 3 to 5, float32 (rtol 1e-6) and float64, dtype kept, "
        "torch tensor returned")])
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on the input", outs))
    # Edge rates.
    rng = np.random.default_rng(309)
    x_np = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    u_np = rng.random((3, 4))
    x, u = torch.from_numpy(x_np.copy()), torch.from_numpy(u_np)
    got, fails = call_checked("rate = 0", answer, x, 0.0, u)
    props.extend(fails or [compare_arrays("rate = 0 returns x", got, x_np, atol=0)])
    got, fails = call_checked("rate = 1", answer, x, 1.0, u)
    props.extend(fails or [compare_arrays("rate = 1 returns zeros, not NaN", got,
                                          np.zeros_like(x_np))])
    return props


# --------------------------------------------------------------------------- Q2 TF
def check_tf_spatial_dropout(answer):
    import tensorflow as tf

    props = [is_callable("tf_spatial_dropout", answer)]
    if not props[0].passed:
        return props
    cases, outs = [], []
    for rng, rank, shape_cf, rate, dtype in _spatial_cases(320):
        shape = (shape_cf[0],) + shape_cf[2:] + (shape_cf[1],)
        x_np = rng.standard_normal(shape).astype(dtype)
        u_np = rng.random((shape[0], shape[-1]))
        x, u = tf.constant(x_np), tf.constant(u_np)
        ctx = (f"x of shape {shape} ({np.dtype(dtype).name}), uniform of shape {u_np.shape}, "
               f"rate={rate:.3f}")
        got, fails = call_checked("tf_spatial_dropout", answer, x, rate, u)
        if fails:
            cases.extend(fails)
            continue
        if not isinstance(got, (tf.Tensor, tf.Variable)):
            cases.append(Property("returns a TensorFlow tensor", False,
                                  f"{ctx}: expected a tf.Tensor, got {describe(got)}"))
            continue
        outs.append(got)
        tol = 1e-6 if dtype == np.float32 else 1e-12
        cases.append(compare_arrays("matches the NumPy reference (channels_last)", got,
                                    _reference_spatial(x_np, rate, u_np, "channels_last"),
                                    atol=tol, rtol=tol, check_dtype=True, context=ctx))
    props.extend(_first_failure(cases) or [Property(
        "matches the NumPy reference (channels_last)", True,
        f"{len(SEEDS)} cases, ranks 3 to 5, float32 (rtol 1e-6) and float64, dtype kept")])
    if len(outs) == len(SEEDS):
        props.append(not_constant("depends on the input", outs))
    # Inside a tf.function whose batch and spatial sizes are unknown while tracing.
    rng = np.random.default_rng(329)
    rate = 0.4
    graph_cases = []
    for shape in ((3, 5, 6, 4), (2, 7, 4)):
        x_np = rng.standard_normal(shape).astype(np.float32)
        u_np = rng.random((shape[0], shape[-1]))
        spec_x = tf.TensorSpec([None] * (len(shape) - 1) + [shape[-1]], tf.float32)
        spec_u = tf.TensorSpec([None, shape[-1]], tf.float64)
        label = "works in a tf.function with unknown batch and spatial sizes"
        try:
            fn = tf.function(lambda a, b: answer(a, rate, b), input_signature=[spec_x, spec_u])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = fn(tf.constant(x_np), tf.constant(u_np))
        except NotImplementedError as exc:
            graph_cases.append(Property(label, False, f"not implemented yet ({exc})"))
            continue
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            msg = lines[-1][:240] if lines else ""
            if not msg.startswith(type(exc).__name__):
                msg = f"{type(exc).__name__}: {msg}"
            graph_cases.append(Property(
                label, False,
                f"x of shape {shape} traced with TensorSpec {tuple(spec_x.shape.as_list())}: "
                f"raised {msg} (use tf.shape(x) or x.shape.rank, not "
                "Python ints of the batch size)"))
            continue
        graph_cases.append(compare_arrays(label, got,
                                          _reference_spatial(x_np, rate, u_np, "channels_last"),
                                          atol=1e-6, rtol=1e-6,
                                          context=f"traced with unknown sizes, x of shape {shape}"))
    props.extend(_first_failure(graph_cases) or [Property(
        "works in a tf.function with unknown batch and spatial sizes", True,
        "ranks 4 and 3 traced with None batch and spatial sizes")])
    x_np = rng.standard_normal((2, 3, 3, 5)).astype(np.float32)
    u_np = rng.random((2, 5))
    got, fails = call_checked("rate = 1", answer, tf.constant(x_np), 1.0, tf.constant(u_np))
    props.extend(fails or [compare_arrays("rate = 1 returns zeros, not NaN", got,
                                          np.zeros_like(x_np))])
    return props


# --------------------------------------------------------------------------- Q3 layouts
def _ref_channels_first(ns):
    ns = tuple(ns)
    return (ns[0], ns[-1]) + ns[1:-1]


def check_to_channels_first(answer):
    props = [is_callable("to_channels_first", answer)]
    if not props[0].passed:
        return props
    rng = np.random.default_rng(340)
    cases = []
    # Every kind of noise shape, for ranks 3 to 5: must equal the channels_first noise shape.
    for rank in (3, 4, 5):
        shape_last = tuple(int(v) for v in rng.integers(2, 9, size=rank))
        shape_first = (shape_last[0], shape_last[-1]) + shape_last[1:-1]
        for kind in ("dropout", "spatial", "timestep"):
            if kind == "timestep" and rank != 3:
                continue
            ns = noise_shape(kind, shape_last, "channels_last")
            got, fails = call_checked("to_channels_first", answer, ns)
            if fails:
                cases.extend(fails)
                continue
            cases.append(compare_values(
                "gives the channels_first noise shape", got,
                noise_shape(kind, shape_first, "channels_first"),
                context=f"{kind} noise {ns} for a channels_last input {shape_last}"))
    # Arbitrary tuples, with None entries as Keras allows.
    for _ in range(6):
        rank = int(rng.integers(3, 6))
        ns = tuple(None if rng.random() < 0.3 else int(rng.integers(1, 9)) for _ in range(rank))
        got, fails = call_checked("to_channels_first", answer, ns)
        if fails:
            cases.extend(fails)
            continue
        cases.append(compare_values("gives the channels_first noise shape", got,
                                    _ref_channels_first(ns), context=f"noise shape {ns}"))
    props.extend(_first_failure(cases) or [Property(
        "gives the channels_first noise shape", True,
        f"{len(cases)} noise shapes: every kind for ranks 3 to 5, and tuples with None entries")])
    got, fails = call_checked("to_channels_first", answer, [4, 1, 1, 8])
    if not fails:
        ok = isinstance(got, tuple)
        props.append(Property("returns a tuple", ok, "" if ok else
                              f"expected a tuple like (4, 8, 1, 1), got {describe(got)}"))
    else:
        props.extend(fails)
    return props


# --------------------------------------------------------------------------- Q4 TF1 -> TF2
def check_tf2_dropout(answer):
    import tensorflow as tf

    props = [is_callable("tf2_dropout", answer)]
    if not props[0].passed:
        return props
    tf.random.set_seed(350)
    rng = np.random.default_rng(350)
    shape = (32, 6, 6, 24)
    x_np = (1.0 + np.abs(rng.standard_normal(shape))).astype(np.float32)  # never 0
    x = tf.constant(x_np)
    scale_cases, frac_cases, outs = [], [], []
    for keep_prob in (0.8, 0.3):
        for ns, label in ((None, "i.i.d."), ((shape[0], 1, 1, shape[-1]), "per channel")):
            ctx = f"keep_prob={keep_prob}, noise_shape={ns}"
            got, fails = call_checked("tf2_dropout", answer, x, keep_prob, ns)
            if fails:
                scale_cases.extend(fails)
                continue
            try:
                y = to_numpy(got)
            except Exception:
                y = None
            if y is None or y.shape != shape:
                scale_cases.append(Property("returns x's shape", False,
                                            f"{ctx}: expected shape {shape}, got {describe(got)}"))
                continue
            outs.append(y)
            dropped = y == 0
            want = x_np / np.float32(keep_prob)
            kept_ok = np.allclose(y[~dropped], want[~dropped], rtol=1e-5, atol=0)
            if not kept_ok:
                ratio = float(np.median(y[~dropped] / x_np[~dropped])) if (~dropped).any() else 0.0
                extra = (" (that is 1 / (1 - keep_prob): keep_prob was used as the drop rate)"
                         if abs(ratio - 1 / (1 - keep_prob)) < 1e-3 else "")
                scale_cases.append(Property(
                    "survivors are scaled by 1 / keep_prob", False,
                    f"{ctx}: kept values are x times {ratio:.4g}, expected x times "
                    f"1 / keep_prob = {1 / keep_prob:.4g}{extra}"))
                continue
            scale_cases.append(Property("survivors are scaled by 1 / keep_prob", True))
            if ns is not None:
                per_map = dropped.reshape(shape[0], -1, shape[-1])
                same = bool(np.all(per_map == per_map[:, :1, :]))
                if not same:
                    frac_cases.append(Property(
                        "the noise shape is respected", False,
                        f"{ctx}: with noise shape (batch, 1, 1, channels) a channel of a sample "
                        "is dropped everywhere or nowhere, but some maps are partly dropped"))
                    continue
                draws = dropped[:, 0, 0, :]
            else:
                draws = dropped
            frac = float(draws.mean())
            lo, hi = binomial_interval(draws.size, 1 - keep_prob)
            if lo <= frac <= hi:
                frac_cases.append(Property("drops a fraction 1 - keep_prob", True))
            else:
                extra = (" (that is keep_prob: in TF2 the second argument of tf.nn.dropout is "
                         "the drop rate)" if abs(frac - keep_prob) < abs(frac - (1 - keep_prob))
                         else "")
                frac_cases.append(Property(
                    "drops a fraction 1 - keep_prob", False,
                    f"{ctx}: dropped {frac:.4f} of {draws.size} independent draws, expected "
                    f"{1 - keep_prob:.2f} (5-sigma range {lo:.4f} to {hi:.4f}){extra}"))
    props.extend(_first_failure(scale_cases) or [Property(
        "survivors are scaled by 1 / keep_prob", True,
        "keep_prob 0.8 and 0.3, with and without a noise shape (rtol 1e-5)")])
    if frac_cases:
        props.extend(_first_failure(frac_cases) or [Property(
            "drops a fraction 1 - keep_prob, respecting the noise shape", True,
            "keep_prob 0.8 and 0.3, within 5 binomial standard deviations; per-channel masks "
            "constant over height and width")])
    got, fails = call_checked("keep_prob = 1", answer, x, 1.0, None)
    props.extend(fails or [compare_arrays("keep_prob = 1 returns x", got, x_np, atol=0)])
    return props


# --------------------------------------------------------------------------- Q5 torch 1-D
def check_channel_dropout_1d(answer):
    import torch

    props = [is_callable("channel_dropout_1d", answer)]
    if not props[0].passed:
        return props
    torch.manual_seed(360)
    rng = np.random.default_rng(360)
    shape = (48, 64, 10)
    x_np = (1.0 + np.abs(rng.standard_normal(shape))).astype(np.float32)  # never 0
    x = torch.from_numpy(x_np.copy())
    warn_msgs, struct_cases, frac_cases = [], [], []
    for rate in (0.3, 0.6):
        ctx = f"x of shape (N, C, L) = {shape}, rate={rate}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got, fails = call_checked("channel_dropout_1d", answer, x, rate)
        warn_msgs.extend(str(w.message) for w in caught)
        if fails:
            struct_cases.extend(fails)
            continue
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape:
            struct_cases.append(Property("returns a tensor of x's shape", False,
                                         f"{ctx}: got {describe(got)}"))
            continue
        y = to_numpy(got)
        dropped = y == 0
        rows = dropped.all(axis=2)
        if not np.array_equal(dropped, np.broadcast_to(rows[:, :, None], shape)):
            struct_cases.append(Property(
                "drops whole channels", False,
                f"{ctx}: some (sample, channel) rows are partly dropped; one draw per row of "
                "length L is wanted (i.i.d. dropout drops single entries)"))
            continue
        if not np.allclose(y[~dropped], x_np[~dropped] / np.float32(1 - rate), rtol=1e-5):
            struct_cases.append(Property("survivors are scaled by 1 / (1 - rate)", False, ctx))
            continue
        shared = shared_over(rows)
        if shared == "channels":
            struct_cases.append(Property(
                "channels of one sample are dropped independently", False,
                f"{ctx}: every sample lost all of its channels or none: the tensor was read "
                "as an unbatched (C, H, W) input, so whole samples were dropped"))
            continue
        if shared == "samples":
            struct_cases.append(Property(
                "each sample gets its own channel mask", False,
                f"{ctx}: all {shape[0]} samples lost the same channels: one mask of shape "
                "(1, C, 1) was drawn for the whole batch instead of one draw per (sample, "
                "channel) (independent draws do that with probability below 1e-100)"))
            continue
        struct_cases.append(Property("drops whole channels", True))
        frac = float(rows.mean())
        lo, hi = binomial_interval(rows.size, rate)
        frac_cases.append(Property(
            "drops a fraction rate of the channels", lo <= frac <= hi,
            f"{ctx}: dropped {frac:.4f} of {rows.size} channels, 5-sigma range "
            f"{lo:.4f} to {hi:.4f}"))
    props.extend(_first_failure(struct_cases) or [Property(
        "drops whole channels of each sample independently", True,
        "rows of length L all dropped or all kept and scaled by 1 / (1 - rate), rates 0.3, 0.6")])
    if frac_cases:
        props.extend(_first_failure(frac_cases) or [Property(
            "drops a fraction rate of the channels", True,
            f"{2 * shape[0] * shape[1]} channels, within 5 binomial standard deviations")])
    props.append(Property("no warning", not warn_msgs,
                          "no warning raised" if not warn_msgs else
                          f"the call warned: {warn_msgs[0][:200]}"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        got, fails = call_checked("training=False", answer, x, 0.5, training=False)
    props.extend(fails or [compare_arrays("training=False returns x", got, x_np, atol=0)])
    return props


QUESTIONS = [
    Question("ex03.torch_spatial_dropout", 3, "torch_spatial_dropout",
             check_torch_spatial_dropout,
             "Keep where uniform >= rate; reshape the (N, C) mask to (N, C, 1, ..., 1) with one 1 "
             "per spatial axis so it broadcasts, multiply in x's dtype and divide by 1 - rate; "
             "return zeros when rate == 1.",
             "spatial dropout in PyTorch from given noise"),
    Question("ex03.tf_spatial_dropout", 3, "tf_spatial_dropout", check_tf_spatial_dropout,
             "Channels are last in TensorFlow: the mask is (N, 1, ..., 1, C). Insert the size-1 "
             "axes with tf.expand_dims (x.shape.rank is known while tracing, the batch size is "
             "not), cast the keep mask to x.dtype, and return zeros when rate == 1.",
             "spatial dropout in TensorFlow from given noise"),
    Question("ex03.to_channels_first", 2, "to_channels_first", check_to_channels_first,
             "Move the last entry (channels) to position 1, keep the batch entry first and the "
             "spatial entries in order; return a tuple.",
             "a channels_last noise shape in channels_first order"),
    Question("ex03.tf2_dropout", 2, "tf2_dropout", check_tf2_dropout,
             "TF2's tf.nn.dropout takes rate = 1 - keep_prob (pass it by keyword); noise_shape "
             "means the same as in TF1.",
             "port tf.nn.dropout(x, keep_prob, noise_shape) to TF2"),
    Question("ex03.channel_dropout_1d", 2, "channel_dropout_1d", check_channel_dropout_1d,
             "F.dropout2d on a 3-D tensor warns and its meaning is deprecated; use "
             "torch.nn.functional.dropout1d, which reads (N, C, L) as batched channels, and pass "
             "training through.",
             "channel dropout of (N, C, L) in PyTorch, without the Dropout2d trap"),
]
