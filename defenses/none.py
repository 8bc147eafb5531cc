"""`none`: the unprotected baseline — raw images are published and recognised as they are."""
from __future__ import annotations

from typing import Any

from bench.core.context import Context
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from defenses.base import Defense


@DEFENSES.register("none")
class NoDefense(Defense):
    """No protection (the "ArcFace (no mask)" row of [H] Table 2): ``encode`` is the identity and
    the recognizer is the baseline recognizer F1 itself."""

    protected = False  # excluded from the min-max of Score_pp / Score_cls

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        return ctx.baseline
