"""Live training curves in TensorBoard (``python -m bench run --tensorboard DIR``): each stage's
loops write their per-epoch losses as they end, the same numbers the stage records
(:mod:`bench.core.curves`). Needs the optional ``tensorboard`` extra."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.core.errors import ConfigError

INSTALL_HINT = "pip install 'faceprivbench[tensorboard]'"


def require_tensorboard() -> None:
    """Raise a one-line ConfigError, before any work, when TensorBoard is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}")


class TensorBoardSink:
    """A :data:`bench.core.training.CurveSink` writing to one event folder (one stage of one
    cell); the writer opens with the first epoch, so a stage that trains nothing leaves no folder."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def __call__(self, curve: dict[str, Any], epoch: int) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        for part, prefix in (("losses", ""), ("held_out", "held_out_")):
            for key, values in (curve.get(part) or {}).items():
                self._writer.add_scalar(f"{curve['name']}/{prefix}{key}", values[-1], epoch + 1)
        self._writer.flush()

    def __enter__(self) -> "TensorBoardSink":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.close()
