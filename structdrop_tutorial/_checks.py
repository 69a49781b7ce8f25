"""Argument validation shared by the NumPy, TensorFlow and PyTorch implementations.

Every public function checks its arguments here, so the three frameworks reject bad input with
the same message: the argument's name, the allowed range and the value that was given.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")
SEEDS = ("valid", "padded")
NORMALIZE = ("batch", "rate")
SHARE_AXES = ("batch", "channels")
GAMMAS = ("exact", "paper")

BlockSize = Union[int, Sequence[int]]


def check_rate(rate, name: str = "rate") -> float:
    """Return ``rate`` as a float, or raise ValueError unless it is a number in [0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {rate!r}")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
    return rate


def check_fill(fill, name: str = "fill") -> float:
    """Return ``fill`` (cutout's patch value) as a float, or raise unless it is a finite real
    number (a Python or NumPy number; not a bool, a string, a tensor, NaN or infinity)."""
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f"{name} must be a finite real number, got {fill!r}")
    value = float(fill)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {fill!r}")
    return value


def check_gamma(gamma, name: str = "gamma", choices: Sequence[str] = GAMMAS):
    """One of ``choices`` (by default ``"exact"`` and ``"paper"``) or a real number in [0, 1]
    (returned as a float); a TypeError or ValueError naming ``name`` otherwise (None, a bool, a
    list, NaN, a number outside [0, 1]; a string when ``choices`` is empty)."""
    if isinstance(gamma, str) and choices:
        return check_choice(gamma, name, choices)
    if isinstance(gamma, (bool, str)) or not isinstance(gamma, numbers.Real):
        allowed = "".join(f"{c!r}, " for c in choices)
        raise TypeError(f"{name} must be {allowed}{'or ' if choices else ''}a real number in "
                        f"[0, 1], got {gamma!r}")
    value = float(gamma)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {gamma!r}")
    return value


def check_int(value, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as an int (a Python or NumPy integer, not a bool or a float), at least
    ``minimum`` when given; a TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


#: int seeds lie in [0, SEED_LIMIT) in every framework (TensorFlow keeps them as int64)
SEED_LIMIT = 2 ** 63


def check_seed_int(seed, allowed: str) -> int:
    """An int ``seed`` in [0, 2**63) as an int; ``allowed`` names the other accepted kinds in
    the ValueError for one outside that range."""
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be None, an int in [0, 2**63) or {allowed}, got {seed}")
    return seed


def block_rank(block_size, name: str = "block_size") -> int:
    """How many axes a block size names: 1 for an int (any rank), else its length (1, 2 or 3);
    a TypeError or ValueError naming ``name`` for anything else."""
    if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
        return 1
    try:
        rank = len(tuple(block_size))
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {block_size!r}") \
            from None
    if not 1 <= rank <= 3:  # maps have 1, 2 or 3 spatial axes
        raise ValueError(f"{name} must have one entry per spatial axis (1, 2 or 3 entries), "
                         f"got {block_size!r}")
    return rank


def check_bool(value, name: str) -> bool:
    """``value`` as a bool: True, False or a NumPy bool (a TypeError naming ``name`` for anything
    else, such as the string "False", which ``bool()`` would turn into True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_dense_shapes(x_shape, kernel_shape, bias_shape=None) -> None:
    """Shapes of a dense layer's ``x @ kernel + bias``: x has at least one axis, kernel is
    ``(x.shape[-1], units)`` and bias, when given, ``(units,)``; ValueError naming the argument."""
    if len(x_shape) < 1:
        raise ValueError("x must have at least one axis (..., in), got a scalar")
    if len(kernel_shape) != 2 or x_shape[-1] != kernel_shape[0]:
        raise ValueError(f"kernel must have shape (x.shape[-1], units) = ({x_shape[-1]}, units), "
                         f"got {tuple(kernel_shape)}")
    if bias_shape is not None and tuple(bias_shape) != (kernel_shape[1],):
        raise ValueError(f"bias must have shape (units,) = ({kernel_shape[1]},), "
                         f"got {tuple(bias_shape)}")


def check_data_format(data_format: str) -> str:
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    return data_format


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_share(share) -> Tuple[str, ...]:
    """Normalize ``share`` (a name, a sequence of names, or None) to a sorted tuple of names."""
    if share is None:
        return ()
    if isinstance(share, str):
        share = (share,)
    try:
        share = tuple(share)
    except TypeError:
        raise TypeError(f"share must be a name or a sequence of names from {SHARE_AXES}, "
                        f"got {share!r}") from None
    for s in share:
        check_choice(s, "share", SHARE_AXES)
    return tuple(sorted(set(share)))


def check_dropblock_options(data_format: str, seeds: str, normalize: str, share) -> Tuple[str, ...]:
    """The checks every framework's ``dropblock`` makes on its string options; returns ``share``
    normalized by :func:`check_share`."""
    check_data_format(data_format)
    check_choice(seeds, "seeds", SEEDS)
    check_choice(normalize, "normalize", NORMALIZE)
    return check_share(share)


def check_n_spatial(rank: int, name: str = "x") -> int:
    """Number of spatial axes of a (batch, channels, *spatial) input of the given rank."""
    if rank not in (3, 4, 5):
        raise ValueError(
            f"{name} must have rank 3, 4 or 5 (batch, channels and 1 to 3 spatial axes), "
            f"got rank {rank}")
    return rank - 2


def check_block_size(block_size: BlockSize, n_spatial: int, name: str = "block_size") -> Tuple[int, ...]:
    """Return one positive int per spatial axis, or raise ValueError naming ``name``."""
    if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
        sizes = (int(block_size),) * n_spatial
    else:
        try:
            sizes = tuple(block_size)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of {n_spatial} ints, "
                            f"got {block_size!r}") from None
        if len(sizes) != n_spatial:
            raise ValueError(f"{name} must have one entry per spatial axis ({n_spatial}), "
                             f"got {block_size!r}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise TypeError(f"{name} entries must be ints, got {block_size!r}")
        sizes = tuple(int(s) for s in sizes)
    for s in sizes:
        if s < 1:
            raise ValueError(f"{name} must be >= 1 on every axis, got {block_size!r}")
    return sizes


def check_spatial_shape(spatial_shape, name: str = "spatial_shape") -> Tuple[int, ...]:
    if isinstance(spatial_shape, numbers.Integral):
        spatial_shape = (spatial_shape,)
    try:
        entries = tuple(spatial_shape)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {spatial_shape!r}") \
            from None
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in entries):
        raise TypeError(f"{name} entries must be ints, got {spatial_shape!r}")
    spatial_shape = tuple(int(s) for s in entries)
    if not 1 <= len(spatial_shape) <= 3:
        raise ValueError(f"{name} must have 1, 2 or 3 entries, got {spatial_shape!r}")
    if any(s < 1 for s in spatial_shape):
        raise ValueError(f"{name} entries must be >= 1, got {spatial_shape!r}")
    return spatial_shape


def check_float_dtype_name(dtype_name: str, name: str = "x") -> None:
    """Raise TypeError unless the dtype's name is a floating-point type."""
    if not ("float" in dtype_name or dtype_name in ("half", "bfloat16", "double")):
        raise TypeError(f"{name} must have a floating-point dtype, got {dtype_name}")
