"""Pytest configuration: keep TensorFlow quiet before any test imports it, and run Triton's
kernels in its interpreter where there is no GPU."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# The native planned call (structdrop_tutorial.torch._native) stays off, so that the Python
# plan's tests on a GPU test the Python plan; tests/test_torch_native.py turns it on.
os.environ.setdefault("STRUCTDROP_NATIVE", "0")

# The CUDA DropBlock path is written in Triton. Without a GPU its kernels run in Triton's
# interpreter (NumPy on the CPU), so the same tests check them everywhere; the switch is read
# when the kernels are first compiled, hence here.
try:
    import torch
except ImportError:  # pragma: no cover - the NumPy-only tests still run
    torch = None
if torch is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
