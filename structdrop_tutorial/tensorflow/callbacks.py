"""A Keras callback that ramps drop rates up linearly, as the DropBlock paper does.

Ghiasi et al. (2018, arXiv:1810.12890) found that a fixed keep probability from the first step
hurts training and lowered it linearly from 1 to its target. In drop-rate terms the rate of every
scheduled layer is ``target * min(step / total_steps, 1)`` (see
:func:`structdrop_tutorial.schedule.linear_rate`), where ``step`` counts *training* batches only:
``predict`` and ``evaluate`` never advance it.
"""
from __future__ import annotations

import keras

from .._checks import check_int
from ..schedule import linear_rate

__all__ = ["LinearRateSchedule"]


def _scheduled_layers(model):
    flatten = getattr(model, "_flatten_layers", None)
    layers = flatten(include_self=False, recursive=True) if flatten else model.layers
    return [layer for layer in layers if hasattr(layer, "rate_variable") and hasattr(layer, "rate")]


@keras.saving.register_keras_serializable(package="structdrop")
class LinearRateSchedule(keras.callbacks.Callback):
    """Set each layer's ``rate_variable`` to ``layer.rate * min(step / total_steps, 1)``.

    Args:
        total_steps: training batches over which the rate grows from 0 to the layer's target
            ``rate`` (0: the target from the first step).
        layers: the layers to schedule; default every layer of the model (nested ones too)
            that has a ``rate_variable``.
        start_step: steps already taken (to resume a schedule).

    The rate is set in ``on_train_batch_begin`` (so the batch trains with the rate of its step)
    and the step counter advances in ``on_train_batch_end``. The counter survives several
    ``fit`` calls. Attribute ``step`` holds the number of training batches seen.

    With ``steps_per_execution > 1`` in ``compile``, Keras calls back once per execution of
    that many batches: they all train with the rate of the execution's first step, and
    ``step`` advances by the number of batches the execution ran (an epoch's last execution
    may run fewer; where ``fit`` does not know the epoch's length, it counts as a full one).
    """

    def __init__(self, total_steps, layers=None, start_step=0):
        super().__init__()
        self.total_steps = check_int(total_steps, "total_steps", 0)
        self.step = check_int(start_step, "start_step", 0)
        self._layers = None if layers is None else list(layers)

    def scheduled_layers(self):
        """The layers this callback drives."""
        if self._layers is not None:
            return self._layers
        return _scheduled_layers(self.model) if self.model is not None else []

    def current_rate(self, layer):
        """The rate ``layer`` gets at the current step."""
        return linear_rate(self.step, self.total_steps, layer.rate)

    def _apply(self):
        for layer in self.scheduled_layers():
            layer.rate_variable.assign(self.current_rate(layer))

    def on_train_begin(self, logs=None):
        self._apply()

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the first and the last batch index of an execution (the same index
        # without steps_per_execution); the last one may lie past the epoch's end, where the
        # execution ran fewer batches: clipped to the epoch's length where fit knows it
        last = batch
        steps = (self.params or {}).get("steps")
        if steps:
            last = min(last, int(steps) - 1)
        self.step += max(last - getattr(self, "_begin", batch) + 1, 1)

    def get_config(self):
        """``total_steps`` and the steps taken so far (as ``start_step``). An explicit
        ``layers`` list is not part of it: a schedule rebuilt from its config drives every
        scheduled layer of the model it is given to."""
        return {"total_steps": self.total_steps, "start_step": self.step}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
