"""The defense↔attack contract (ARCHITECTURE "Contracts", "What grows next (v3)"): what a defense
publishes (a :class:`Leak`), what an attack returns (a :class:`Reconstruction`), the attacker
knowledge rules (ALGORITHMS §1) and the cost-estimate view of a trained network (:class:`ModelSpec`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

from bench.core.errors import ConfigError


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
    # Attacker knowledge (ALGORITHMS §1 v2). ``black_box``: the pairs an attacker that knows the
    # mechanism but not the deployment's secrets simulates with secrets it drew itself
    # (``{"train_inputs", "train_targets", "extra"}``); None when the defense has no deployment
    # secrets (the two knowledge settings then coincide). ``secrets``: the deployment's secrets
    # (e.g. PPFR-FD's fixed key), handed only to white-box attackers. Both default to None so
    # Leaks stored before they existed still load.
    black_box: dict[str, Any] | None = None
    secrets: dict[str, Any] | None = None
    # ALGORITHMS §14: the identity labels of the attacker's public (aux) faces, row ``i`` naming
    # the face ``train_targets[i]`` was simulated from. Public data the attacker owns, so
    # :meth:`for_attacker` keeps them (unlike ``labels``, the test identities: ground truth).
    # The pipeline fills them in; None in Leaks stored before they existed.
    train_labels: Tensor | None = None

    def for_attacker(self, knowledge: str = "white_box", oracle: bool = False) -> "Leak":
        """A copy without the ground truth the attacker must not see, holding only what an
        attacker of ``knowledge`` may use (ALGORITHMS §1 "Attacker knowledge"):

        - ``white_box``: the pairs simulated with the deployment's own randomness and secrets,
          and ``secrets``;
        - ``black_box``: the pairs simulated with secrets the attacker drew itself
          (``black_box``, when the defense has deployment secrets) and no ``secrets``.

        The stolen ``inputs`` are always the deployment's, and so are the stolen entries of
        ``extra`` (:data:`STOLEN_EXTRA`, e.g. a mixing defense's ``stream``), which a black-box
        simulation never replaces. ``extra["knowledge"]`` says which setting the copy was made
        for and ``extra["pairs"]`` whose secrets built the pairs. ``oracle=True`` keeps
        ``oracle`` (the true membership of the stolen mixtures) for attacks that declare
        ``uses_oracle = True`` — upper-bound analyses such as ``carlini.oracle`` (§7.3 step 5),
        always labelled as such; targets and labels are removed either way. ``train_labels``
        (the public faces' identities) follow the pairs they name.
        """
        check_knowledge(knowledge)
        train_inputs, train_targets, extra = self.train_inputs, self.train_targets, dict(self.extra)
        pairs = "deployment"
        train_labels = self.train_labels
        if knowledge == "black_box" and self.black_box is not None:
            train_inputs = self.black_box["train_inputs"]
            train_targets = self.black_box["train_targets"]
            train_labels = self.black_box.get("train_labels")
            extra.update(self.black_box.get("extra") or {})
            extra.update({key: self.extra[key] for key in STOLEN_EXTRA if key in self.extra})
            pairs = "attacker_secrets"
        extra["knowledge"], extra["pairs"] = knowledge, pairs
        secrets = dict(self.secrets or {}) if knowledge == "white_box" else None
        return Leak(train_inputs, train_targets, self.inputs, None, None, None, extra,
                    oracle=dict(self.oracle) if oracle else {}, secrets=secrets,
                    train_labels=train_labels)


# Entries of ``Leak.extra`` that are stolen data (the deployment's), not the attacker's own
# simulation: ``for_attacker`` keeps them when black-box pairs replace the rest.
STOLEN_EXTRA = ("stream", "templates")

#: Entries of ``Leak.extra`` the pipeline adds to every leak (ALGORITHMS §14): the defended
#: recognizer F2's templates of the stolen faces (``templates``, stolen) and of the attacker's
#: public faces (``train_templates``, its own simulation with F2). An attack that ``requires``
#: only these reads the plain leak, not the extended one.
TEMPLATE_EXTRA = ("templates", "train_templates")


KNOWLEDGE = ("white_box", "black_box")


def check_knowledge(knowledge: str) -> None:
    if knowledge not in KNOWLEDGE:
        raise ConfigError(f"attack knowledge must be one of {KNOWLEDGE}, got {knowledge!r}")


@dataclass
class Reconstruction:
    """Images ``[N, C, H, W]`` in [0, 1], row ``i`` reconstructing ``leak.inputs[i]``; None for an
    identity-level attack that reconstructs no image (linkage, ALGORITHMS §14: its scores are in
    ``info``)."""

    images: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


class ModelSpec(NamedTuple):
    """A network an attack trains, as cost estimates see it (:meth:`Attack.training_models`)."""

    module: nn.Module
    input_shape: tuple[int, ...]  # per sample, as the attack feeds it (after any resize/pad)
    passes: float = 3.0  # forward-pass equivalents per training sample (forward + backward = 3)
    inference: bool = True  # also runs once per stolen input at reconstruction time
