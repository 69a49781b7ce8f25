"""Measurements of the reference libraries that ship with the package.

The book compares the package with torchvision, timm and keras-cv, none of which its own
environment installs. What was measured of them in a separate environment is committed as data
under ``structdrop_tutorial/data/anchors/`` (with the versions it was measured with) and read
here, with ``importlib.resources``, so a chapter can print it from an installed package.
"""
from __future__ import annotations

import json

__all__ = ["load_drop_fractions"]


def load_drop_fractions() -> dict:
    """The drop fractions of the reference DropBlock layers, measured on batches of ones by
    ``benchmarks/anchor_drop_rates.py``.

    Returns:
        a dict with ``versions`` (library -> version), ``batches`` (independent batches per
        setting), ``batch_shape`` (batch size, channels) and ``results``: one dict per layer
        and setting with ``op``, ``library``, ``rate``, ``block``, ``map`` (height, width),
        ``dropped`` (mean fraction of zeros over the batches) and ``standard_error``.
    """
    from importlib import resources
    path = resources.files("structdrop_tutorial").joinpath("data", "anchors",
                                                          "drop_fractions.json")
    return json.loads(path.read_text(encoding="utf-8"))
