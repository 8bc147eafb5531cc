"""DP-SGD: the recognizer trained with per-sample clipping and Gaussian noise, privacy accounted by
Opacus's RDP accountant (ALGORITHMS §4.4; beyond the seed papers).

- The recognizer is the baseline architecture with every BatchNorm replaced by GroupNorm
  (``opacus.validators.ModuleValidator.fix``: BatchNorm mixes samples of a batch, so per-sample
  gradients would not bound one person's influence). It is trained on raw images with the
  ArcFace loss; the ArcFace class matrix is trained privately too (its per-sample gradients come
  from Opacus's functorch fallback, so the head is a small leaf module returning cosines and the
  margin is applied outside it).
- Poisson sampling at rate ``batch_size / N``, per-sample clipping to ``max_grad_norm`` (1.0
  `[ASSUMP]`), noise multiplier found for ``target_epsilon`` (8 `[ASSUMP]`) at ``delta`` = 1/N
  over the training epochs (``make_private_with_epsilon``). Noise is drawn from a generator seeded
  by the run (not a secure RNG: a benchmark wants reproducibility; say so before deploying). The
  ε reached, δ, the noise multiplier, the sample rate and the number of steps are in the record of
  every cell of the defense.
- Threat model (§4.4): the protected object is the *training set*. The attacker holds the trained
  model (structure and weights) and inverts it: its pairs are the model's client feature map
  ``E(x)`` (cut at ``split_at``, as the feature defenses cut theirs) of public faces (``aux``) with
  the faces; the stolen inputs are ``E(x)`` of training faces (up to ``max_targets`` of them, whole
  identities first), which are the reconstruction targets: privacy is reported against training
  identities.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.context import Context, global_rng_from
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from defenses.base import ENCODE_BATCH, Defense


class CosineHead(nn.Module):
    """The ArcFace class matrix as a leaf module: normalised features × normalised class centres.
    Shares its ``weight`` with the recognizer's :class:`~bench.recognition.ArcFaceHead`."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, f: Tensor) -> Tensor:
        return F.normalize(f) @ F.normalize(self.weight).T


class CosineNet(nn.Module):
    """Image → class cosines: what Opacus wraps (per-sample gradients of every parameter)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.neck = model.backbone, model.neck
        self.cosine = CosineHead(model.head.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.cosine(self.neck(self.backbone(x)))


class CloneOutput(nn.Module):
    """Identity that copies its input: a hooked layer's output may then be modified in place."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clone()


def detach_inplace(model: nn.Module) -> None:
    """Make ``model`` safe for Opacus's backward hooks, which forbid in-place changes of a hooked
    layer's output: activations stop working in place and every GroupNorm (timm's blocks add the
    shortcut in place onto ``bn2``'s output) is followed by a copy. Same function, same weights."""
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, nn.Sequential(child, CloneOutput()))


@dataclass
class DPSGDOptions:
    target_epsilon: float = 8.0  # ε at δ after training ([ASSUMP] §4.4)
    delta: float = 0.0  # 0 = 1/N, N the number of training images
    max_grad_norm: float = 1.0  # per-sample clipping bound ([ASSUMP] §4.4)
    noise_multiplier: float = 0.0  # > 0: use this σ instead of solving for target_epsilon
    epochs: int = 0  # 0 = recognizer.epochs
    split_at: str = "stem"  # where the attacker cuts the model it holds (as the feature defenses)
    max_targets: int = 400  # training faces the attacker reconstructs (scoring cost)

    def validate(self) -> None:
        if self.target_epsilon <= 0 and self.noise_multiplier <= 0:
            raise ConfigError("dpsgd needs target_epsilon > 0 (or noise_multiplier > 0)")
        if not 0 <= self.delta < 1:
            raise ConfigError(f"dpsgd.delta must lie in [0, 1), got {self.delta}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"dpsgd.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.epochs < 0 or self.max_targets < 1:
            raise ConfigError("dpsgd.epochs must be >= 0 and dpsgd.max_targets >= 1")


def require_opacus() -> Any:
    try:
        import opacus
    except ImportError:
        raise ConfigError("the dpsgd defense needs Opacus: pip install -e '.[dp]'") from None
    return opacus


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of the RDP accountant after ``steps`` Poisson-sampled steps (what the defense reports)."""
    require_opacus()
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


@DEFENSES.register("dpsgd")
class DPSGD(Defense):
    """DP-SGD with Opacus (ALGORITHMS §4.4): see the module docstring."""

    domain: ClassVar[str] = "feature"
    protected: ClassVar[bool] = True
    Options = DPSGDOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options.validate()
        self.extractor: nn.Module | None = None
        self.record: dict[str, Any] = {}

    # -- the recognizer ------------------------------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        require_opacus()
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        from bench.recognition import (Recognizer, build_seeded, flip_where, lr_at,
                                       mixed_arcface_loss)
        from defenses.feature_split import split_recognizer

        cfg, o = ctx.recognizer, self.options
        faces = data.train.relabelled()
        images = faces.take(torch.arange(len(faces)))
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        labels = faces.labels
        n = len(labels)
        delta = o.delta or 1.0 / n
        epochs = o.epochs or cfg.epochs
        gen = ctx.generator("recognizer", self.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure RNG and its own defaults
            model = build_seeded(lambda: ModuleValidator.fix(
                Recognizer(cfg, tuple(images.shape[1:]), faces.num_identities)), gen)
            errors = ModuleValidator.validate(model, strict=False)
            if errors:
                raise ConfigError(f"dpsgd: the recognizer has layers Opacus cannot train: {errors}")
            detach_inplace(model)
            net = CosineNet(model).to(ctx.device)
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                                 batch_size=cfg.batch_size)
            noise_gen = torch.Generator(device=ctx.device).manual_seed(
                int(torch.randint(2**62, (1,), generator=gen)))
            engine = PrivacyEngine(accountant="rdp")
            with global_rng_from(gen, ctx.device):  # Poisson sampling draws from the global RNG
                if o.noise_multiplier > 0:
                    dp_net, dp_opt, dp_loader = engine.make_private(
                        module=net, optimizer=opt, data_loader=loader,
                        noise_multiplier=o.noise_multiplier, max_grad_norm=o.max_grad_norm,
                        noise_generator=noise_gen)
                else:
                    dp_net, dp_opt, dp_loader = engine.make_private_with_epsilon(
                        module=net, optimizer=opt, data_loader=loader,
                        target_epsilon=o.target_epsilon, target_delta=delta, epochs=epochs,
                        max_grad_norm=o.max_grad_norm, noise_generator=noise_gen)
                steps = self._train(dp_net, dp_opt, dp_loader, cfg, epochs, gen, ctx, lr_at,
                                    flip_where, mixed_arcface_loss)
            epsilon = float(engine.get_epsilon(delta))
            dp_net._close()  # hooks and per-sample gradients off: the model pickles and runs plain
        for p in model.parameters():
            p.grad = None
        model = model.cpu().eval()
        self.extractor, _ = split_recognizer(model, o.split_at)
        self.record = {"epsilon": epsilon, "delta": delta, "target_epsilon": o.target_epsilon,
                       "noise_multiplier": float(dp_opt.noise_multiplier),
                       "max_grad_norm": o.max_grad_norm, "sample_rate": cfg.batch_size / n,
                       "steps": steps, "epochs": epochs, "accountant": "rdp",
                       "norm_layers": "GroupNorm (BatchNorm replaced)"}
        return model.to(ctx.device)

    def _train(self, net: nn.Module, opt: Any, loader: Any, cfg: Any, epochs: int,
               gen: torch.Generator, ctx: Context, lr_at: Any, flip_where: Any,
               loss_fn: Any) -> int:
        from tqdm.auto import tqdm

        steps = 0
        for epoch in tqdm(range(epochs), desc=f"recognizer[{self.name}]", disable=not ctx.progress,
                          leave=False):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            total, count = 0.0, 0
            for x, y in loader:
                steps += 1  # an empty Poisson batch is still a step of the accountant
                if len(y) == 0:
                    opt.zero_grad(set_to_none=True)
                    continue
                flip = torch.rand(len(y), generator=gen) < 0.5
                x = flip_where(x.to(ctx.device), flip)
                y = y.to(ctx.device)
                cos = net(x)
                loss = loss_fn(cos, y[None], torch.ones(len(y), 1, device=cos.device),
                               cfg.arcface_s, cfg.arcface_m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + float(loss), count + 1
            if count and not math.isfinite(total / count):
                raise TrainingError(f"dpsgd: loss became {total / count} in epoch {epoch}; lower "
                                    "the learning rate (--set recognizer.lr=...)")
        return steps

    # -- the threat model -----------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        if self.extractor is None:
            raise TrainingError("dpsgd: the recognizer must be trained before its features leak")
        return torch.cat([self.extractor(c) for c in x.split(ENCODE_BATCH)])

    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """§4.4: pairs ``(E(x_pub), x_pub)`` on the public faces; stolen: ``E(x)`` of training
        faces (the reconstruction targets, at most ``max_targets``, whole identities first)."""
        gen = ctx.generator("leak", self.name)
        train = data.train
        order = torch.randperm(train.num_identities, generator=gen)
        ids = train.labels.unique()[order]
        # whole identities in a seeded order until max_targets faces
        picked: list[int] = []
        for ident in ids.tolist():
            members = torch.nonzero(train.labels == ident).flatten().tolist()
            if picked and len(picked) + len(members) > self.options.max_targets:
                break
            picked += members
        idx = torch.tensor(picked[: self.options.max_targets], dtype=torch.long)
        targets = train.take(idx)
        targets = targets.float() / 255 if targets.dtype == torch.uint8 else targets.float()
        labels = train.labels[idx]
        if self.extractor is None:
            raise TrainingError("dpsgd: the recognizer must be trained before its features leak")
        self.extractor.to("cpu")
        return Leak(self.features(data.aux.images), data.aux.images, self.features(targets),
                    targets, labels, views=None,
                    extra={"threat_model": "model holder inverting the DP-trained model (§4.4)"})

    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        return tuple(image_shape)  # the DP recognizer verifies raw images

    def leak_shape(self, image_shape: tuple[int, int, int], recognizer: Any = None) -> tuple[int, ...]:
        from bench.config import RecognizerConfig
        from bench.recognition import Recognizer
        from defenses.feature_split import split_recognizer

        model = Recognizer(recognizer or RecognizerConfig(), tuple(image_shape), 2)
        extractor, _ = split_recognizer(model.eval(), self.options.split_at)
        with torch.no_grad():
            return tuple(extractor(torch.zeros(1, *image_shape)).shape[1:])
