"""`dp_peep`: DP by eigenface perturbation (PEEP) as used in [H] (ALGORITHMS §4.1).

fit: PCA on the flattened gray training faces — mean μ, top-K basis U (K = 128, capped by the
number of training images and pixels). encode: ``w = clip((x − μ)U)``, ``w̃ = w + Laplace(0, Δ/ε)``,
``x̃ = μ + w̃Uᵀ``, then the gray BDCT (64 channels) when ``frequency`` is on. The recognizer is
trained and tested on ``x̃`` with fresh noise at every call; all noise comes from the passed
``torch.Generator``.

[ASSUMP] choices (ALGORITHMS §4.1 marks every step as ours; each is an option):
- ``sensitivity='global'``: Δ = max(w) − min(w) over all coefficients of the training set, and w
  is clipped to [min, max] so that Δ bounds any change; ``'per_component'`` uses each
  coefficient's own range (less noise on minor components).
- ``max_fit_images=20000``: the PCA is fitted on at most this many training faces (randomised SVD
  beyond a few thousand); Δ is still taken over the whole training set.
- x̃ is not clipped to [0, 1] (the perturbed eigenface reconstruction is what is published); its
  image view is clipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.core.context import Context
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData, to_float
from defenses.base import Defense
from defenses.bdct import bdct, masked_view, to_gray

FULL_SVD_MAX_IMAGES = 4096  # beyond this, a randomised SVD of the top components is enough
SENSITIVITIES = ("global", "per_component")


def laplace(shape: tuple[int, ...], scale: Tensor | float, gen: torch.Generator) -> Tensor:
    """Laplace(0, scale) as the difference of two Exp(1) draws (no log(0): 1 − U ∈ (0, 1])."""
    e1 = -torch.log1p(-torch.rand(shape, generator=gen))
    e2 = -torch.log1p(-torch.rand(shape, generator=gen))
    return (e1 - e2) * scale


@dataclass
class PeepOptions:
    epsilon: float = 3.0  # [H]: ε = 3, Laplace
    components: int = 128  # K eigenfaces (capped by the training set)
    frequency: bool = True  # BDCT after the perturbation (the frequency-domain pipeline)
    upsample: bool = True  # §0.1 ×8 upsampling before the BDCT (v2: every preset)
    sensitivity: str = "global"  # [ASSUMP] global | per_component
    max_fit_images: int = 20000  # [ASSUMP] faces used for the PCA

    def validate(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"dp_peep epsilon must be > 0, got {self.epsilon}")
        if self.components < 1:
            raise ConfigError(f"dp_peep components must be >= 1, got {self.components}")
        if self.sensitivity not in SENSITIVITIES:
            raise ConfigError(f"dp_peep sensitivity must be one of {SENSITIVITIES}, got {self.sensitivity!r}")
        if self.max_fit_images < 2:
            raise ConfigError(f"dp_peep max_fit_images must be >= 2, got {self.max_fit_images}")


@DEFENSES.register("dp_peep")
class DpPeep(Defense):
    """DP (PEEP, ε = 3): Laplace noise on eigenface coefficients, then BDCT (ALGORITHMS §4.1)."""

    Options = PeepOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.mean: Tensor | None = None  # μ [D]
        self.basis: Tensor | None = None  # U [D, K]
        self.w_min: Tensor | None = None  # scalar or [K]
        self.w_max: Tensor | None = None
        self.image_shape: tuple[int, int] | None = None
        self.record: dict[str, Any] = {}

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context | None = None) -> None:
        """Eigenfaces of the training split and the coefficients' range (the sensitivity)."""
        train = data.train  # in memory or streamed: read through take/batches only
        self.image_shape = tuple(train.shape[-2:])  # type: ignore[assignment]
        n, d = len(train), train.shape[-2] * train.shape[-1]
        k = min(self.options.components, n, d)
        fit_idx = torch.arange(n)
        if n > self.options.max_fit_images:  # a fixed, evenly spaced subset: no randomness
            fit_idx = torch.linspace(0, n - 1, self.options.max_fit_images).long()
        fit_x = to_gray(train.take(fit_idx)).flatten(1).double()
        mean = fit_x.mean(0)
        centred = fit_x - mean
        if len(fit_x) <= FULL_SVD_MAX_IMAGES:
            basis = torch.linalg.svd(centred, full_matrices=False).Vh[:k].T
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                basis = torch.svd_lowrank(centred, q=min(k + 10, min(centred.shape)), niter=4)[2][:, :k]
        # the sensitivity is the coefficients' range over the whole training set: one streamed pass
        lo = hi = None
        for c in train.batches(list(torch.arange(n).split(4096)), ctx.workers if ctx else 0):
            w = (to_gray(to_float(c, torch.device("cpu"))).flatten(1).double() - mean) @ basis
            lo = w.amin(0) if lo is None else torch.minimum(lo, w.amin(0))
            hi = w.amax(0) if hi is None else torch.maximum(hi, w.amax(0))
        per = self.options.sensitivity == "per_component"
        self.w_min = (lo if per else lo.min()).float()
        self.w_max = (hi if per else hi.max()).float()
        self.mean, self.basis = mean.float(), basis.float()
        scale = self.noise_scale
        self.record = {"epsilon": self.options.epsilon, "components": k,
                       "sensitivity": self.options.sensitivity,
                       "delta": float((self.w_max - self.w_min).max()),
                       "noise_scale": float(scale.max()) if isinstance(scale, Tensor) else scale}

    @property
    def noise_scale(self) -> Tensor | float:
        """Laplace scale Δ/ε (a scalar, or one per component with ``per_component``)."""
        if self.w_min is None or self.w_max is None:
            raise TrainingError("dp_peep: fit() must run before encoding")
        delta = self.w_max - self.w_min
        return float(delta) / self.options.epsilon if delta.ndim == 0 else delta / self.options.epsilon

    # -- encode ---------------------------------------------------------------------------------
    def perturb(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """``x̃ = μ + (clip((x − μ)U) + Laplace(Δ/ε))Uᵀ`` as gray images ``[B, 1, H, W]``."""
        if self.mean is None or self.basis is None or self.w_min is None or self.w_max is None:
            raise TrainingError("dp_peep: fit() must run before encoding")
        if tuple(x.shape[-2:]) != self.image_shape:
            raise ConfigError(f"dp_peep was fitted on {self.image_shape} images, got {tuple(x.shape[-2:])}")
        mean, basis = self.mean.to(x), self.basis.to(x)
        g = to_gray(x).flatten(1)
        w = torch.clamp((g - mean) @ basis, self.w_min.to(x), self.w_max.to(x))
        scale = self.noise_scale
        noise = laplace(tuple(w.shape), scale if isinstance(scale, float) else scale.cpu(), gen)
        x_noisy = mean + (w + noise.to(x)) @ basis.T
        return x_noisy.view(len(x), 1, *self.image_shape)

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        x_noisy = self.perturb(x, gen)
        return bdct(x_noisy, upsample=self.options.upsample) if self.options.frequency else x_noisy

    def view(self, r: Tensor) -> Tensor:
        """Inverse BDCT min-maxed (§0.1), or the noisy image clipped to [0, 1]."""
        if not self.options.frequency:
            return r.clamp(0, 1)
        return masked_view(r, removed=(), upsampled=self.options.upsample)

    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """Gray ``x̃`` ``(1, H, W)`` or its BDCT, known before the eigenfaces are fitted."""
        x = torch.zeros(1, 1, *image_shape[-2:])
        return tuple((bdct(x, upsample=self.options.upsample) if self.options.frequency else x).shape[1:])
