"""`minusface`: MinusFace — trainable feature subtraction in the frequency domain (ALGORITHMS §13)
[PAPER CVPR'24 "Privacy-Preserving Face Recognition Using Trainable Feature Subtraction"]
[CODE Tencent/TFace:recognition/tasks/minusface/minusface.py, utils.py, train.yaml].

1. Front end (:mod:`defenses.tface_dct`): ×8 upsampling, YCbCr, −128, BDCT → ``X`` with 192
   channels (3 colours × 64).
2. Generator ``g`` (:class:`MinusUNet`, TFace's ``UNet(192, 192)``): double conv3×3–ReLU blocks
   (no normalisation), widths w, 2w, 4w, 8w, 16w (w = ``generator_width``, 64 in TFace), 4
   max-pools, ConvT3×3 stride-2 up-steps with skip concatenation, a 1×1 output conv. It
   regenerates ``X``; the residue is ``r = X − g(X)`` (frequency domain).
3. Stage 1 (:meth:`MinusFace.fit`): ``g`` trained jointly with a recognizer on ``r`` (192
   channels; ``backbone``, TFace IR-18): ``gen_weight · L1(x, idct(g(X)))`` (5, on images in
   [−1, 1] as TFace) + ``fr_weight`` · ArcFace (1). One SGD recipe for both (TFace's
   ``get_optimizer`` means the generator to get lr/10, but its branch tests ``'Minusface'``
   while the config says ``'MinusFace'``, so the published runs train both at the same rate —
   this follows the code as it runs). TFace's latent-sparsity loss has weight 0: omitted.
4. Stage 2 (``encode``): ``g`` frozen; each residue's 192 channels are permuted by a fresh random
   permutation per sample and turned by the inverse front end (inverse BDCT, +128, RGB, /255,
   ×1/8, clamp) into an image-shaped ``X_p ∈ R^{3×H×W}``; ``n_duplicate`` independent draws are
   concatenated (3·n channels). A new recognizer (``backbone``; only its input conv adapted, the
   harness's stem rule) is trained on ``X_p`` (:meth:`MinusFace.train_recognizer`).
5. Threat model (§13): the server (attacker) sees ``X_p``. Attacker pairs ``(X_p, face)`` are
   simulated on its auxiliary faces with the deployed (frozen) generator; the permutations are
   drawn per sample, so there is no deployment secret (white- and black-box coincide).

[ASSUMP] choices, each an option: ``g`` works on coefficients standardised per channel with
training statistics and its output is mapped back (``X̂ = μ + σ·g(X̃)``, so ``r = σ·(X̃ − g(X̃))``
in TFace's raw units — a generator without normalisation on raw 255-scale coefficients is
unstable under SGD; ``standardize``); the stage-1 recognizer reads ``r/σ``; ``stage1_epochs``
(0 = ``recognizer.epochs``) and ``lr`` (0 = ``recognizer.lr``; TFace ``LRS`` 0.01: the paper
preset) for both stages; maps whose side is not a multiple of 16 are replicate-padded for the
U-Net and cropped back; gray faces replicated to three colours. The image view (S1/S2) is ``X_p``
itself (its first three channels): the server receives an image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.context import Context, seeded
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.core.training import crop_to, pad_to
from bench.data.facedata import FaceData
from defenses.base import Defense
from defenses.feature_split import freeze
from defenses.tface_dct import (COLOURS, N_FREQ, PlannedModel, as_rgb, channel_stats,
                                check_backbone, encode_chunks, epoch_images, front_end,
                                inverse_front_end)
from defenses.training import fit_arcface

N_CHANNELS = COLOURS * N_FREQ  # 192
LEVELS = 4  # max-pools of the U-Net
CHECK_IMAGES = 256  # training faces the stage-1 record is measured on


def conv_block(cin: int, mid: int, cout: int) -> nn.Sequential:
    """TFace's ``ConvBlock``: conv3×3–ReLU–conv3×3–ReLU (with bias, no normalisation)."""
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(mid, cout, 3, padding=1), nn.ReLU())


class MinusUNet(nn.Module):
    """TFace's MinusFace U-Net generator (module docstring, step 2) for ``channels`` in and out."""

    def __init__(self, channels: int = N_CHANNELS, width: int = 64) -> None:
        super().__init__()
        widths = [width * 2 ** i for i in range(LEVELS + 1)]  # w … 16w
        self.down = nn.ModuleList()
        cin = channels
        for w in widths:
            self.down.append(conv_block(cin, w, w))
            cin = w
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 3, stride=2, padding=1,
                                                    output_padding=1) for i in reversed(range(LEVELS)))
        self.right = nn.ModuleList(conv_block(2 * widths[i], widths[i], widths[i])
                                   for i in reversed(range(LEVELS)))
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        m = 2 ** LEVELS
        h = pad_to(x, (-(-size[0] // m) * m, -(-size[1] // m) * m))
        skips = []
        for i, block in enumerate(self.down):
            h = block(F.max_pool2d(h, 2) if i else h)
            skips.append(h)
        skips.pop()  # the bottleneck
        for up, block in zip(self.ups, self.right):
            h = block(torch.cat([skips.pop(), up(h)], 1))
        return crop_to(self.out(h), size)


class MinusStage1(nn.Module):
    """Stage 1: generator + recognizer on the residue; ``loss`` = 5·L1 + ArcFace (module
    docstring, step 3); ``forward`` gives the recognizer's embeddings (the precise-BN pass)."""

    def __init__(self, defense: "MinusFace", generator: MinusUNet, recognizer: nn.Module) -> None:
        super().__init__()
        self.generator, self.recognizer = generator, recognizer
        self.defense = defense

    @property
    def head(self) -> nn.Module:
        return self.recognizer.head

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(idct(X̂) in [−1, 1], r/σ)`` for images ``x``."""
        xt = self.defense.standardised(x)
        g = self.generator(xt)
        encoded = inverse_front_end(self.defense.destandardised(g), self.defense.options.upsample)
        return encoded * 2 - 1, xt - g

    def forward(self, x: Tensor) -> Tensor:
        return self.recognizer(self.parts(x)[1])

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        encoded, residue = self.parts(x)
        return F.l1_loss(encoded, as_rgb(x) * 2 - 1), self.recognizer.loss(residue, y)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        o = self.defense.options
        l_gen, l_fr = self.losses(x, y)
        return o.gen_weight * l_gen + o.fr_weight * l_fr


@dataclass
class MinusFaceOptions:
    generator_width: int = 64  # [CODE minusface/utils.py UNet]
    gen_weight: float = 5.0  # [CODE MinusLoss weights['gen']]
    fr_weight: float = 1.0  # [CODE MinusLoss weights['fr']]
    n_duplicate: int = 1  # independent X_p draws concatenated [CODE MinusBackbone]
    stage1_epochs: int = 0  # 0 = recognizer.epochs [ASSUMP]
    lr: float = 0.0  # 0 = recognizer.lr, both stages [ASSUMP]; TFace LRS 0.01 (paper preset)
    standardize: bool = True  # generator on standardised coefficients [ASSUMP]
    upsample: bool = True  # ×8 bilinear upsampling before the BDCT (§0.1 v2: every preset)
    backbone: str = ""  # "" = recognizer.backbone; TFace: IR-18 (paper preset), both stages

    def validate(self) -> None:
        if self.generator_width < 1 or self.n_duplicate < 1 or self.stage1_epochs < 0:
            raise ConfigError("minusface generator_width and n_duplicate must be >= 1 and "
                              "stage1_epochs >= 0")
        if not self.gen_weight >= 0 or not self.fr_weight >= 0 or not self.lr >= 0:
            raise ConfigError("minusface gen_weight, fr_weight and lr must be >= 0")
        check_backbone("minusface", self.backbone)


@DEFENSES.register("minusface")
class MinusFace(Defense):
    """MinusFace (ALGORITHMS §13): a U-Net regenerates the 192-channel BDCT; the residue
    ``X − g(X)``, its channels permuted per sample and inverse-BDCT'd to an image-shaped ``X_p``,
    is what the server receives and recognises."""

    Options = MinusFaceOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.generator: MinusUNet | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.record: dict[str, Any] = {}

    # -- coefficients ------------------------------------------------------------------------------
    def coefficients(self, x: Tensor) -> Tensor:
        """``X``: the 192 raw coefficients ``[B, 192, h, w]``."""
        return front_end(x, self.options.upsample).flatten(1, 2)

    def standardised(self, x: Tensor) -> Tensor:
        if self.mean is None:
            raise TrainingError("minusface is used before fit()")
        return (self.coefficients(x) - self.mean.to(x.device)) / self.std.to(x.device)

    def destandardised(self, c: Tensor) -> Tensor:
        return c * self.std.to(c.device) + self.mean.to(c.device)

    def _recognizer_cfg(self, ctx: Context, epochs: int) -> Any:
        o, cfg = self.options, ctx.recognizer
        return dataclasses.replace(cfg, backbone=o.backbone or cfg.backbone, lr=o.lr or cfg.lr,
                                   epochs=epochs or cfg.epochs)

    # -- stage 1 ------------------------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Channel statistics, then stage 1: the generator with a recognizer on the residue."""
        from bench.recognition import Recognizer

        o = self.options
        if o.standardize:  # on the device: the ×8 maps are large
            self.mean, self.std = channel_stats(data.train, lambda x: self.coefficients(x.to(ctx.device)))
        else:
            self.mean, self.std = torch.zeros(1, N_CHANNELS, 1, 1), torch.ones(1, N_CHANNELS, 1, 1)
        faces = data.train.relabelled()
        shape = (N_CHANNELS, *self.map_side(tuple(data.train.shape)))
        cfg = self._recognizer_cfg(ctx, o.stage1_epochs)
        with seeded(ctx, "minusface-stage1"):
            generator = MinusUNet(N_CHANNELS, o.generator_width)
            recognizer = Recognizer(cfg, shape, faces.num_identities)
        stage1 = MinusStage1(self, generator, recognizer).to(ctx.device)
        fit_arcface(stage1, lambda idx, flip, x: x, faces.labels, ctx, cfg,
                    desc=f"stage1[{self.name}]", bn_scope=recognizer, faces=faces)
        self.generator = freeze(generator)
        with torch.no_grad():  # how well g regenerates X, and how much of X the residue keeps
            idx = torch.arange(min(len(faces), CHECK_IMAGES))
            x = faces.take(idx).to(ctx.device)
            l_gen, l_fr = stage1.eval().losses(x, faces.labels[idx].to(ctx.device))
            c = self.coefficients(x)
            r = self.residue(x)
        self.generator.cpu()
        self.record = {"stage1_l1": float(l_gen), "stage1_arcface": float(l_fr),
                       "residue_energy_ratio": float(r.square().mean() / c.square().mean())}

    def map_side(self, image_shape: tuple[int, int, int]) -> tuple[int, int]:
        h, w = image_shape[1:]
        return (h, w) if self.options.upsample else (h // 8, w // 8)

    @torch.no_grad()
    def residue(self, x: Tensor) -> Tensor:
        """``r = X − X̂`` in raw coefficient units ``[B, 192, h, w]`` (frozen generator)."""
        if self.generator is None:
            raise TrainingError("minusface is used before fit() (the generator is trained there)")
        self.generator.to(x.device)
        xt = self.standardised(x)
        return (xt - self.generator(xt)) * self.std.to(x.device)

    # -- stage 2: the representation ------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """``X_p``: per sample, the residue's channels permuted by a fresh random permutation and
        inverse-BDCT'd to an image; ``n_duplicate`` draws concatenated → ``[B, 3·n, H, W]``."""
        r = self.residue(x)
        b, c, h, w = r.shape
        draws = []
        for _ in range(self.options.n_duplicate):
            perms = torch.argsort(torch.rand(b, c, generator=gen), dim=1).to(x.device)
            shuffled = r.gather(1, perms[:, :, None, None].expand(b, c, h, w))
            draws.append(inverse_front_end(shuffled, self.options.upsample))
        return torch.cat(draws, 1)

    def view(self, r: Tensor) -> Tensor | None:
        """``X_p`` is image-shaped: its first draw (three channels) is the view."""
        return r[:, :COLOURS] if r.ndim == 4 and r.shape[1] == COLOURS * self.options.n_duplicate \
            else None

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """Stage 2: a new recognizer trained on ``X_p`` (the frozen generator's residues)."""
        from bench.recognition import train_recognizer

        return train_recognizer(data.train, ctx, defense=self, desc=f"recognizer[{self.name}]",
                                cfg=self._recognizer_cfg(ctx, 0))

    # -- the threat model -------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """``X_p`` of the test faces (stolen) and of the auxiliary faces (the attacker's pairs),
        computed where the generator runs."""
        gen = ctx.generator("leak", self.name)
        train_inputs = encode_chunks(lambda x: self.encode(x, gen), data.aux.images, ctx.device)
        inputs = encode_chunks(lambda x: self.encode(x, gen), data.test.images, ctx.device)
        return Leak(train_inputs, data.aux.images, inputs, data.test.images, data.test.labels,
                    views=self.view(inputs))

    def mechanism(self) -> dict[str, Any]:
        """The public description (the generator is a model part, not a secret; permutations are
        per sample: white- and black-box attackers coincide)."""
        return {"family": "minusface", "n_duplicate": self.options.n_duplicate,
                "upsample": bool(self.options.upsample)}

    # -- shapes and models without fitting (``bench.plan``) -------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """``X_p``: 3·n_duplicate channels at the image side."""
        return (COLOURS * self.options.n_duplicate, *image_shape[1:])

    def plan_models(self, image_shape: tuple[int, int, int], recognizer: Any, num_classes: int,
                    n_train: int) -> dict[str, PlannedModel]:
        """Stage 1 (generator + recognizer on the residue), stage 2 (the frozen generator's forward
        for every image and the recognizer on ``X_p``); transforms are not counted."""
        from bench.recognition import Recognizer

        o = self.options
        cfg1 = dataclasses.replace(recognizer, backbone=o.backbone or recognizer.backbone,
                                   epochs=o.stage1_epochs or recognizer.epochs)
        cfg2 = dataclasses.replace(cfg1, epochs=recognizer.epochs)
        coeff = (N_CHANNELS, *self.map_side(image_shape))
        xp = self.representation_shape(image_shape)
        stage1 = epoch_images(n_train, cfg1.batch_size, cfg1.epochs)
        stage2 = epoch_images(n_train, cfg2.batch_size, cfg2.epochs)
        generator = MinusUNet(N_CHANNELS, o.generator_width)
        return {
            f"generator (w={o.generator_width})": PlannedModel(generator, coeff, stage1,
                                                               stage="defense_fit"),
            f"{cfg1.backbone} stage-1": PlannedModel(Recognizer(cfg1, coeff, num_classes), coeff,
                                                     stage1, stage="defense_fit", evaluated=0.0),
            "generator, frozen (stage 2)": PlannedModel(generator, coeff, stage2, passes=1.0,
                                                        trains=False, evaluated=0.0),
            f"{cfg2.backbone} F2 on X_p": PlannedModel(Recognizer(cfg2, xp, num_classes), xp, stage2),
        }
