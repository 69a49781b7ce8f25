"""A linear drop-rate schedule for structured dropout layers (the DropBlock paper's ramp).

Ghiasi et al. (2018) found that a fixed DropBlock rate from the first step hurts training and
lowered the keep probability linearly instead. :class:`LinearSchedule` sets ``module.rate`` on
one or more layers to ``target_rate * min(step / total_steps, 1)``; it advances only when you
call :meth:`LinearSchedule.step` -- once per *training step*, next to ``optimizer.step()`` -- so
forward passes made for evaluation never move it.
"""
from __future__ import annotations

from typing import Iterable, List, Union

from torch import nn

from .._checks import check_int, check_rate
from ..schedule import linear_rate

__all__ = ["LinearSchedule"]


def _collect(module_or_modules) -> List[nn.Module]:
    if isinstance(module_or_modules, nn.Module):
        if hasattr(type(module_or_modules), "rate"):
            return [module_or_modules]
        found = [m for m in module_or_modules.modules() if hasattr(type(m), "rate")]
        if not found:
            raise ValueError(f"no module with a rate attribute in {type(module_or_modules).__name__}")
        return found
    modules = list(module_or_modules)
    for m in modules:
        if not hasattr(m, "rate"):
            raise TypeError(f"every scheduled module needs a rate attribute, got {type(m).__name__}")
    if not modules:
        raise ValueError("module_or_modules is empty")
    return modules


class LinearSchedule:
    """Ramp the ``rate`` of structured dropout layers linearly from 0 to ``target_rate``.

    Args:
        module_or_modules: a layer with a ``rate`` attribute (e.g. :class:`DropBlock2d`), an
            iterable of them, or any ``nn.Module`` (a whole network): then every submodule whose
            class has a ``rate`` attribute is scheduled.
        target_rate: the rate reached after ``total_steps`` steps and kept afterwards.
        total_steps: length of the ramp in training steps (0: the target rate at once).

    The rate of every scheduled module is set at construction (step 0, rate 0) and after each
    :meth:`step`. :meth:`state_dict` / :meth:`load_state_dict` save and restore the position, so a
    resumed run continues the ramp where it stopped.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), DropBlock2d(0.0, 3))
        >>> schedule = LinearSchedule(net, target_rate=0.1, total_steps=1000)
        >>> for batch in loader:                     # doctest: +SKIP
        ...     loss = ...; loss.backward(); optimizer.step(); schedule.step()
    """

    def __init__(self, module_or_modules: Union[nn.Module, Iterable[nn.Module]], target_rate: float,
                 total_steps: int):
        self.modules = _collect(module_or_modules)
        self.target_rate = check_rate(target_rate, "target_rate")
        self.total_steps = check_int(total_steps, "total_steps", 0)
        self.last_step = 0
        self._apply()

    @property
    def rate(self) -> float:
        """The rate for the current step."""
        return linear_rate(self.last_step, self.total_steps, self.target_rate)

    def _apply(self) -> None:
        rate = self.rate
        for m in self.modules:
            m.rate = rate

    def step(self) -> float:
        """Advance one training step and update the modules; returns the new rate."""
        self.last_step += 1
        self._apply()
        return self.rate

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "target_rate": self.target_rate,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values; everything is checked before anything changes,
        so a bad state leaves the schedule as it was."""
        target_rate = check_rate(state["target_rate"], "target_rate")
        total_steps = check_int(state["total_steps"], "total_steps", 0)
        last_step = check_int(state["last_step"], "last_step", 0)
        self.target_rate, self.total_steps, self.last_step = target_rate, total_steps, last_step
        self._apply()

    def __repr__(self) -> str:
        return (f"LinearSchedule(step={self.last_step}, rate={self.rate:.4g}, "
                f"target_rate={self.target_rate}, total_steps={self.total_steps}, "
                f"modules={len(self.modules)})")
