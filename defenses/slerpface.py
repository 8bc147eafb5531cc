"""`slerpface`: SlerpFace — face template protection by spherical linear interpolation
(ALGORITHMS §13) [PAPER AAAI'25 "Face Template Protection via Spherical Linear Interpolation"]
[CODE Tencent/TFace:recognition/tasks/slerpface/modules/model.py, extract_template/utils.py,
encrypt_template/enrollment.py, match_template/gen_sim.py].

A template defense after the recognizer (``domain = "feature"``: no image view, S1/S2 n/a).

1. Template (:class:`TemplateNet`): TFace's SlerpFace network puts a group head on the IR body
   output — ``group_cov`` = Conv1×1(C → ``group_size``)–BN–PReLU, summed over the face and its
   mirror image (``gen_group_feature(flip=True)``) — and an xCos attention
   (:class:`XCosAttention`: Conv3×3–BN–PReLU embedding, Conv3×3–BN–PReLU–Conv3×3(→1)–BN–PReLU,
   softmax over the ``L×L`` positions). The template is the ``[group_size, L, L]`` grid: each of
   the ``L·L`` positions is one group of ``group_size`` values (TFace: 16 × 7 × 7). Here the body
   is the baseline recognizer F1's trunk, frozen, up to ``feature_stage`` (``auto`` [ASSUMP]: the
   deepest stage whose map is at least ``min_grid`` wide — layer4's 7×7 for IR-SE-50 at 112 px as
   TFace, layer2's 4×4 for the quick ResNet-18 at 32 px, whose layer4 is 1×1).
   TFace publishes only a checkpoint, not how the heads were trained; here [ASSUMP] they are
   trained on up to ``head_images`` training faces with the xCos objective (Lin et al., 2020): for
   every pair of faces in a batch, the attention-weighted sum of the per-position cosines
   ``Σ_p ½(w_a + w_b)_p · cos(g_a[p], g_b[p])`` regressed (L2) onto the cosine of their F1
   embeddings; Adam, ``head_lr``, ``head_epochs`` (0 = ``recognizer.epochs``).
2. Protection (:func:`protect`, TFace's ``enroll_SlerpFace_attention_group``): per group ``p``,
   the unit group is rotated toward the unit key group by slerp with ``α_p = alpha − w_p``
   (alpha 0.9, TFace's enrollment script); a share of each group is zeroed — ``int(g·d + gap)``
   coordinates on groups whose attention is below the template's median, ``int(g·d − gap)`` on
   the others, ``gap = int(gap_base·d)``, ``d = drop_rate`` 0.5, ``gap_base`` 8 (12 and 4 of 16);
   each group is re-normalised and scaled by its attention ``w_p``.
3. Utility: verification compares two protected templates by cosine (the harness's embedding
   protocol, both faces enrolled with the deployment's key). The flip fusion happens inside the
   template (step 1), so the harness's mirror-image sum is a no-op.
4. Threat model (§13, §14): a thief of the protected template database. The leak's stolen inputs
   are the protected templates ``[group_size, L, L]`` of the test faces; the attacker's pairs are
   (protected template, face) simulated on its auxiliary faces with the deployed template network
   — with the deployment's key (white-box: ``Leak.secrets`` holds the key and the drop orders) or
   with a key of its own (black-box: :meth:`SlerpFace.attacker_copy`, ``Leak.black_box``).

Deployment secret [ASSUMP] (``key_seed``): ONE Gaussian key ``[L·L, group_size]`` and ONE random
drop order per group, so that any two enrolled templates are comparable. TFace's enrollment draws
a fresh key and fresh dropped coordinates (with replacement) for every enrolled template, stores
the key beside it, and its matching script rotates the probe with the gallery's key and copies
the gallery's zero pattern onto it; with one key and nested drop orders (the coordinates dropped
from a high-attention group are the first ``int(g·d − gap)`` of the order, those of a
low-attention group the first ``int(g·d + gap)``), both sides of a comparison are protected the
same way. Counts are exact (TFace draws with replacement, so fewer distinct coordinates go).
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.context import Context, derive_seed, seeded
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.core.training import train_epochs
from bench.data.facedata import FaceData
from defenses.base import Defense
from defenses.feature_split import STAGES, STEM, freeze
from defenses.tface_dct import PlannedModel, encode_chunks

FEATURE_STAGES = ("auto", *STAGES)


def slerp(z1: Tensor, z2: Tensor, alpha: Tensor | float) -> Tensor:
    """Spherical linear interpolation between unit vectors along the last dim:
    ``sin((1−α)θ)/sin θ · z1 + sin(αθ)/sin θ · z2``, ``θ = arccos(z1·z2)`` (TFace ``group_slerp``);
    ``α = 0`` gives ``z1``, ``α = 1`` gives ``z2``. Parallel vectors (θ → 0) take the limit
    ``(1−α)·z1 + α·z2``."""
    alpha = torch.as_tensor(alpha, dtype=z1.dtype, device=z1.device)
    if alpha.ndim:
        alpha = alpha[..., None]
    dot = (z1 * z2).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(dot)
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    a = torch.where(small, 1 - alpha, torch.sin((1 - alpha) * theta) / safe)
    b = torch.where(small, alpha, torch.sin(alpha * theta) / safe)
    return a * z1 + b * z2


def drop_counts(group_size: int, drop_rate: float, gap_base: int) -> tuple[int, int]:
    """Coordinates zeroed per group ``(low-attention, high-attention)``: TFace's
    ``int(g·d + gap)`` and ``int(g·d − gap)`` with ``gap = int(gap_base·d)``, kept in
    ``[0, g − 1]`` (at least one coordinate survives to be re-normalised)."""
    gap = int(gap_base * drop_rate)
    clip = lambda k: max(0, min(group_size - 1, k))  # noqa: E731
    return clip(int(group_size * drop_rate + gap)), clip(int(group_size * drop_rate - gap))


def protect(groups: Tensor, attention: Tensor, key: Tensor, drop_rank: Tensor, alpha: float,
            counts: tuple[int, int]) -> Tensor:
    """SlerpFace enrollment (module docstring, step 2). ``groups [B, g, L, L]``, ``attention
    [B, L·L]`` (sums to 1 per template), ``key [L·L, g]``, ``drop_rank [L·L, g]`` (the position of
    each coordinate in its group's drop order), ``counts`` = :func:`drop_counts` → protected
    ``[B, g, L, L]``."""
    b, g, h, w = groups.shape
    z = F.normalize(groups.flatten(2).transpose(1, 2), dim=-1)  # [B, G, g], group p = position p
    k = F.normalize(key.to(z), dim=-1).expand_as(z)
    s = slerp(z, k, alpha - attention)
    median = torch.quantile(attention, 0.5, dim=1, keepdim=True)  # numpy's median
    low = attention < median
    rank = drop_rank.to(z.device)
    keep = torch.where(low[..., None], rank >= counts[0], rank >= counts[1])
    s = F.normalize(s * keep, dim=-1) * attention[..., None]
    return s.transpose(1, 2).reshape(b, g, h, w)


class XCosAttention(nn.Module):
    """TFace's ``XCosAttention`` (softmax, T = 1) on a ``[B, g, L, L]`` grid → ``[B, L·L]``."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.embedding_net = nn.Sequential(nn.Conv2d(group_size, group_size, 3, padding=1),
                                           nn.BatchNorm2d(group_size), nn.PReLU())
        self.attention = nn.Sequential(nn.Conv2d(group_size, group_size, 3, padding=1),
                                       nn.BatchNorm2d(group_size), nn.PReLU(),
                                       nn.Conv2d(group_size, 1, 3, padding=1),
                                       nn.BatchNorm2d(1), nn.PReLU())

    def forward(self, grid: Tensor) -> Tensor:
        return torch.softmax(self.attention(self.embedding_net(grid)).flatten(1), dim=1)


class TemplateNet(nn.Module):
    """Frozen F1 trunk → group head (flip-summed) and xCos attention (module docstring, step 1)."""

    def __init__(self, trunk: nn.Module, channels: int, group_size: int) -> None:
        super().__init__()
        self.trunk = freeze(trunk)
        self.head = nn.Sequential(nn.Conv2d(channels, group_size, 1), nn.BatchNorm2d(group_size),
                                  nn.PReLU(group_size))
        self.attention = XCosAttention(group_size)

    def train(self, mode: bool = True) -> "TemplateNet":
        super().train(mode)
        self.trunk.eval()  # F1's statistics, frozen
        return self

    def forward(self, x: Tensor, maps: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(groups [B, g, L, L], attention [B, L·L])``; ``maps``: the trunk's maps of ``x``
        and of its mirror image when already computed."""
        if maps is None:
            with torch.no_grad():
                maps = (self.trunk(x), self.trunk(x.flip(-1)))
        groups = self.head(maps[0]) + self.head(maps[1])
        return groups, self.attention(groups)


def trunk_of(model: nn.Module, stage: str) -> nn.Sequential:
    """A copy of ``model.backbone``'s stem and stages up to ``stage`` (timm-ResNet names)."""
    backbone = model.backbone
    n = STAGES.index(stage) + 1
    parts = [(m, getattr(backbone, m)) for m in (*STEM, *STAGES[:n])]
    return copy.deepcopy(nn.Sequential(OrderedDict(parts)))


def stage_shapes(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The per-sample output shape of each stage of ``model.backbone`` for ``image_shape``."""
    backbone = model.backbone
    was = backbone.training
    backbone.eval()
    out: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        x = torch.zeros(1, *image_shape, device=next(backbone.parameters()).device)
        for m in STEM:
            x = getattr(backbone, m)(x)
        for stage in STAGES:
            x = getattr(backbone, stage)(x)
            out[stage] = tuple(x.shape[1:])
    backbone.train(was)
    return out


def resolve_stage(shapes: dict[str, tuple[int, ...]], option: str, min_grid: int) -> str:
    """``feature_stage`` resolved: ``auto`` = the deepest stage whose map side is ≥ ``min_grid``
    (the first stage when none is)."""
    if option != "auto":
        return option
    wide = [s for s in STAGES if min(shapes[s][1:]) >= min_grid]
    return wide[-1] if wide else STAGES[0]


class TemplateMatcher(nn.Module):
    """The SlerpFace "recognizer": protected templates compared by cosine (``forward`` flattens
    them; the harness normalises and compares). Holds the template network (white-box)."""

    def __init__(self, net: TemplateNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, r: Tensor) -> Tensor:
        return r.flatten(1).float()


@dataclass
class SlerpFaceOptions:
    group_size: int = 16  # [CODE encrypt_template.sh --group_size 16]
    alpha: float = 0.9  # [CODE encrypt_template.sh --alpha 0.9]
    drop_rate: float = 0.5  # [CODE encrypt_template.sh --drop_rate 0.5]
    gap_base: int = 8  # [CODE enrollment.py gap_base]
    key_seed: int = 0  # the deployment's secret key and drop orders [ASSUMP: one per deployment]
    feature_stage: str = "auto"  # F1 stage the group head reads [ASSUMP]; TFace: the body output
    min_grid: int = 4  # auto: the deepest stage whose map side is >= this [ASSUMP]
    head_epochs: int = 0  # 0 = recognizer.epochs [ASSUMP]
    head_lr: float = 1e-3  # Adam [ASSUMP]
    head_images: int = 10_000  # training faces the heads see [ASSUMP]

    def validate(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"slerpface group_size must be >= 2, got {self.group_size}")
        if not 0 <= self.drop_rate < 1 or self.gap_base < 0:
            raise ConfigError(f"slerpface drop_rate must be in [0, 1) and gap_base >= 0, got "
                              f"{self.drop_rate}, {self.gap_base}")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"slerpface alpha must be a number, got {self.alpha}")
        if self.feature_stage not in FEATURE_STAGES:
            raise ConfigError(f"slerpface feature_stage must be one of {FEATURE_STAGES}, got "
                              f"{self.feature_stage!r}")
        if self.min_grid < 1 or self.head_epochs < 0 or self.head_images < 2 or not self.head_lr > 0:
            raise ConfigError("slerpface needs min_grid >= 1, head_epochs >= 0, head_images >= 2 "
                              "and head_lr > 0")


@DEFENSES.register("slerpface")
class SlerpFace(Defense):
    """SlerpFace (ALGORITHMS §13): template protection after the recognizer — grouped templates
    slerped toward a secret Gaussian key (α = alpha − attention), attention-weighted dropping,
    per-group re-normalisation and attention scaling; verification on protected templates."""

    domain: ClassVar[Literal["image", "feature"]] = "feature"
    Options = SlerpFaceOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net: TemplateNet | None = None
        self.key: Tensor | None = None
        self.drop_order: Tensor | None = None
        self.stage = ""
        self.record: dict[str, Any] = {}

    # -- learned parts: the template network and the deployment's key ---------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Template heads on F1's frozen trunk (xCos objective), then the key and drop orders."""
        from bench.recognition import embed

        if ctx.baseline is None:
            raise TrainingError("slerpface needs the baseline recognizer (ctx.baseline)")
        o = self.options
        f1 = ctx.baseline.eval()
        shapes = stage_shapes(f1, tuple(data.train.shape))
        self.stage = resolve_stage(shapes, o.feature_stage, o.min_grid)
        channels, side = shapes[self.stage][0], shapes[self.stage][1:]
        with seeded(ctx, "slerpface-heads"):
            net = TemplateNet(trunk_of(f1, self.stage), channels, o.group_size).to(ctx.device)
        pick = ctx.generator("slerpface", "faces")
        chosen = torch.randperm(len(data.train), generator=pick)[:o.head_images]
        images = lambda idx: data.train.take(chosen[idx]).to(ctx.device)  # noqa: E731
        with torch.no_grad():
            target = torch.cat([embed(f1, images(i)).to(ctx.device)
                                for i in torch.arange(len(chosen)).split(256)])
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=o.head_lr)

        def step(idx: Tensor) -> dict[str, Tensor]:
            if len(idx) < 2:  # a ragged last batch of one face has no pair
                return {}
            groups, att = net(images(idx))
            xcos = pair_xcos(groups, att)
            cos = target[idx.to(ctx.device)] @ target[idx.to(ctx.device)].T
            upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
            loss = F.mse_loss(xcos[upper], cos[upper])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"xcos_mse": loss}

        cfg = ctx.recognizer
        net.train()
        with seeded(ctx, "slerpface-train"):
            losses = train_epochs("slerpface-heads", len(chosen), o.head_epochs or cfg.epochs,
                                  max(2, min(cfg.batch_size, len(chosen))), step,
                                  ctx.generator("slerpface", "shuffle"), ctx, lr_option="head_lr")
        self.net = net.eval().cpu()
        for p in self.net.parameters():
            p.requires_grad_(False)
        n_groups = side[0] * side[1]
        key = torch.Generator().manual_seed(derive_seed(o.key_seed, "slerpface-key"))
        self.key, self.drop_order = draw_secrets(n_groups, o.group_size, key)
        self.record = {"feature_stage": self.stage, "groups": n_groups,
                       "template_values": n_groups * o.group_size,
                       "head_xcos_mse": losses.get("xcos_mse")}

    def _need_fit(self) -> None:
        if self.net is None:
            raise TrainingError("slerpface is used before fit()")

    # -- the representation -------------------------------------------------------------------
    @torch.no_grad()
    def templates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Unprotected ``(groups, attention)`` of images ``x``."""
        self._need_fit()
        self.net.to(x.device)
        return self.net(x)

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The protected template ``[B, group_size, L, L]`` (deterministic given the key)."""
        o = self.options
        groups, att = self.templates(x)
        rank = torch.argsort(self.drop_order, dim=1)
        return protect(groups, att, self.key, rank, o.alpha,
                       drop_counts(o.group_size, o.drop_rate, o.gap_base))

    def unprotected(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The template before protection, in the same form (unit groups × attention): what the
        template network alone verifies at (recorded for comparison)."""
        groups, att = self.templates(x)
        z = F.normalize(groups.flatten(2), dim=1) * att[:, None, :]
        return z.view_as(groups)

    def view(self, r: Tensor) -> Tensor | None:
        return None  # templates have no image-domain view (S1/S2 are n/a)

    # -- the recognizer: cosine of protected templates ------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """No training: the matcher compares protected templates by cosine (step 3); records the
        accuracy of the unprotected templates beside it."""
        from bench.recognition import verify

        self._need_fit()
        matcher = TemplateMatcher(self.net).eval()
        gen = ctx.generator("slerpface", "unprotected")
        self.record["unprotected_template_accuracy"] = {
            v.name: verify(matcher, v, self.unprotected, gen)["accuracy_mean"]
            for v in data.verification}
        return matcher

    # -- the threat model -------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """Stolen protected templates of the test faces; (protected template, face) pairs the
        attacker simulates on its auxiliary faces with the deployed template network."""
        gen = ctx.generator("leak", self.name)
        enc = lambda x: self.encode(x, gen)  # noqa: E731
        train_inputs = encode_chunks(enc, data.aux.images, ctx.device)
        inputs = encode_chunks(enc, data.test.images, ctx.device)
        return Leak(train_inputs, data.aux.images, inputs, data.test.images, data.test.labels,
                    views=None, extra={"template_stage": self.stage})

    # -- attacker knowledge (§1 v2) -------------------------------------------------------------------
    def attacker_copy(self, gen: torch.Generator) -> Defense:
        """The deployed template network with a key and drop orders drawn from ``gen``."""
        self._need_fit()
        other = copy.copy(self)
        other.key, other.drop_order = draw_secrets(*self.key.shape, gen)
        return other

    def deployment_secrets(self) -> dict[str, Any]:
        """The key and the drop orders (white-box attackers only)."""
        if self.key is None:
            return {}
        return {"key": self.key.clone(), "drop_order": self.drop_order.clone()}

    def mechanism(self) -> dict[str, Any]:
        """The public description (no key)."""
        o = self.options
        return {"family": "slerpface", "group_size": o.group_size, "alpha": o.alpha,
                "drop_rate": o.drop_rate, "gap_base": o.gap_base, "feature_stage": self.stage}

    # -- shapes without fitting (``bench.plan``) ------------------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """``[group_size, L, L]`` at the resolved stage of a fresh F1 (the shape depends on the
        architecture only)."""
        from bench.config import RecognizerConfig
        from bench.recognition import Recognizer

        model = Recognizer(recognizer or RecognizerConfig(), tuple(image_shape), 2)
        shapes = stage_shapes(model, tuple(image_shape))
        stage = resolve_stage(shapes, self.options.feature_stage, self.options.min_grid)
        return (self.options.group_size, *shapes[stage][1:])

    def plan_models(self, image_shape: tuple[int, int, int], recognizer: Any, num_classes: int,
                    n_train: int) -> dict[str, PlannedModel]:
        """F1's frozen trunk (face and mirror image: 2 forwards per image in training, 4 per
        verified image — the harness embeds the mirror image too), the group head (on both maps)
        and the xCos attention, trained on up to ``head_images`` faces."""
        from bench.recognition import Recognizer

        o = self.options
        f1 = Recognizer(recognizer, tuple(image_shape), num_classes)
        shapes = stage_shapes(f1, tuple(image_shape))
        stage = resolve_stage(shapes, o.feature_stage, o.min_grid)
        net = TemplateNet(trunk_of(f1, stage), shapes[stage][0], o.group_size)
        grid = (o.group_size, *shapes[stage][1:])
        images = min(n_train, o.head_images) * (o.head_epochs or recognizer.epochs)
        return {
            f"F1 trunk to {stage}, frozen": PlannedModel(net.trunk, tuple(image_shape), images,
                                                         passes=2.0, stage="defense_fit",
                                                         trains=False, evaluated=4.0),
            "group head": PlannedModel(net.head, shapes[stage], images, passes=6.0,
                                       stage="defense_fit", evaluated=4.0),
            "xCos attention": PlannedModel(net.attention, grid, images, stage="defense_fit",
                                           evaluated=2.0),
        }


def draw_secrets(n_groups: int, group_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A Gaussian key ``[n_groups, group_size]`` and a random drop order per group."""
    key = torch.randn(n_groups, group_size, generator=gen)
    order = torch.argsort(torch.rand(n_groups, group_size, generator=gen), dim=1)
    return key, order


def pair_xcos(groups: Tensor, attention: Tensor) -> Tensor:
    """xCos of every pair of a batch: ``Σ_p ½(w_a + w_b)_p · cos(g_a[p], g_b[p])`` → ``[B, B]``."""
    z = F.normalize(groups.flatten(2), dim=1)  # [B, g, G]
    cos = torch.einsum("agp,bgp->abp", z, z)
    w = 0.5 * (attention[:, None, :] + attention[None, :, :])
    return (w * cos).sum(-1)
