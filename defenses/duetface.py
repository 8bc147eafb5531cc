"""`duetface`: client/server channel splitting in the frequency domain (ALGORITHMS §5)
[CODE Tencent/TFace:recognition/tasks/duetface/*].

1. YCbCr → BDCT per colour (§0.1) → ``[B, 3·64, h, w]``, channel ``64·colour + 8u + v``.
   Per colour the 10 low-frequency channels ``[0, 1, 2, 3, 4, 5, 8, 9, 16, 24]`` stay on the
   client (30 channels); the other 54 per colour go to the server (162 channels).
2. Client: a MobileFaceNet-style net (:mod:`defenses.mobilefacenet`) on the client channels,
   pre-trained alone with ArcFace, then frozen.
3. Server: timm ResNet (``recognizer.backbone``, stem adapted to 162 channels as every
   frequency-map recognizer here) with a feature-masking interaction after the last block of each
   stage: ``e = Conv1×1(upsample(A_s))`` (``A_s`` the client's stage-s activation, detached),
   ``M = minmax(mean_c(e))`` per sample, ``h = sigmoid(features)``, ``out = h·M·w + h`` with a
   learnable scalar ``w`` initialised to 0.
   **Difference from the public code**: TFace re-creates the 1×1 conv inside ``forward`` (random,
   never trained); here it is a trained module.
4. Threat model: the server (attacker) sees the 162 server channels *and* the client
   activations ``A_1..A_4`` the client sends for the feature masking (ALGORITHMS §5; in TFace the
   client's intermediate feature maps are passed to the server backbone). The leak carries both:
   ``inputs`` / ``train_inputs`` are the server channels (what the decoders and the CGAN are
   trained on, (server channels, image) pairs of the auxiliary faces), and
   ``extra["client_activations"]`` / ``extra["train_client_activations"]`` the four stage
   activations of the frozen client for the same test / auxiliary faces (the server computes
   the auxiliary ones by running the deployed client on its public faces, as any user would).

[ASSUMP] choices, each an option: gray images (``data.channels=1``) are replicated to three
colours (``gray_mode='replicate'``, keeping the 30/162 split; chroma is then constant) or
handled as one colour (``gray_mode='luma'``: 10 client / 54 server channels); coefficients are
standardised per channel with training-set statistics (TFace feeds raw ``255·YCbCr − 128``
coefficients); no face-region (landmark) mask (TFace's optional PFLD landmarks); a mask over a
1×1 map (min = max) is 0; the client net's widths (``client_width``) and epochs
(``client_epochs``, 0 = ``recognizer.epochs``). The image-domain view of the server channels
zero-fills the client channels of Y and inverts the BDCT (§0.1 view).

``test_encode`` returns all standardised channels (server first, then client) so the recognizer
can run both halves; what the attacker gets is only the server part (:meth:`DuetFace.leak`).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import RecognizerConfig
from bench.core.context import Context, seeded
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from bench.recognition import ArcFaceHead, build_backbone, make_neck, verify
from defenses.base import ENCODE_BATCH, Defense
from defenses.bdct import BLOCK, bdct, ibdct, to_ycbcr
from defenses.feature_split import freeze
from defenses.mobilefacenet import ClientRecognizer, MobileFaceNet
from defenses.training import fit_arcface

STATS_MAX_IMAGES = 20_000  # per-channel mean/std settle long before; bounds memory on big sets

CLIENT_FREQS = (0, 1, 2, 3, 4, 5, 8, 9, 16, 24)  # [CODE TFace train.yaml SUB_CHS]
GRAY_MODES = ("replicate", "luma")
N_FREQ = BLOCK * BLOCK


def channel_split(colors: int = 3, client_freqs: tuple[int, ...] = CLIENT_FREQS) -> tuple[list[int], list[int]]:
    """``(server, client)`` channel indices of the ``64·colors`` BDCT channels (colour-major,
    each list in increasing order, as TFace's ``set`` difference)."""
    client = [c * N_FREQ + f for c in range(colors) for f in sorted(client_freqs)]
    server = [i for i in range(colors * N_FREQ) if i not in set(client)]
    return server, client


def ycbcr_bdct(x: Tensor, gray_mode: str = "replicate", upsample: bool = False) -> Tensor:
    """Images ``[B, 1|3, H, W]`` in [0, 1] → per-colour BDCT ``[B, 64·colors, h, w]``."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1) if gray_mode == "replicate" else x
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 image channels, got {x.shape[1]}")
    planes = to_ycbcr(x) if x.shape[1] == 3 else x
    b, c, h, w = planes.shape
    coeff = bdct(planes.reshape(b * c, 1, h, w) - 0.5, upsample=upsample)
    return coeff.reshape(b, c * N_FREQ, *coeff.shape[-2:])


class FeatureMasking(nn.Module):
    """DuetFace's interaction at the end of a server stage (ALGORITHMS §5)."""

    def __init__(self, client_channels: int, server_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(client_channels, server_channels, 1)  # trained (TFace: re-created)
        self.weight = nn.Parameter(torch.tensor(0.0))

    @staticmethod
    def minmax(m: Tensor) -> Tensor:
        lo = m.amin(dim=(1, 2, 3), keepdim=True)
        hi = m.amax(dim=(1, 2, 3), keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-8)

    def forward(self, features: Tensor, activation: Tensor) -> Tensor:
        a = F.interpolate(activation, size=features.shape[-2:], mode="bilinear", align_corners=False)
        mask = self.minmax(self.proj(a).mean(1, keepdim=True))
        h = torch.sigmoid(features)
        return h * mask * self.weight + h


class DuetFaceServer(nn.Module):
    """Server model: adapted-stem timm ResNet with :class:`FeatureMasking` after each stage, the
    Recognizer's BN–Dropout–Flatten–FC–BN neck and an ArcFace head."""

    def __init__(self, cfg: RecognizerConfig, in_shape: tuple[int, int, int],
                 client_channels: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.backbone = build_backbone(cfg, c, min(h, w))
        if not all(hasattr(self.backbone, f"layer{i}") for i in range(1, 5)):
            raise ConfigError("duetface needs a staged server backbone (ir_18, a timm ResNet); "
                              "set defenses.duetface.server_backbone")
        with torch.no_grad():
            self.backbone.eval()
            outs = self._stages(torch.zeros(1, c, h, w))
            self.backbone.train()
        self.masks = nn.ModuleList(FeatureMasking(cc, o.shape[1]) for cc, o in zip(client_channels, outs))
        self.neck = make_neck(self.backbone, tuple(outs[-1].shape[1:]), cfg.embedding_dim, cfg.dropout)
        self.head = ArcFaceHead(cfg.embedding_dim, num_classes, cfg.arcface_s, cfg.arcface_m)

    def _stages(self, x: Tensor, acts: list[Tensor] | None = None) -> list[Tensor]:
        bb = self.backbone
        x = bb.maxpool(bb.act1(bb.bn1(bb.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(bb, f"layer{i + 1}")(x)
            if acts is not None:
                x = self.masks[i](x, acts[i])
            outs.append(x)
        return outs

    def forward(self, r: Tensor, acts: list[Tensor]) -> Tensor:
        x = self._stages(r, acts)[-1]
        return self.neck(self.backbone.forward_head(x))


class DuetFaceRecognizer(nn.Module):
    """Client (frozen) + server; input: :meth:`DuetFace.test_encode`'s channels. Recognizer
    interface (forward → embedding, loss, mixed_loss, head)."""

    def __init__(self, client: ClientRecognizer, server: DuetFaceServer, n_server: int) -> None:
        super().__init__()
        self.client, self.server, self.n_server = freeze(client), server, n_server

    @property
    def head(self) -> ArcFaceHead:
        return self.server.head

    def train(self, mode: bool = True) -> "DuetFaceRecognizer":
        super().train(mode)
        self.client.eval()  # frozen after pre-training [CODE TFace train.py]
        return self

    def forward(self, r: Tensor) -> Tensor:
        with torch.no_grad():
            acts = [a.detach() for a in self.client.net.stages(r[:, self.n_server:])]
        return self.server(r[:, :self.n_server], acts)

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)


@dataclass
class DuetFaceOptions:
    client_freqs: list[int] = field(default_factory=lambda: list(CLIENT_FREQS))
    gray_mode: str = "replicate"  # replicate | luma [ASSUMP]
    upsample: bool = True  # TFace ×8 bilinear upsampling before the BDCT (§0.1 v2: every preset)
    server_backbone: str = ""  # "" = recognizer.backbone; the paper preset: ir_18 (TFace's server)
    client_width: int = 64  # [ASSUMP]
    client_epochs: int = 0  # 0 = recognizer.epochs [ASSUMP]

    def validate(self) -> None:
        if self.gray_mode not in GRAY_MODES:
            raise ConfigError(f"duetface gray_mode must be one of {GRAY_MODES}, got {self.gray_mode!r}")
        bad = [f for f in self.client_freqs if not 0 <= f < N_FREQ]
        if bad or not self.client_freqs or len(set(self.client_freqs)) != len(self.client_freqs):
            raise ConfigError(f"duetface client_freqs must be distinct indices 0..63, got {self.client_freqs}")
        if self.client_width < 1 or self.client_epochs < 0:
            raise ConfigError("duetface client_width must be >= 1 and client_epochs >= 0")


@DEFENSES.register("duetface")
class DuetFace(Defense):
    """DuetFace (ALGORITHMS §5): YCbCr BDCT split into client (low-frequency) and server channels;
    frozen MobileFaceNet client guides the server ResNet by feature masking."""

    Options = DuetFaceOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.colors = 3
        self.server_idx: list[int] = []
        self.client_idx: list[int] = []
        self.record: dict[str, Any] = {}
        self.client: ClientRecognizer | None = None  # the frozen client, once trained

    # -- learned parts: channel statistics --------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        o = self.options
        self.colors = 1 if data.channels == 1 and o.gray_mode == "luma" else 3
        self.server_idx, self.client_idx = channel_split(self.colors, tuple(o.client_freqs))
        # channel statistics from (up to) the first STATS_MAX_IMAGES training faces
        first = torch.arange(min(len(data.train), STATS_MAX_IMAGES))
        coeff = torch.cat([self._bdct(data.train.take(c)) for c in first.split(ENCODE_BATCH)])
        self.mean = coeff.mean(dim=(0, 2, 3), keepdim=True)[:1]
        std = coeff.std(dim=(0, 2, 3), keepdim=True)[:1]
        self.std = torch.where(std > 1e-6, std, torch.ones_like(std))

    def _bdct(self, x: Tensor) -> Tensor:
        return ycbcr_bdct(x, self.options.gray_mode, self.options.upsample)

    @property
    def n_server(self) -> int:
        return len(self.server_idx)

    # -- the representation -------------------------------------------------------------------
    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """All channels, standardised, server channels first then client channels."""
        if self.mean is None:
            raise TrainingError("duetface is used before fit()")
        c = (self._bdct(x) - self.mean.to(x.device)) / self.std.to(x.device)
        return c[:, self.server_idx + self.client_idx]

    def server_channels(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """What the server (the attacker) holds: the standardised server channels."""
        return self.encode(x, gen)[:, :self.n_server]

    def view(self, r: Tensor) -> Tensor | None:
        """Image view of server channels: Y's server channels, client channels zero-filled,
        inverse BDCT (shrunk back to the image side with antialiasing for ×8-upsampled maps),
        per-image min-max (§0.1). None for other inputs."""
        if r.ndim != 4 or r.shape[1] != self.n_server:
            return None
        full = torch.zeros(r.shape[0], self.colors * N_FREQ, *r.shape[-2:], dtype=r.dtype)
        full[:, self.server_idx] = r.cpu()
        full = full * self.std + self.mean
        full[:, self.client_idx] = 0.0
        img = ibdct(full[:, :N_FREQ])
        if self.options.upsample:  # maps of the ×8 image: back to the image side, antialiased
            img = F.interpolate(img, size=r.shape[-2:], mode="bilinear", align_corners=False,
                                antialias=True)
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        return (img - lo) / (hi - lo).clamp_min(1e-8)

    # -- the recognizer -------------------------------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """Pre-train the client alone with ArcFace, freeze it, train the server with it."""
        o = self.options
        faces = data.train.relabelled()
        gen = ctx.generator("duetface", "encode")
        n_server = self.n_server

        def batch(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
            return self.encode(x, gen)  # x: the loop's (flipped) images on the device

        shape = tuple(self.encode(faces.take(torch.arange(2)).to(ctx.device), gen).shape[1:])
        side = min(shape[1:])
        cfg = ctx.recognizer
        with seeded(ctx, "duetface-client"):
            client = ClientRecognizer(
                MobileFaceNet(len(self.client_idx), side, cfg.embedding_dim, o.client_width),
                ArcFaceHead(cfg.embedding_dim, faces.num_identities, cfg.arcface_s, cfg.arcface_m),
            ).to(ctx.device)
        client_cfg = dataclasses.replace(cfg, epochs=o.client_epochs or cfg.epochs)
        fit_arcface(client, lambda idx, flip, x: batch(idx, flip, x)[:, n_server:], faces.labels, ctx,
                    client_cfg, desc=f"client[{self.name}]", faces=faces)
        self.record = {"client_accuracy": {
            v.name: verify(client, v, lambda x, g: self.encode(x, g)[:, n_server:], gen)["accuracy_mean"]
            for v in data.verification}}
        with seeded(ctx, "duetface-server"):
            server_cfg = dataclasses.replace(cfg, backbone=o.server_backbone or cfg.backbone)
            server = DuetFaceServer(server_cfg, (n_server, *shape[1:]), client.net.stage_channels,
                                    faces.num_identities).to(ctx.device)
        model = DuetFaceRecognizer(client, server, n_server)
        self.client = model.client  # frozen: the activations the server receives (leak)
        fit_arcface(model, batch, faces.labels, ctx, cfg, desc=f"recognizer[{self.name}]",
                    params=list(server.parameters()), bn_scope=server, faces=faces)
        return model.eval()

    # -- the threat model -------------------------------------------------------------------------
    @torch.no_grad()
    def client_activations(self, x: Tensor, gen: torch.Generator) -> list[Tensor]:
        """What the client sends the server for images ``x``: the frozen client's four stage
        activations ``A_s`` on the client channels (as :class:`DuetFaceRecognizer` feeds them to
        the feature masking), on the CPU."""
        if getattr(self, "client", None) is None:
            raise TrainingError("duetface: the client is trained in train_recognizer(), which "
                                "must run before the client activations exist")
        client = self.client.eval()
        device = next(client.parameters()).device
        chunks = [client.net.stages(self.encode(c.to(device), gen)[:, self.n_server:])
                  for c in x.split(ENCODE_BATCH)]
        return [torch.cat([ch[s] for ch in chunks]).cpu() for s in range(len(chunks[0]))] \
            if chunks else []

    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """What the server holds: the server channels of the test faces and the client
        activations it received for them (``extra["client_activations"]``, a list of the four
        stage tensors); attacker pairs from the auxiliary faces, with their client activations
        (``extra["train_client_activations"]``). Before :meth:`train_recognizer` there is no
        client: both are None, ``extra["client_activations_missing"]`` says why, and it warns."""
        gen = ctx.generator("leak", self.name)
        enc = lambda x: torch.cat([self.server_channels(c, gen) for c in x.split(ENCODE_BATCH)])  # noqa: E731
        inputs = enc(data.test.images)
        if getattr(self, "client", None) is not None:
            extra: dict[str, Any] = {
                "client_activations": self.client_activations(data.test.images, gen),
                "train_client_activations": self.client_activations(data.aux.images, gen)}
        else:  # only fit() ran (shape planning): said in the leak and in a warning, never silent
            reason = ("duetface leak() before train_recognizer(): the client that produces the "
                      "activations the server receives is not trained yet")
            warnings.warn(reason)
            extra = {"client_activations": None, "train_client_activations": None,
                     "client_activations_missing": reason}
        return Leak(enc(data.aux.images), data.aux.images, inputs, data.test.images,
                    data.test.labels, views=self.view(inputs), extra=extra)

    # -- shapes without fitting (``bench.plan``) ------------------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """All BDCT channels (server, then client), known before the channel statistics."""
        with torch.no_grad():
            return tuple(self._bdct(torch.zeros(1, *image_shape)).shape[1:])

    def leak_shape(self, image_shape: tuple[int, int, int], recognizer: Any = None) -> tuple[int, ...]:
        """The server channels only: what the server (the attacker) holds."""
        c, h, w = self.representation_shape(image_shape)
        server, _ = channel_split(c // N_FREQ, tuple(self.options.client_freqs))
        return (len(server), h, w)
