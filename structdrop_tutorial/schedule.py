"""The DropBlock paper's linear schedule, framework-free.

The paper found that a fixed drop rate from the first step hurts training, and lowered the keep
probability linearly from 1 to its target. In drop-rate terms: the rate grows linearly from 0 to
``final_rate`` over ``total_steps`` training steps, then stays there.
"""
from __future__ import annotations

from ._checks import check_int, check_rate


def linear_rate(step: int, total_steps: int, final_rate: float) -> float:
    """Drop rate after ``step`` training steps: ``final_rate * min(step / total_steps, 1)``.

    ``total_steps == 0`` means no ramp (the final rate from the start).
    """
    final_rate = check_rate(final_rate, "final_rate")
    total_steps = check_int(total_steps, "total_steps", 0)
    step = check_int(step, "step", 0)
    if total_steps == 0:
        return final_rate
    return final_rate * min(step / total_steps, 1.0)
