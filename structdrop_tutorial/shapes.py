"""Noise shapes and axis bookkeeping, independent of any framework.

A *noise shape* is the shape of the Bernoulli mask that is drawn before it is broadcast against
the input: every axis of size 1 in the noise shape shares one draw along that axis. This is the
``noise_shape`` argument of Keras's ``Dropout`` and the idea behind every structured dropout.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ._checks import (check_block_size, check_choice, check_data_format, check_int, check_n_spatial,
                      check_share)

Shape = Tuple[Optional[int], ...]

NOISE_KINDS = ("dropout", "spatial", "timestep")
DROP_PATH_MODES = ("sample", "batch")


def channel_axis(rank: int, data_format: str) -> int:
    """Index of the channel axis of a rank-``rank`` input."""
    check_data_format(data_format)
    return 1 if data_format == "channels_first" else rank - 1


def spatial_axes(rank: int, data_format: str) -> Tuple[int, ...]:
    """Indices of the spatial axes (rank 3, 4, 5 give 1, 2, 3 of them)."""
    check_n_spatial(rank)
    check_data_format(data_format)
    if data_format == "channels_first":
        return tuple(range(2, rank))
    return tuple(range(1, rank - 1))


def spatial_dims(input_shape: Sequence[Optional[int]], data_format: str) -> Tuple[Optional[int], ...]:
    """The spatial sizes of ``input_shape`` in order."""
    return tuple(input_shape[a] for a in spatial_axes(len(input_shape), data_format))


def noise_shape(kind: str, input_shape: Sequence[Optional[int]],
                data_format: str = "channels_last") -> Shape:
    """The Keras-style noise shape for a kind of dropout.

    Args:
        kind: ``"dropout"`` (one draw per unit: the noise shape is the input shape),
            ``"spatial"`` (one draw per sample and channel, shared over every spatial axis:
            SpatialDropout1D/2D/3D for rank 3/4/5 inputs) or ``"timestep"`` (one draw per
            sample and position of a rank-3 sequence, shared over its channels).
        input_shape: the input's shape; entries may be ``None`` (unknown), and they are copied
            to the result where the noise keeps that axis.
        data_format: ``"channels_last"`` ``(batch, *spatial, channels)`` or ``"channels_first"``
            ``(batch, channels, *spatial)``.

    Returns:
        A tuple with the input's rank, 1 on every axis where the mask is shared.

    >>> noise_shape("spatial", (32, 28, 28, 16))
    (32, 1, 1, 16)
    >>> noise_shape("timestep", (8, None, 300))
    (8, None, 1)
    """
    check_choice(kind, "kind", NOISE_KINDS)
    check_data_format(data_format)
    shape = tuple(None if s is None else int(s) for s in input_shape)
    rank = len(shape)
    if kind == "dropout":
        if rank < 1:
            raise ValueError(f"input_shape must have rank >= 1 for kind='dropout', got {shape}")
        return shape
    if kind == "spatial":
        check_n_spatial(rank, "input_shape")
        ch = channel_axis(rank, data_format)
        return tuple(s if a in (0, ch) else 1 for a, s in enumerate(shape))
    # timestep: sequences only
    if rank != 3:
        raise ValueError(f"input_shape must have rank 3 (batch, steps, channels) for "
                         f"kind='timestep', got rank {rank}")
    ch = channel_axis(rank, data_format)
    return tuple(1 if a == ch else s for a, s in enumerate(shape))


def all_noise_shapes(input_shape: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Every admissible noise shape for ``input_shape``: each axis either kept or set to 1.

    For a (3, 4, 5) input that gives the 8 shapes from (1, 1, 1) to (3, 4, 5).
    """
    shape = tuple(check_int(s, "input_shape entries", 0) for s in input_shape)
    out = []
    for bits in range(2 ** len(shape)):
        out.append(tuple(s if bits >> (len(shape) - 1 - a) & 1 else 1 for a, s in enumerate(shape)))
    return tuple(dict.fromkeys(out))


def seed_grid_shape(input_shape: Sequence[Optional[int]], block_size: Sequence[int],
                    data_format: str, seeds: str = "valid", share=()) -> Shape:
    """Shape of the ``uniform`` array that :func:`dropblock_keep_mask` takes.

    Like the input, but each spatial axis is ``map - block + 1`` long for ``seeds="valid"``
    (the positions where a whole block fits) or ``map + block - 1`` for ``seeds="padded"``;
    the channel axis is 1 when ``"channels"`` is in ``share`` and the batch axis is 1 when
    ``"batch"`` is. ``block_size`` must already be clipped to the map (see
    :func:`structdrop_tutorial.gamma.clip_block`). Unknown (None) sizes stay None.
    """
    check_choice(seeds, "seeds", ("valid", "padded"))
    share = check_share(share)
    shape = list(input_shape)
    rank = len(shape)
    axes = spatial_axes(rank, data_format)
    block = check_block_size(block_size, len(axes))
    for a, b in zip(axes, block):
        if shape[a] is not None:
            if seeds == "valid" and b > shape[a]:
                raise ValueError(f"block_size {tuple(block)} must be clipped to the map "
                                 f"{tuple(shape[a] for a in axes)} first (gamma.clip_block)")
            shape[a] = shape[a] - b + 1 if seeds == "valid" else shape[a] + b - 1
    if "channels" in share:
        shape[channel_axis(rank, data_format)] = 1
    if "batch" in share:
        shape[0] = 1
    return tuple(shape)


def drop_path_noise_shape(input_shape: Sequence, mode: str = "sample", batch_axis: int = 0) -> tuple:
    """The noise shape of stochastic depth / DropPath on a residual branch's output.

    ``mode="sample"``: one draw per sample (1 on every axis but ``batch_axis``, which keeps the
    input's size, whatever type that size has, e.g. a tensor in a graph); ``mode="batch"``: one
    draw for the whole batch (all ones). Raises ValueError for a rank-0 input, an unknown mode or
    a ``batch_axis`` outside ``[-rank, rank - 1]``.

    >>> drop_path_noise_shape((8, 32, 32, 64))
    (8, 1, 1, 1)
    """
    check_choice(mode, "mode", DROP_PATH_MODES)
    batch_axis = check_int(batch_axis, "batch_axis")
    rank = len(input_shape)
    if rank < 1:
        raise ValueError("x must have at least one axis (the batch)")
    if not -rank <= batch_axis < rank:
        raise ValueError(f"batch_axis must be in [{-rank}, {rank - 1}], got {batch_axis}")
    shape = [1] * rank
    if mode == "sample":
        shape[batch_axis] = input_shape[batch_axis]
    return tuple(shape)
