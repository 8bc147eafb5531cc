"""Face recognizers: timm backbones with an adapted stem, ArcFace heads, training, embeddings and
verification (ALGORITHMS §0.2, §0.3, §8 "Verification accuracy").
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.config import RecognizerConfig
from bench.context import Context
from bench.data.facedata import FaceSet, VerificationSet
from bench.errors import ConfigError, TrainingError

FREQ_MAP_MAX_SIDE = 16  # inputs this small are frequency/feature maps: 3×3 stride-1 stem, no pool


def mixed_arcface_logits(cos: Tensor, gt: Tensor, co: Tensor, s: float, m: float) -> Tensor:
    """Margin-adjusted, scaled logits for k label slots (ALGORITHMS §0.3).

    ``cos [B, n]``, ``gt [k, B]`` labels per slot, ``co [B, k]`` coefficients (rows sum to 1).
    """
    logits = cos.clone()
    n = cos.shape[1]
    for i in range(gt.shape[0]):
        t = cos.gather(1, gt[i][:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        delta = torch.cos(torch.acos(t) + m) - t
        logits = logits + co[:, i : i + 1] * F.one_hot(gt[i], n).to(cos) * delta
    return logits * s


def mixed_arcface_loss(cos: Tensor, gt: Tensor, co: Tensor, s: float, m: float) -> Tensor:
    """Soft-label cross-entropy over the k slots (ALGORITHMS §0.3); k = 1 is plain ArcFace."""
    logp = F.log_softmax(mixed_arcface_logits(cos, gt, co, s, m), dim=1)
    picked = logp.gather(1, gt.T)  # [B, k]
    return -(co * picked).sum(1).mean()


class ArcFaceHead(nn.Module):
    """Class-weight matrix W; returns cosines between normalised features and class centres."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def cosine(self, f: Tensor) -> Tensor:
        return F.normalize(f) @ F.normalize(self.weight).T

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        return self.mixed_loss(f, y[None], torch.ones(len(y), 1, device=f.device))

    def mixed_loss(self, f: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return mixed_arcface_loss(self.cosine(f), gt, co, self.s, self.m)


def build_backbone(cfg: RecognizerConfig, in_chans: int, in_side: int) -> nn.Module:
    """A timm backbone without classifier/pool, its stem adapted to ``in_chans`` and small maps."""
    kwargs: dict[str, Any] = {"in_chans": in_chans, "num_classes": 0, "global_pool": ""}
    if cfg.backbone.startswith(("resnet", "seresnet", "resnext")):
        kwargs["channels"] = tuple(cfg.widths)
    try:
        net = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"recognizer.backbone {cfg.backbone!r} cannot be built: {exc}") from None
    if in_side <= FREQ_MAP_MAX_SIDE and hasattr(net, "conv1"):
        stem_out = net.conv1.out_channels if isinstance(net.conv1, nn.Conv2d) else cfg.widths[0]
        net.conv1 = nn.Conv2d(in_chans, stem_out, 3, 1, 1, bias=False)
        if hasattr(net, "maxpool"):
            net.maxpool = nn.Identity()
    return net


class Recognizer(nn.Module):
    """Backbone → BN–Dropout–Flatten–FC–BN embedding (the IR-SE output layer) → ArcFace head."""

    def __init__(self, cfg: RecognizerConfig, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        c, h, w = in_shape
        self.backbone = build_backbone(cfg, c, min(h, w))
        with torch.no_grad():
            self.backbone.eval()
            out = self.backbone(torch.zeros(1, c, h, w))
            self.backbone.train()
        feat_c, fh, fw = out.shape[1:]
        self.neck = nn.Sequential(
            nn.BatchNorm2d(feat_c), nn.Dropout(cfg.dropout), nn.Flatten(),
            nn.Linear(feat_c * fh * fw, cfg.embedding_dim), nn.BatchNorm1d(cfg.embedding_dim),
        )
        self.head = ArcFaceHead(cfg.embedding_dim, num_classes, cfg.arcface_s, cfg.arcface_m)

    def forward(self, r: Tensor) -> Tensor:
        return self.neck(self.backbone(r))

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)


Encoder = Callable[[Tensor, torch.Generator], Tensor]


def _identity_encode(x: Tensor, gen: torch.Generator) -> Tensor:
    return x


def lr_at(cfg: RecognizerConfig, epoch: int) -> float:
    """Step schedule ×0.1 at each milestone, with optional linear warm-up."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


#: ``step_loss(idx, flip)`` → the loss on training examples ``idx``, image-flipped where ``flip``.
StepLoss = Callable[[Tensor, Tensor], Tensor]


def sgd_epochs(params: list[nn.Parameter], step_loss: StepLoss, n: int, cfg: RecognizerConfig,
               gen: torch.Generator, desc: str, progress: bool) -> None:
    """The harness's one recognizer training loop: SGD with momentum and weight decay on the step
    schedule, a fresh permutation per epoch, half of each batch flipped, the ragged last batch
    dropped (BatchNorm needs > 1 sample), and a one-line error when the loss stops being finite."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    size = min(cfg.batch_size, n)
    steps = max(1, n // size)
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * size : (step + 1) * size]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            loss = step_loss(idx, flip)
            if not torch.isfinite(loss):
                raise TrainingError(f"{desc}: loss became {loss.item()} at epoch {epoch}; "
                                    "lower the learning rate (--set recognizer.lr=...)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        bar.set_postfix(loss=f"{total / steps:.3f}")


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images of ``x`` (N, C, H, W) where ``flip`` is set."""
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def train_recognizer(faces: FaceSet, ctx: Context, defense: Any = None,
                     desc: str = "recognizer", cfg: RecognizerConfig | None = None) -> Recognizer:
    """Train a recognizer on ``defense``'s representation of ``faces`` (raw images when None).

    Each step draws a batch, flips half of it horizontally in image space, and asks the defense for
    the loss (``defense.train_step``), so mixing defenses plug in their mixed-label ArcFace.
    """
    cfg = cfg or ctx.recognizer
    faces = faces.relabelled()
    gen = ctx.generator("recognizer", desc)
    encode = defense.encode if defense is not None else _identity_encode
    with torch.no_grad():
        in_shape = tuple(encode(faces.images[:2], torch.Generator().manual_seed(0)).shape[1:])
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))  # weight init only
    model = Recognizer(cfg, in_shape, faces.num_identities).to(ctx.device)

    def step_loss(idx: Tensor, flip: Tensor) -> Tensor:
        x = flip_where(faces.images[idx], flip).to(ctx.device)
        y = faces.labels[idx].to(ctx.device)
        return defense.train_step(model, x, y, gen) if defense is not None else model.loss(x, y)

    model.train()
    sgd_epochs(list(model.parameters()), step_loss, len(faces), cfg, gen, desc, ctx.progress)
    test_encode = defense.test_encode if defense is not None else _identity_encode
    size = max(2, min(cfg.batch_size, len(faces)))
    recalibrate_batchnorm(model, (test_encode(c.to(ctx.device), gen) for c in faces.images.split(size)))
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor],
                          scope: nn.Module | None = None) -> None:
    """Re-estimate the BatchNorm statistics of ``scope`` (default: all of ``model``) with one pass
    of ``model`` over ``batches`` of test-time inputs ("precise BN"): running averages lag far
    behind the weights on short CPU schedules, and test-time inputs (unmixed) differ from training
    inputs (mixed) for the mixing defenses. Modules outside ``scope`` (e.g. DuetFace's frozen
    client) stay in eval mode and keep their statistics. Leaves ``model`` in eval mode."""
    norms = [m for m in (scope or model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not norms:
        return
    device = next(model.parameters()).device
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    for chunk in batches:
        if len(chunk) > 1:
            model(chunk.to(device))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


@torch.no_grad()
def embed(model: Recognizer, images: Tensor, encode: Encoder | None = None,
          gen: torch.Generator | None = None, batch: int = 256, flip: bool = True) -> Tensor:
    """Unit embeddings ``normalize(emb(T(x)) + emb(T(flip(x))))`` (flip in image space, before T)."""
    encode = encode or _identity_encode
    gen = gen or torch.Generator().manual_seed(0)
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch):
        chunk = chunk.to(device)
        e = model(encode(chunk, gen).to(device))
        if flip:
            e = e + model(encode(chunk.flip(-1), gen).to(device))
        out.append(F.normalize(e).cpu())
    return torch.cat(out) if out else torch.empty(0, model.head.weight.shape[1])


def verify(model: Recognizer, vset: VerificationSet, encode: Encoder | None = None,
           gen: torch.Generator | None = None) -> dict[str, float]:
    """10-fold verification accuracy (mean ± std) and VAL@FAR on one verification set."""
    from metrics.identity import verification_accuracy

    emb = embed(model, vset.images, encode, gen)
    return verification_accuracy(emb[0::2], emb[1::2], vset.issame)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
