"""Face recognizers: backbones (:mod:`bench.backbones`), ArcFace heads, the training loop,
embeddings and verification (ALGORITHMS §0.2, §0.3, §8 "Verification accuracy").
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.config import RecognizerConfig
from bench.core.context import Context, global_rng_from
from bench.core.errors import TrainingError
from bench.core.curves import record_epoch, start_curve
from bench.data.facedata import FaceSource, VerificationSet, to_float


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
    """``cfg.backbone`` for ``in_chans`` channels at side ``in_side`` (:mod:`bench.backbones`):
    the papers' IR / Inception nets or a timm ResNet; every frequency or feature map (neither 1
    nor 3 channels) gets a 3×3 stride-1 stem without max-pool, whatever its side (§0.2)."""
    from bench.backbones import build_backbone as build

    return build(cfg.backbone, in_chans, in_side, widths=tuple(cfg.widths))


def make_neck(backbone: nn.Module, feat_shape: tuple[int, int, int], embedding_dim: int,
              dropout: float) -> nn.Module:
    """The backbone's own reference output layer when it defines one (Inception-ResNet-v1's
    pooled head), else the IR output layer BN2d–Dropout–Flatten–FC–BN1d (§0.2)."""
    from bench.backbones import ir_neck

    own = getattr(backbone, "make_neck", None)
    return (own or ir_neck)(embedding_dim, dropout, feat_shape)


class Recognizer(nn.Module):
    """Backbone → its output layer (the IR-SE BN–Dropout–Flatten–FC–BN by default) → ArcFace head.

    GPU-ready by construction (§0.2 paper recipe): ``precision="bf16"`` runs backbone and neck
    under autocast (the ArcFace head, its margin's ``acos`` and the loss stay in fp32);
    ``channels_last`` keeps activations NHWC; ``compile`` wraps the backbone in
    ``torch.compile`` on first use (kept out of the pickled state: stored stages stay portable).
    """

    def __init__(self, cfg: RecognizerConfig, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        c, h, w = in_shape
        self.backbone = build_backbone(cfg, c, min(h, w))
        with torch.no_grad():
            self.backbone.eval()
            out = self.backbone(torch.zeros(1, c, h, w))
            self.backbone.train()
        self.neck = make_neck(self.backbone, tuple(out.shape[1:]), cfg.embedding_dim, cfg.dropout)
        self.head = ArcFaceHead(cfg.embedding_dim, num_classes, cfg.arcface_s, cfg.arcface_m)
        self.precision, self.channels_last, self.compile = cfg.precision, cfg.channels_last, cfg.compile
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self._compiled: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # a compiled graph is process-local
        return state

    def _run_backbone(self, r: Tensor) -> Tensor:
        if not self.compile:
            return self.backbone(r)
        if self._compiled is None:  # not a registered submodule: no duplicate weights in state_dict
            object.__setattr__(self, "_compiled", torch.compile(self.backbone))
        return self._compiled(r)

    def forward(self, r: Tensor) -> Tensor:
        if self.channels_last and r.ndim == 4:
            r = r.contiguous(memory_format=torch.channels_last)
        with autocast(r.device, self.precision):
            f = self.neck(self._run_backbone(r))
        return f.float()

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision == "bf16"`` (CPU and CUDA alike), else off."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


Encoder = Callable[[Tensor, torch.Generator], Tensor]


def _identity_encode(x: Tensor, gen: torch.Generator) -> Tensor:
    return x


def lr_at(cfg: RecognizerConfig, epoch: int) -> float:
    """Step schedule ×0.1 at each milestone, with optional linear warm-up."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


#: ``step_loss(idx, flip, x)`` → the loss on training examples ``idx``, image-flipped where
#: ``flip``; ``x`` is their images (float, on the device, already flipped) when the loop reads a
#: face set for the caller, else None.
StepLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

BN_RECALIBRATION_MAX_IMAGES = 20_000  # precise-BN statistics settle long before this


def epoch_chunks(n: int, batch_size: int, gen: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
    """One epoch's batches: a fresh permutation cut into full batches (the ragged last one is
    dropped: BatchNorm needs > 1 sample) and, for each, which images are flipped."""
    size = min(batch_size, n)
    steps = max(1, n // size)
    order = torch.randperm(n, generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    return ([order[i * size:(i + 1) * size] for i in range(steps)],
            [flips[i * size:(i + 1) * size] for i in range(steps)])


def sgd_epochs(params: list[nn.Parameter], step_loss: StepLoss, n: int, cfg: RecognizerConfig,
               gen: torch.Generator, desc: str, progress: bool, faces: FaceSource | None = None,
               device: torch.device | None = None, workers: int = 0) -> None:
    """The harness's one recognizer training loop: SGD with momentum and weight decay on the step
    schedule, a fresh permutation per epoch, half of each batch flipped, the ragged last batch
    dropped, and a one-line error when the loss stops being finite.

    With ``faces``, the loop reads each batch's images for ``step_loss`` (streamed sets through
    ``workers`` DataLoader processes, pinned and copied without blocking on CUDA). The loss is
    summed on the device and checked once per epoch: no host sync per step.
    """
    device = device or torch.device("cpu")
    with global_rng_from(gen, device):  # dropout masks: a function of ``gen`` alone
        _sgd_epochs(params, step_loss, n, cfg, gen, desc, progress, faces, device, workers)


def _sgd_epochs(params: list[nn.Parameter], step_loss: StepLoss, n: int, cfg: RecognizerConfig,
                gen: torch.Generator, desc: str, progress: bool, faces: FaceSource | None,
                device: torch.device, workers: int) -> None:
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    curve = start_curve(desc, "sgd_epochs")  # the stage's training curves (bench.core.training)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        chunks, flips = epoch_chunks(n, cfg.batch_size, gen)
        images = (faces.batches(chunks, workers, pin=device.type == "cuda") if faces is not None
                  else iter([None] * len(chunks)))
        total = torch.zeros((), device=device)
        for idx, flip, x in zip(chunks, flips, images):
            if x is not None:
                x = flip_where(to_float(x, device), flip)
            loss = step_loss(idx, flip, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        mean = float(total) / len(chunks)
        if not math.isfinite(mean):
            raise TrainingError(f"{desc}: loss became {mean} in epoch {epoch}; "
                                "lower the learning rate (--set recognizer.lr=...)")
        record_epoch(curve, epoch, {"loss": mean})
        bar.set_postfix(loss=f"{mean:.3f}")


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images of ``x`` (N, C, H, W) where ``flip`` is set."""
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def recalibration_batches(faces: FaceSource, size: int, device: torch.device,
                          workers: int = 0) -> Iterator[Tensor]:
    """Unflipped float batches of ``faces`` in order for a precise-BN pass, at most
    :data:`BN_RECALIBRATION_MAX_IMAGES` images (all of a small set)."""
    n = min(len(faces), BN_RECALIBRATION_MAX_IMAGES)
    chunks = list(torch.arange(n).split(size))
    for x in faces.batches(chunks, workers, pin=device.type == "cuda"):
        yield to_float(x, device)


def train_recognizer(faces: FaceSource, ctx: Context, defense: Any = None,
                     desc: str = "recognizer", cfg: RecognizerConfig | None = None) -> Recognizer:
    """Train a recognizer on ``defense``'s representation of ``faces`` (raw images when None).

    Each step reads a batch (streamed sets through DataLoader workers), flips half of it
    horizontally in image space, and asks the defense for the loss (``defense.train_step``) on
    the model's device, so mixing defenses plug in their mixed-label ArcFace and every transform
    (BDCT, masking, mixing, noise) runs batched where the model is.
    """
    cfg = cfg or ctx.recognizer
    faces = faces.relabelled()
    gen = ctx.generator("recognizer", desc)
    encode = defense.encode if defense is not None else _identity_encode
    with torch.no_grad():
        in_shape = tuple(encode(faces.take(torch.arange(2)), torch.Generator().manual_seed(0)).shape[1:])
    model = build_seeded(lambda: Recognizer(cfg, in_shape, faces.num_identities), gen).to(ctx.device)
    labels = faces.labels.to(ctx.device)

    def step_loss(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
        y = labels[idx.to(ctx.device)]
        return defense.train_step(model, x, y, gen) if defense is not None else model.loss(x, y)

    model.train()
    sgd_epochs(list(model.parameters()), step_loss, len(faces), cfg, gen, desc, ctx.progress,
               faces=faces, device=ctx.device, workers=ctx.workers)
    if cfg.bn_recalibration:  # precise BN (why: RecognizerConfig.bn_recalibration)
        test_encode = defense.test_encode if defense is not None else _identity_encode
        size = max(2, min(cfg.batch_size, len(faces)))
        recalibrate_batchnorm(model, (test_encode(x, gen) for x in
                                      recalibration_batches(faces, size, ctx.device, ctx.workers)))
    model.eval()
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor],
                          scope: nn.Module | None = None) -> None:
    """Re-estimate the BatchNorm statistics of ``scope`` (default: all of ``model``) with one pass
    of ``model`` over ``batches`` of test-time inputs ("precise BN"): running averages lag far
    behind the weights on short CPU schedules, and test-time inputs (unmixed) differ from training
    inputs (mixed) for the mixing defenses. The training functions run it when
    ``recognizer.bn_recalibration`` is true (the default). Modules outside ``scope`` (e.g.
    DuetFace's frozen client) stay in eval mode and keep their statistics. Leaves ``model`` in
    eval mode."""
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
        chunk = chunk.to(device, non_blocking=True)
        e = model(encode(chunk, gen).to(device))
        if flip:
            e = e + model(encode(chunk.flip(-1), gen).to(device))
        out.append(F.normalize(e).cpu())
    return torch.cat(out) if out else torch.empty(0, model.head.weight.shape[1])


def verify(model: Recognizer, vset: VerificationSet, encode: Encoder | None = None,
           gen: torch.Generator | None = None) -> dict[str, float]:
    """10-fold verification accuracy (mean ± std), VAL@FAR, the per-pair outcomes and a digest of
    the pairs (two cells judged on the same pairs can be compared pair by pair, ALGORITHMS §12)."""
    from metrics.identity import verification_accuracy

    emb = embed(model, vset.images, encode, gen)
    out = verification_accuracy(emb[0::2], emb[1::2], vset.issame)
    out["pairs_digest"] = tensor_digest(vset.images, torch.as_tensor(vset.issame))
    return out


def build_seeded(build: Callable[[], nn.Module], gen: torch.Generator) -> nn.Module:
    """``build()`` with its weight initialisation drawn from a seed taken from ``gen``.

    Library modules (torch, timm) initialise from the global generator; it is forked and seeded
    for the build (:func:`bench.core.context.global_rng_from`), so the weights depend only on ``gen``
    and no other stage's random state is touched."""
    with global_rng_from(gen):  # modules are built on the CPU
        return build()


def tensor_digest(*tensors: Tensor) -> str:
    """16 hex digits identifying tensors' contents (shape, dtype and values), read in chunks."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        for chunk in t.reshape(-1).split(1 << 22):
            h.update(chunk.numpy().tobytes())
    return h.hexdigest()[:16]


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
