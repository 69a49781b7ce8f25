"""structdrop_tutorial: structured dropout (spatial dropout, DropBlock and family).

The framework-free math lives here; each framework has a module with the same names::

    import structdrop_tutorial as sd                      # gamma, noise shapes: NumPy only
    from structdrop_tutorial import numpy as sdn          # readable reference
    from structdrop_tutorial import torch as sdt          # PyTorch functions and modules
    from structdrop_tutorial import tensorflow as sdtf    # TensorFlow functions, Keras layers

Importing this package imports neither TensorFlow nor PyTorch.
"""
from .gamma import (axis_coverage, clip_block, coverage_counts, drop_probability_map,
                    exact_gamma, expected_drop_fraction, paper_gamma, resolve_gamma)
from .schedule import linear_rate
from .shapes import (all_noise_shapes, channel_axis, drop_path_noise_shape, noise_shape,
                     seed_grid_shape, spatial_axes, spatial_dims)
from .environment import report_device

__version__ = "0.1.0"

__all__ = ["axis_coverage", "clip_block", "coverage_counts", "drop_probability_map",
           "exact_gamma", "expected_drop_fraction", "paper_gamma", "resolve_gamma",
           "linear_rate", "all_noise_shapes", "channel_axis", "drop_path_noise_shape",
           "noise_shape", "seed_grid_shape", "spatial_axes", "spatial_dims", "report_device",
           "__version__"]
