"""Training curves: every training loop reports each epoch's mean losses here, and the pipeline
collects them per stage (:func:`recording_curves` around a stage's computation) into the stage
and the cell record, so that an attack that had not converged shows in the records. Its own
module: the attacks' loop (:mod:`bench.core.training`) and the recognizers'
(:mod:`bench.recognition`) both report here, and neither's code is part of the other's stage keys.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

#: ``sink(curve, epoch)`` is told of every epoch as it ends (live logging, e.g. TensorBoard)
CurveSink = Callable[[dict[str, Any], int], None]


class CurveLog:
    """The training curves of one stage: one entry per training loop that ran in it, in order.

    An entry is JSON data: ``{"name": the loop's label, "loop": "train_epochs" | "sgd_epochs",
    "losses": {loss: [mean of epoch 1, …]}, "held_out": {loss: [...]} or absent}``.
    """

    def __init__(self, sink: CurveSink | None = None) -> None:
        self.curves: list[dict[str, Any]] = []
        self.sink = sink

    def start(self, name: str, loop: str) -> dict[str, Any]:
        curve: dict[str, Any] = {"name": name, "loop": loop, "losses": {}}
        self.curves.append(curve)
        return curve


_ACTIVE: contextvars.ContextVar[CurveLog | None] = contextvars.ContextVar("curve_log", default=None)


@contextlib.contextmanager
def recording_curves(sink: CurveSink | None = None) -> Iterator[CurveLog]:
    """Collect the curves of every training loop run inside the block (a stage's computation).
    Nested blocks (a stage computing an upstream stage it needs) keep their own curves."""
    log = CurveLog(sink)
    token = _ACTIVE.set(log)
    try:
        yield log
    finally:
        _ACTIVE.reset(token)


def start_curve(name: str, loop: str) -> dict[str, Any] | None:
    """A new curve in the active log (None outside :func:`recording_curves`)."""
    log = _ACTIVE.get()
    return None if log is None else log.start(name, loop)


def record_epoch(curve: dict[str, Any] | None, epoch: int, losses: dict[str, float],
                 held_out: dict[str, float] | None = None) -> None:
    """Append one epoch's mean losses (and held-out losses) to ``curve`` (from
    :func:`start_curve`); a no-op for None. Records numbers already computed: nothing here
    touches a model or a random generator."""
    if curve is None:
        return
    for key, value in losses.items():
        curve["losses"].setdefault(str(key), []).append(float(value))
    for key, value in (held_out or {}).items():
        curve.setdefault("held_out", {}).setdefault(str(key), []).append(float(value))
    log = _ACTIVE.get()
    if log is not None and log.sink is not None:
        log.sink(curve, epoch)
