"""`dctdp`: DCTDP — learnable Laplace noise on the BDCT without DC (ALGORITHMS §13)
[PAPER ECCV'22 "Privacy-Preserving Face Recognition with Learnable Privacy Budgets in Frequency
Domain"] [CODE Tencent/TFace:recognition/tasks/dctdp/utils.py, train.py, train.yaml].

1. Front end (:mod:`defenses.tface_dct`): ×8 upsampling, YCbCr, −128, BDCT; the DC coefficient
   of each colour is dropped → ``X ∈ R^{189×h×w}`` (colour-major, 63 AC channels per colour).
2. Noise (:class:`LaplaceNoise`, TFace's ``NoisyActivation``): per element
   ``noise = loc + scale · Laplace(0, 1)`` with ``scale = sensitivity / (softmax(ρ) · B)``, the
   softmax over all ``189·h·w`` elements, ``B = budget_mean · 189·h·w`` (default budget_mean 4),
   sensitivity 1; ``loc`` and ``ρ`` start at 0 (every scale then is ``1 / budget_mean``) and are
   trained. The published representation is ``X + noise``, in TFace's raw coefficient units.
3. Training (jointly, :meth:`Dctdp.train_recognizer`): the recognizer (``backbone``; TFace IR-50,
   the paper preset) on ``X + noise`` with ArcFace through the harness's SGD recipe; loc and ρ
   with Adam at ``noise_lr`` (TFace ``LRS_NOISE`` 0.1), decayed ×0.1 at the recognizer's
   milestones as TFace's ``adjust_lr`` does; plus ``aux_weight · (−log mean scale)``, the
   auxiliary loss that pushes the noise up. (TFace defines ``aux_loss`` but its ``train.py`` never
   adds it; §13 includes it: ``aux_weight = 1`` [ASSUMP], 0 reproduces the published script.
   Measured on 12 ORL identities at 32 px, 80 epochs = 240 Adam steps: weight 1 raised the
   median scale from 0.25 to 2.4 (mean 753) at verification accuracy 0.98; weight 0.01, to 0.74.)
4. Threat model (§13): the server (attacker) sees ``X + noise`` with the trained noise, as the
   recognizer does; attacker pairs are simulated on its auxiliary faces with the same trained
   noise model (no deployment secret: white- and black-box coincide).

Budget sweep: ``dctdp.budget<b>`` variants fix ``budget_mean`` (0.5 … 8; smaller = more noise).

[ASSUMP] choices, each an option: ``noise_draw='per_sample'`` draws an independent noise tensor
per image (TFace draws one ``[189, h, w]`` tensor per batch and adds it to every image:
``'per_batch'``); ``log_scale_max`` clamps ``log scale`` (default 30, scale ≤ 1e13) so that the
auxiliary loss, unbounded below, cannot overflow float32 on long schedules; gray faces replicated
to three colours. ``X + noise`` reaches the recognizer raw, as in TFace (``standardize=False``):
per-channel standardisation (``True``) would multiply the high-frequency channels of the ×8 maps
by up to ~1000 (their std is ~1e-3 of TFace's coefficient units) and with them the Adam-trained
``loc`` — measured on 12 ORL identities at 32 px, 20 epochs: the recognizer then stays at chance
(training top-1 0.08) where raw input reaches 1.0. The image view (S1/S2) is the noisy luma plane
with DC zeroed, inverse BDCT, min-max (§0.1).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench.config import RecognizerConfig
from bench.core.context import Context, device_generator
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from defenses.base import Defense
from defenses.bdct import masked_view
from defenses.tface_dct import (COLOURS, N_FREQ, PlannedModel, channel_stats, check_backbone,
                                encode_chunks, epoch_images, front_end)
from defenses.training import fit_arcface

AC = N_FREQ - 1  # 63 AC channels per colour
NOISE_DRAWS = ("per_sample", "per_batch")
BUDGETS = (0.5, 1.0, 2.0, 4.0, 8.0)  # the registered budget_mean sweep variants [ASSUMP]


def drop_dc(coeff: Tensor) -> Tensor:
    """``[B, 3, 64, h, w]`` → ``[B, 189, h, w]``: each colour's 63 AC channels (TFace
    ``dct_block[:, :, 1:]``)."""
    return coeff[:, :, 1:].flatten(1, 2)


def standard_laplace(shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Laplace(0, 1) samples by inverse CDF, ``−sgn(u)·ln(1 − 2|u|)``, ``u ~ U(−½, ½)``, from a
    generator on ``device``."""
    u = torch.rand(shape, generator=gen, device=device, dtype=dtype) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


class LaplaceNoise(nn.Module):
    """TFace's ``NoisyActivation``: learnable location and privacy-budget logits per element."""

    def __init__(self, shape: tuple[int, int, int], budget_mean: float, sensitivity: float = 1.0,
                 log_scale_max: float = 30.0) -> None:
        super().__init__()
        self.locs = nn.Parameter(torch.zeros(shape))
        self.rhos = nn.Parameter(torch.zeros(shape))
        self.budget = budget_mean * math.prod(shape)
        self.sensitivity, self.log_scale_max = sensitivity, log_scale_max

    def log_scales(self) -> Tensor:
        """``log(sensitivity / (softmax(ρ) · B))``, computed in log space (no underflow)."""
        log_p = torch.log_softmax(self.rhos.flatten(), 0).view_as(self.rhos)
        log_s = math.log(self.sensitivity) - math.log(self.budget) - log_p
        return log_s.clamp(max=self.log_scale_max)

    def scales(self) -> Tensor:
        return self.log_scales().exp()

    def forward(self, x: Tensor, gen: torch.Generator, per_sample: bool = True) -> Tensor:
        shape = tuple(x.shape) if per_sample else tuple(self.rhos.shape)
        eps = standard_laplace(shape, device_generator(gen, x.device), x.device, x.dtype)
        return x + self.locs + self.scales() * eps

    def aux_loss(self) -> Tensor:
        """``−log(mean scale)`` (TFace ``aux_loss``), as ``−(logsumexp(log s) − log n)``."""
        log_s = self.log_scales().flatten()
        return -(torch.logsumexp(log_s, 0) - math.log(log_s.numel()))


class LaggedAdam:
    """Adam for the noise parameters beside the harness's SGD loop (which owns the recognizer's
    parameters only): each step's update is applied when the next step's loss is computed (and
    once after the loop, :meth:`flush`) — the same updates as stepping right after the backward
    pass, since nothing reads the noise in between. The learning rate follows the recognizer's
    schedule (TFace: ``adjust_lr`` of ``LRS_NOISE`` at the recognizer's ``STAGES``)."""

    def __init__(self, params: list[nn.Parameter], lr: float, cfg: RecognizerConfig,
                 steps_per_epoch: int) -> None:
        self.params, self.lr, self.cfg = params, lr, cfg
        self.steps_per_epoch = steps_per_epoch
        self.opt = torch.optim.Adam(params, lr=lr)
        self.steps = 0

    def flush(self) -> None:
        if all(p.grad is None for p in self.params):
            return
        from bench.recognition import lr_at

        epoch = self.steps // self.steps_per_epoch
        for group in self.opt.param_groups:
            group["lr"] = self.lr * lr_at(self.cfg, epoch) / self.cfg.lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1


class DctdpRecognizer(nn.Module):
    """Training-time wrapper: images → ``X + noise`` (trainable) → recognizer; loss = ArcFace +
    ``aux_weight``·(−log mean scale). ``forward`` gives embeddings (the precise-BN pass)."""

    def __init__(self, defense: "Dctdp", recognizer: nn.Module, gen: torch.Generator,
                 side: LaggedAdam) -> None:
        super().__init__()
        self.recognizer, self.noise = recognizer, defense.noise
        self.defense, self.gen, self.side = defense, gen, side

    @property
    def head(self) -> nn.Module:
        return self.recognizer.head

    def forward(self, x: Tensor) -> Tensor:
        return self.recognizer(self.defense.encode(x, self.gen))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        self.side.flush()  # the previous step's noise update (LaggedAdam)
        r = self.defense.noisy(x, self.gen, grad=True)
        loss = self.recognizer.loss(r, y)
        if self.defense.options.aux_weight:
            loss = loss + self.defense.options.aux_weight * self.noise.aux_loss()
        return loss


@dataclass
class DctdpOptions:
    budget_mean: float = 4.0  # [CODE NoisyActivation budget_mean]
    sensitivity: float = 1.0  # [CODE NoisyActivation: ones]
    aux_weight: float = 1.0  # −log(mean scale) weight [ASSUMP; TFace's train.py: 0]
    noise_lr: float = 0.1  # Adam [CODE train.yaml LRS_NOISE]
    noise_draw: str = "per_sample"  # per_sample [ASSUMP] | per_batch (TFace)
    log_scale_max: float = 30.0  # [ASSUMP] overflow guard on log scale
    standardize: bool = False  # per-channel standardisation after the noise [ASSUMP]; TFace: raw
    upsample: bool = True  # ×8 bilinear upsampling before the BDCT (§0.1 v2: every preset)
    backbone: str = ""  # "" = recognizer.backbone; TFace: IR-50 (paper preset)

    def validate(self) -> None:
        if not self.budget_mean > 0 or not self.sensitivity > 0:
            raise ConfigError(f"dctdp budget_mean and sensitivity must be > 0, got "
                              f"{self.budget_mean}, {self.sensitivity}")
        if not self.aux_weight >= 0 or not self.noise_lr > 0:
            raise ConfigError(f"dctdp aux_weight must be >= 0 and noise_lr > 0, got "
                              f"{self.aux_weight}, {self.noise_lr}")
        if self.noise_draw not in NOISE_DRAWS:
            raise ConfigError(f"dctdp noise_draw must be one of {NOISE_DRAWS}, got {self.noise_draw!r}")
        if not self.log_scale_max > 0:
            raise ConfigError(f"dctdp log_scale_max must be > 0, got {self.log_scale_max}")
        check_backbone("dctdp", self.backbone)


def _budget_variants(cls: type) -> type:
    for b in BUDGETS:
        DEFENSES.register("dctdp", variant=f"budget{b:g}", budget_mean=b)(cls)
    return cls


@DEFENSES.register("dctdp")
@_budget_variants
class Dctdp(Defense):
    """DCTDP (ALGORITHMS §13): the 189 AC channels of the ×8-upsampled YCbCr BDCT plus learnable
    Laplace noise (location and per-element budget, ``scale = 1/(softmax(ρ)·B)``), trained jointly
    with the recognizer and an auxiliary −log(mean scale) loss."""

    Options = DctdpOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.noise: LaplaceNoise | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.record: dict[str, Any] = {}
        self.noise_trained = False

    # -- learned parts: statistics and the initial noise model ----------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Clean channel statistics and the noise model at its initial state (loc 0, ρ 0); the
        noise is trained with the recognizer (:meth:`train_recognizer`)."""
        o = self.options
        if o.standardize:  # on the device: the ×8 maps are large
            self.mean, self.std = channel_stats(data.train, lambda x: self.clean(x.to(ctx.device)))
        else:
            self.mean, self.std = torch.zeros(1, COLOURS * AC, 1, 1), torch.ones(1, COLOURS * AC, 1, 1)
        shape = self.representation_shape(tuple(data.train.shape))
        self.noise = LaplaceNoise(shape, o.budget_mean, o.sensitivity, o.log_scale_max)
        self.noise_trained = False

    def clean(self, x: Tensor) -> Tensor:
        """``X``: the 189 AC coefficients (raw, TFace's scale)."""
        return drop_dc(front_end(x, self.options.upsample))

    def noisy(self, x: Tensor, gen: torch.Generator, grad: bool = False) -> Tensor:
        """``X + noise``, standardised; ``grad`` keeps the graph to loc and ρ (training)."""
        if self.noise is None:
            raise TrainingError("dctdp is used before fit()")
        self.noise.to(x.device)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            r = self.noise(self.clean(x), gen, self.options.noise_draw == "per_sample")
        return (r - self.mean.to(x.device)) / self.std.to(x.device)

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.noisy(x, gen).detach()

    def view(self, r: Tensor) -> Tensor | None:
        """§0.1 view: the noisy luma AC channels (de-standardised), DC zero-filled, inverse BDCT
        (shrunk back for ×8 maps), min-max."""
        if r.ndim != 4 or r.shape[1] != COLOURS * AC or self.mean is None:
            return None
        luma = (r.cpu() * self.std + self.mean)[:, :AC]
        return masked_view(luma, removed=(0,), upsampled=self.options.upsample)

    # -- the recognizer, trained with the noise ---------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """The recognizer and the noise together (module docstring, step 3)."""
        from bench.recognition import Recognizer, build_seeded

        if self.noise is None:
            raise TrainingError("dctdp is used before fit()")
        o, cfg = self.options, ctx.recognizer
        cfg = dataclasses.replace(cfg, backbone=o.backbone or cfg.backbone)
        faces = data.train.relabelled()
        gen = ctx.generator("recognizer", f"recognizer[{self.name}]")
        shape = tuple(self.noise.rhos.shape)
        model = build_seeded(lambda: Recognizer(cfg, shape, faces.num_identities), gen).to(ctx.device)
        self.noise.to(ctx.device).train()
        size = min(cfg.batch_size, len(faces))
        side = LaggedAdam(list(self.noise.parameters()), o.noise_lr, cfg, max(1, len(faces) // size))
        joint = DctdpRecognizer(self, model, ctx.generator("dctdp", "noise"), side)
        with torch.no_grad():
            initial = float(self.noise.scales().mean())
        fit_arcface(joint, lambda idx, flip, x: x, faces.labels, ctx, cfg,
                    desc=f"recognizer[{self.name}]", params=list(model.parameters()),
                    bn_scope=model, faces=faces)
        side.flush()
        self.noise.eval().cpu()
        for p in self.noise.parameters():
            p.requires_grad_(False)
        self.noise_trained = True
        with torch.no_grad():
            scales = self.noise.scales()
        self.record = {"noise_scale_initial": initial, "noise_scale_mean": float(scales.mean()),
                       "noise_scale_median": float(scales.median()),
                       "noise_loc_mean_abs": float(self.noise.locs.abs().mean()),
                       "noise_adam_steps": side.steps}
        return model.eval()

    # -- the threat model -------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """``X + noise`` of the test faces (stolen) and of the auxiliary faces (the attacker's
        pairs), with ``extra["noise_trained"]`` (False when called before
        :meth:`train_recognizer`, e.g. to check shapes: the noise is then the initial one)."""
        gen = ctx.generator("leak", self.name)
        train_inputs = encode_chunks(lambda x: self.encode(x, gen), data.aux.images, ctx.device)
        inputs = encode_chunks(lambda x: self.encode(x, gen), data.test.images, ctx.device)
        return Leak(train_inputs, data.aux.images, inputs, data.test.images, data.test.labels,
                    views=self.view(inputs), extra={"noise_trained": self.noise_trained})

    def mechanism(self) -> dict[str, Any]:
        """The public description of the mechanism (the trained noise is a model part, not a
        secret: no deployment secret, so white- and black-box attackers coincide)."""
        o = self.options
        return {"family": "dctdp", "budget_mean": o.budget_mean, "sensitivity": o.sensitivity,
                "noise_draw": o.noise_draw, "upsample": bool(o.upsample)}

    # -- shapes and models without fitting (``bench.plan``) -------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """189 AC channels at the front end's map size."""
        h, w = image_shape[1:]
        side = (h, w) if self.options.upsample else (h // 8, w // 8)
        return (COLOURS * AC, *side)

    def plan_models(self, image_shape: tuple[int, int, int], recognizer: Any, num_classes: int,
                    n_train: int) -> dict[str, PlannedModel]:
        """The recognizer on 189 channels and the noise parameters (loc, ρ) trained with it."""
        from bench.recognition import Recognizer

        o = self.options
        cfg = dataclasses.replace(recognizer, backbone=o.backbone or recognizer.backbone)
        shape = self.representation_shape(image_shape)
        images = epoch_images(n_train, cfg.batch_size, cfg.epochs)
        noise = LaplaceNoise(shape, o.budget_mean, o.sensitivity, o.log_scale_max)
        return {f"{cfg.backbone} F2": PlannedModel(Recognizer(cfg, shape, num_classes), shape, images),
                "noise loc+rho": PlannedModel(noise, (), images, passes=0.0, evaluated=0.0)}
