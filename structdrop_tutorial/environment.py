"""What a notebook runs on: used by every notebook's first cell."""
from __future__ import annotations

import importlib.util
import os
import sys


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up logging; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def on_colab() -> bool:
    """Whether this Python runs in Google Colab (``google.colab`` is imported there)."""
    return "google.colab" in sys.modules


def device_summary() -> str:
    """One line naming the accelerator torch would use, without importing TensorFlow."""
    if importlib.util.find_spec("torch") is None:
        return "torch not installed; running on the CPU"
    import torch
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU only (torch {torch.__version__})"


def report_device() -> str:
    """Print and return :func:`device_summary`."""
    line = device_summary()
    print(line)
    return line
