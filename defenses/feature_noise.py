"""Unprotected client features and AdvFace's noise baselines on them (ALGORITHMS §4.2, §4.3, §6).

- ``plain_feature``: the features ``z = E(x)`` exactly as a deployed system stores them — the
  "Unprotected" row of [A] Tables 1–2.
- ``random_feature`` (§4.3, [A §5.1.3]): 40 iterations of ``z ← z + U(−0.2, 0.2)``.
- ``dp_feature`` (§4.2, [A §5.1.3]): ``z̃ = z + Laplace(0, Δ/ε)``, ε = 1, Δ = 0.2 [ASSUMP].

All three keep the deployed server part Ψ unchanged (online style) and share AdvFace's threat
model (:class:`~defenses.feature_split.FeatureDefense`). Noise is drawn from the stage's
``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.core.context import device_generator
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from defenses.feature_split import FeatureDefense, FeatureOptions


@DEFENSES.register("plain_feature")
class PlainFeature(FeatureDefense):
    """Unprotected client features E(x) as a deployed split recognizer stores them ([A] Table 1
    "Unprotected"); recognizer = the baseline's Ψ."""

    protected = False  # excluded from the min-max of Score_pp / Score_cls


@dataclass
class RandomOptions(FeatureOptions):
    iterations: int = 40  # [A §5.1.3]
    bound: float = 0.2  # each step adds U(−bound, bound)

    def validate(self) -> None:
        super().validate()
        if self.iterations < 0 or self.bound < 0:
            raise ConfigError(f"random_feature iterations and bound must be >= 0, got "
                              f"{self.iterations}, {self.bound}")


@DEFENSES.register("random_feature")
class RandomFeature(FeatureDefense):
    """AdvFace's random-perturbation baseline (ALGORITHMS §4.3): 40 × ``z ← z + U(−0.2, 0.2)``
    on the client features; recognizer = the baseline's Ψ."""

    Options = RandomOptions

    def perturb(self, z: Tensor, gen: torch.Generator) -> Tensor:
        o = self.options
        g = device_generator(gen, z.device)  # the noise is as large as z: draw it where z is
        for _ in range(o.iterations):
            u = torch.rand(z.shape, generator=g, device=z.device, dtype=z.dtype)
            z = z + (2 * u - 1) * o.bound
        return z


@dataclass
class DpOptions(FeatureOptions):
    epsilon: float = 1.0  # [A §5.1.3]
    sensitivity: float = 0.2  # Δ [ASSUMP]

    def validate(self) -> None:
        super().validate()
        if self.epsilon <= 0 or self.sensitivity < 0:
            raise ConfigError(f"dp_feature needs epsilon > 0 and sensitivity >= 0, got "
                              f"{self.epsilon}, {self.sensitivity}")


def laplace(shape: torch.Size, scale: float, gen: torch.Generator) -> Tensor:
    """Laplace(0, scale) samples by inverse CDF from one generator: ``−b·sgn(u)·ln(1 − 2|u|)``,
    ``u ~ U(−½, ½)``."""
    device = gen.device
    u = torch.rand(shape, generator=gen, dtype=torch.float64, device=device) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-12))).float()


@DEFENSES.register("dp_feature")
class DpFeature(FeatureDefense):
    """AdvFace's DP baseline (ALGORITHMS §4.2): ``z + Laplace(0, Δ/ε)``, ε = 1, Δ = 0.2, on the
    client features; recognizer = the baseline's Ψ."""

    Options = DpOptions

    def perturb(self, z: Tensor, gen: torch.Generator) -> Tensor:
        o = self.options
        return z + laplace(z.shape, o.sensitivity / o.epsilon, device_generator(gen, z.device)).to(z)
