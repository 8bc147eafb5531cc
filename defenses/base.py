"""Defense contract (ARCHITECTURE "Contracts").

A defense turns images into what leaves the data owner (``encode``), trains the recognizer that
works on that representation (``train_step`` / ``train_recognizer``), and says what the attacker
gets under its threat model (``leak``). Subclasses define ``Options`` — a dataclass whose
defaults are those of ALGORITHMS.md — and cite the section they implement in their docstring.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bench.core.context import Context
from bench.core.contract import Leak
from bench.data.facedata import FaceData

ENCODE_BATCH = 256  # encode in chunks so large sets fit in memory


class Defense(ABC):
    """Base defense: identity encoding, ArcFace training on ``encode(x)``, simulated leak."""

    name: ClassVar[str] = "defense"
    domain: ClassVar[Literal["image", "feature"]] = "image"

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        from bench.config import build_options

        self.options = build_options(self.Options, options, f"defense {self.name}")

    # -- learned parts -------------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Fit any learned part of the defense (eigenfaces, shadow decoder, …). Default: none."""

    # -- the protected representation -----------------------------------------------------------
    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """What leaves the data owner for images ``x`` in [0, 1] (training-time randomness)."""
        return x

    def test_encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Representation used at verification time (no mixing). Default: ``encode``."""
        return self.encode(x, gen)

    def encode_all(self, x: Tensor, gen: torch.Generator, test: bool = False) -> Tensor:
        fn = self.test_encode if test else self.encode
        return torch.cat([fn(chunk, gen) for chunk in x.split(ENCODE_BATCH)])

    def view(self, r: Tensor) -> Tensor | None:
        """Image-domain view of a representation (for S1/S2 and figures); None if there is none."""
        return r if r.ndim == 4 and r.shape[1] in (1, 3) else None

    # -- the recognizer ---------------------------------------------------------------------------
    def train_step(self, model: Any, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """Loss of one recognizer step on a raw image batch. Default: ArcFace on ``encode(x)``;
        mixing defenses override it with mixed-label ArcFace (ALGORITHMS §0.3)."""
        return model.loss(self.encode(x, gen), y)

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """Train the recognizer that works on this defense's representation."""
        from bench.recognition import train_recognizer

        return train_recognizer(data.train, ctx, defense=self, desc=f"recognizer[{self.name}]")

    # -- the threat model ---------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """Attacker pairs simulated on the auxiliary faces with the defense's real randomness, and
        the stolen representations of the test faces."""
        gen = ctx.generator("leak", self.name)
        train_inputs = self.encode_all(data.aux.images, gen, test=True)
        inputs = self.encode_all(data.test.images, gen, test=True)
        return Leak(train_inputs, data.aux.images, inputs, data.test.images, data.test.labels,
                    views=self.view(inputs))

    def extend_leak(self, leak: Leak, data: FaceData, ctx: Context) -> None:
        """Add, in place, the large structural entries that only some attacks read (those whose
        ``requires`` names them, e.g. a mixing defense's ``stream`` for Carlini's attack). The
        pipeline calls it for such attacks only and stores the result under its own key.
        Default: nothing to add."""

    # -- attacker knowledge (ALGORITHMS §1 "Attacker knowledge (v2)") -------------------------------
    def attacker_copy(self, gen: torch.Generator) -> "Defense":
        """The defense as a black-box attacker can run it: the same mechanism (and trained
        parts) with deployment secrets drawn afresh from ``gen``. Default: ``self`` — the defense
        has no deployment secrets, so white- and black-box simulations coincide. Defenses with a
        secret (PPFR-FD's ``fixed_key`` and the masking mixups built on it) override it; the
        pipeline then simulates the black-box attacker's pairs with the copy
        (:meth:`bench.pipeline.Pipeline.leak`)."""
        return self

    def deployment_secrets(self) -> dict[str, Any]:
        """The deployment's secrets, handed only to ``white_box`` attackers (``Leak.secrets``).
        Default: those of a ``masker`` component (PPFR-FD's fixed key, also held by the masking
        mixups), else none."""
        masker = getattr(self, "masker", None)
        return dict(masker.secrets()) if hasattr(masker, "secrets") else {}

    def mechanism(self) -> dict[str, Any] | None:
        """The public description of the mechanism (what every attacker knows, no secrets), for
        attacks that simulate or invert it analytically (``Leak.extra["mechanism"]``). Default:
        that of a ``masker`` component (PPFR-FD), else None."""
        masker = getattr(self, "masker", None)
        return masker.mechanism() if hasattr(masker, "mechanism") else None

    # -- shapes without fitting (cost estimates, ``bench.plan``) --------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """Per-sample shape of :meth:`test_encode` (the defense recognizer's input) for images of
        ``image_shape`` ``(C, H, W)``, known before :meth:`fit`. Default: encode two black images;
        defenses whose ``encode`` needs a fitted part override it. ``recognizer``: the
        ``RecognizerConfig`` of the baseline F1 (feature defenses split it)."""
        with torch.no_grad():
            r = self.test_encode(torch.zeros(2, *image_shape), torch.Generator().manual_seed(0))
        return tuple(r.shape[1:])

    def leak_shape(self, image_shape: tuple[int, int, int], recognizer: Any = None) -> tuple[int, ...]:
        """Per-sample shape of what the attacker gets (``Leak.inputs``). Default: the
        representation itself (:meth:`representation_shape`)."""
        return self.representation_shape(image_shape, recognizer)
