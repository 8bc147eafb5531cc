"""Attack contract: a `Leak` in, a `Reconstruction` out (ARCHITECTURE "Contracts")."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from bench.context import Context


@dataclass
class Leak:
    """Exactly what the threat model hands the attacker, plus the ground truth for scoring.

    ``train_inputs``/``train_targets``: (protected representation, original image) pairs the
    attacker builds from its auxiliary public faces with the defense's real randomness (for
    mixtures the target is the slot-0 image). ``inputs``: the stolen protected representations of
    the test faces. ``targets`` and ``labels`` are for scoring only and are removed by
    :meth:`for_attacker`. ``views``: image-domain view of ``inputs`` for S1/S2 (None when the
    representation has no image view). ``extra``: what the attacker knows from its own simulation.
    ``oracle``: ground truth about the stolen inputs (e.g. which faces a mixture holds), kept for
    oracle-assignment analyses (§7.3 step 5) and removed by :meth:`for_attacker`.
    """

    train_inputs: Tensor
    train_targets: Tensor
    inputs: Tensor
    targets: Tensor | None = None
    labels: Tensor | None = None
    views: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, Any] = field(default_factory=dict)

    def for_attacker(self) -> "Leak":
        """A copy without the ground truth the attacker must not see."""
        return Leak(self.train_inputs, self.train_targets, self.inputs, None, None, None,
                    dict(self.extra))


@dataclass
class Reconstruction:
    """Images ``[N, C, H, W]`` in [0, 1], row ``i`` reconstructing ``leak.inputs[i]``."""

    images: Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """A reconstruction attack. Subclasses define ``Options`` (a dataclass with ALGORITHMS.md
    defaults) and ``run``. Built as ``Attack(**options)``; unknown options are an error."""

    name: ClassVar[str] = "attack"

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        from bench.config import build_options

        self.options = build_options(self.Options, options, f"attack {self.name}")

    def applies_to(self, defense: Any) -> bool:
        """Whether this attack is meaningful against ``defense`` (else the cell is ``n/a``)."""
        return True

    @abstractmethod
    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        """Train on ``leak.train_*`` and reconstruct ``leak.inputs``."""

    # -- cost estimates (``bench.plan``) --------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """Training epochs over the attacker's pairs (its ``epochs`` option; 1 without one)."""
        return int(getattr(self.options, "epochs", 1))

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, "ModelSpec"]:
        """The networks :meth:`run` trains, freshly built, for leaked representations of
        ``in_shape`` and target images of ``image_shape`` (both per sample). Default: none (an
        attack that trains nothing)."""
        return {}


class ModelSpec(NamedTuple):
    """A network an attack trains, as cost estimates see it (:meth:`Attack.training_models`)."""

    module: nn.Module
    input_shape: tuple[int, ...]  # per sample, as the attack feeds it (after any resize/pad)
    passes: float = 3.0  # forward-pass equivalents per training sample (forward + backward = 3)
    inference: bool = True  # also runs once per stolen input at reconstruction time


def option_names(options_cls: type) -> list[str]:
    return [f.name for f in fields(options_cls)]
