"""The attack plugin base class: a `Leak` in, a `Reconstruction` out (ARCHITECTURE "Contracts";
the contract itself lives in :mod:`bench.core.contract`)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.core.context import Context
from bench.core.contract import Leak, ModelSpec, Reconstruction, check_knowledge


class Attack(ABC):
    """A reconstruction attack. Subclasses define ``Options`` (a dataclass with ALGORITHMS.md
    defaults) and ``run``. Built as ``Attack(**options)``; unknown options are an error."""

    name: ClassVar[str] = "attack"
    #: Keys of ``Leak.extra`` the attack cannot run without (a structural attack such as Carlini's
    #: needs the mixing stream); empty = it runs on any leak of (representation, image) pairs.
    requires: ClassVar[tuple[str, ...]] = ()
    #: ALGORITHMS §15: the attack family (``decoder``, ``cgan``, ``decoupling``, ``analytic`` —
    #: white-box analytic —, ``linkage``, ``template``) the worst-case view counts and
    #: ``--attacks strongest`` picks one representative of; ``family_rank`` orders a family's
    #: attacks (lowest first: the representative where it applies).
    family: ClassVar[str] = "other"
    family_rank: ClassVar[int] = 0
    #: ALGORITHMS §15: the strength the attack must reach on ``none`` (no protection) with the
    #: quick preset on ORL, per privacy metric (``{"SSIM": 0.8, "SRRA": 0.9}``) — set from a
    #: measurement with margin; a cell on ``none`` below it is recorded ``underpowered``. Empty for
    #: an attack that does not apply to ``none`` (``floor_note`` says why).
    floor: ClassVar[dict[str, float]] = {}
    floor_note: ClassVar[str] = ""
    #: False for identity-level attacks that return no images (``Reconstruction.images is None``).
    reconstructs: ClassVar[bool] = True

    @dataclass
    class Options:
        """Options every attack shares; subclasses' ``Options`` inherit them (and call
        ``Attack.Options.validate(self)`` from their own ``validate``).

        ``knowledge`` (ALGORITHMS §1 "Attacker knowledge (v2)"): ``white_box`` = the attacker
        knows the mechanism and the deployment's secrets (e.g. PPFR-FD's fixed key) and trains on
        pairs simulated with them; ``black_box`` = it knows the mechanism only and simulates with
        secrets it draws itself. Default ``white_box`` [ASSUMP]: the conservative (strongest)
        attacker, the §7.1 recipe ("run the defense, with its real randomness") and what every
        cell recorded before the option existed; with per-sample secrets (PPFR-FD's default
        ``per_sample``) the two settings coincide in distribution, so nothing is lost for the
        paper's configuration.
        """

        knowledge: str = "white_box"

        def validate(self) -> None:
            check_knowledge(self.knowledge)

    def __init__(self, **options: Any) -> None:
        from bench.config import build_options

        self.options = build_options(self.Options, options, f"attack {self.name}")

    @property
    def knowledge(self) -> str:
        """``white_box`` or ``black_box`` (its ``knowledge`` option; an attack whose Options lack
        it — a third-party plugin — is white-box, the pre-option behaviour)."""
        return str(getattr(self.options, "knowledge", "white_box"))

    def applies_to(self, defense: Any) -> bool:
        """Whether this attack is meaningful against ``defense`` (else the cell is ``n/a``).
        Default: what :meth:`not_applicable` says (always, unless a subclass overrides it)."""
        if type(self).not_applicable is Attack.not_applicable:
            return True
        return self.not_applicable(defense) is None

    def not_applicable(self, defense: Any) -> str | None:
        """Why this attack does not apply to ``defense`` (the cell is recorded ``n/a`` with this
        reason), or None when it applies. Override this; plugins that override only
        :meth:`applies_to` keep working: a False there gives a generic reason (a str returned
        from it is taken as the reason)."""
        if type(self).applies_to is Attack.applies_to:
            return None
        ok = self.applies_to(defense)
        if isinstance(ok, str):
            return ok or None
        if ok:
            return None
        return (f"attack {self.name} does not apply to defense "
                f"{getattr(defense, 'name', type(defense).__name__)}")

    @classmethod
    def floor_shortfall(cls, privacy: dict[str, Any]) -> dict[str, list[float]]:
        """The metrics of ``privacy`` (a cell's measured numbers on ``none``) under the attack's
        :attr:`floor`: ``{metric: [value, floor]}`` (a missing or NaN value counts as under)."""
        out: dict[str, list[float]] = {}
        for metric, need in cls.floor.items():
            value = privacy.get(metric)
            v = float(value) if isinstance(value, (int, float)) else float("nan")
            if not v >= need:
                out[metric] = [v, float(need)]
        return out

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
