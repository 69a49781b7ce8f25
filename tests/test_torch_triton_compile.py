"""The Triton DropBlock kernels compile for real GPUs, checked on a machine without one.

Elsewhere the kernels run in Triton's interpreter when there is no GPU, and the interpreter
accepts programs the compiler rejects (types, constexpr rules, layouts). Here
``benchmarks/triton_sass.py --check`` compiles every kernel variant the tests launch, with the
arguments and specializations a real launch would use, for sm_75 (Colab's T4), sm_80 (A100) and
sm_90 (H100/H200), with the ``ptxas`` Triton ships. Each runs in a subprocess: this process
may already hold the interpreted kernels.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "triton_sass.py"


def run_python(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_every_kernel_variant_compiles_for_sm75_sm80_sm90():
    res = run_python(str(SCRIPT), "--check", "--arch", "75,80,90")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if "kernel variants compiled" in line]
    assert [line.split(":")[0] for line in lines] == ["sm_75", "sm_80", "sm_90"]
    assert all(int(line.split()[1]) >= 20 for line in lines), lines  # masks, seeds, products


def test_the_check_fails_on_a_kernel_that_does_not_compile():
    """compile_launch really compiles: a tile side that is not a power of two (tl.arange
    rejects it) raises, as it would at a real launch."""
    code = f"""
import sys
sys.path.insert(0, {str(SCRIPT.parent)!r})
import triton_sass as t
(fn, args, kwargs), = [c for c in t.recorded_launches(t._mask_run((2, 3, 9, 9), 3, "valid", 0.1))
                       if c[0] is t.kernels.dropblock_mask_kernel]
t.compile_launch(fn, args, kwargs, 90)
print("good tile compiled")
try:
    t.compile_launch(fn, args, dict(kwargs, TW=15), 90)
except Exception as exc:
    print("bad tile rejected:", type(exc).__name__)
"""
    res = run_python("-c", code)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "good tile compiled" in res.stdout and "bad tile rejected" in res.stdout
