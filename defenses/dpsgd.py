"""DP-SGD: the recognizer trained with clipped gradients and Gaussian noise, privacy accounted by
Opacus's RDP accountant (ALGORITHMS §4.4; beyond the seed papers), at the level of an image or of
an identity (issue 20).

- The recognizer is the baseline architecture with every BatchNorm replaced by GroupNorm
  (``opacus.validators.ModuleValidator.fix``: BatchNorm mixes samples of a batch, so per-sample
  gradients would not bound one person's influence). It is trained on raw images with the
  ArcFace loss; the ArcFace class matrix is trained privately too (its per-sample gradients come
  from Opacus's functorch fallback, so the head is a small leaf module returning cosines and the
  margin is applied outside it).
- ``level="image"`` (variant ``dpsgd``, §4.4 as written): Opacus's ``make_private``: Poisson
  sampling of images at the rate Opacus derives from the loader, ``q = 1 / len(loader)`` =
  ``1 / ceil(N / batch_size)`` (not ``batch_size / N``: the record holds the rate the accountant
  used, so ε recomputes from it), per-sample clipping to ``max_grad_norm`` (1.0 `[ASSUMP]`),
  noise ``N(0, σ²C²)`` on the sum, divided by the expected batch. ε bounds what training reveals
  about one *image*; a person with m training images is then protected only by group privacy,
  ``(m·ε, m·e^{(m−1)ε}·δ)`` — recorded as ``person_epsilon`` / ``person_delta`` (δ capped at 1,
  where the bound says nothing; ORL has 10 images per identity).
- ``level="identity"`` (variant ``dpsgd.identity``): the protected unit is a person. Each step
  samples *identities* (Poisson, rate ``q = identities_per_batch / n_identities``; default
  ``identities_per_batch`` = the image level's expected batch in images divided by the mean images
  per identity, so batches hold about as many images) and takes all their training images; the
  per-sample gradients of one identity's images are summed and that sum is clipped to ``C``
  (:func:`identity_clipped_sums`); ``N(0, σ²C²)`` noise is added to the sum over the sampled
  identities, which is divided by the expected number of identities per batch. Adding or removing
  one identity changes the noised sum by at most ``C``: the sampled Gaussian mechanism over
  identities, so the RDP accountant steps once per identity-batch with ``q`` and ε bounds what
  training reveals about a person. ``round(1/q)`` steps make an epoch. An empty batch still adds
  noise (the mechanism's output is always noised) — both levels.
- The relation (tested): the accountant sees only ``(σ, q, steps)``, so for the same noise
  multiplier, sampling rate and steps the two levels report the *same* ε; what differs is the
  unit it protects. Equal ε at the identity level therefore costs utility (the noise is divided
  by about ``batch / m`` identities instead of ``batch`` images), and equal σ at the image level
  leaves a person only the group-privacy bound.
- Budget: the noise multiplier is found for ``target_epsilon`` (8 `[ASSUMP]`) at ``delta``
  (0 → 1 / the number of protected units: images or identities) over the planned steps
  (``noise_multiplier`` > 0 fixes σ instead). Noise is drawn from a generator seeded by the run
  (not a secure RNG: a benchmark wants reproducibility; say so before deploying). The record of
  every cell says which unit ε is for: ``dp_level``, ``epsilon``, ``delta``, ``sample_rate``,
  ``noise_multiplier``, ``steps`` (and ``units``, ``expected_batch_units``, the person bound).
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


LEVELS = ("image", "identity")


@dataclass
class DPSGDOptions:
    target_epsilon: float = 8.0  # ε at δ after training ([ASSUMP] §4.4)
    delta: float = 0.0  # 0 = 1/N, N the protected units (training images, or identities)
    max_grad_norm: float = 1.0  # per-sample clipping bound ([ASSUMP] §4.4)
    noise_multiplier: float = 0.0  # > 0: use this σ instead of solving for target_epsilon
    epochs: int = 0  # 0 = recognizer.epochs
    split_at: str = "stem"  # where the attacker cuts the model it holds (as the feature defenses)
    max_targets: int = 400  # training faces the attacker reconstructs (scoring cost)
    level: str = "image"  # image | identity: the unit ε protects (module docstring)
    identities_per_batch: float = 0.0  # identity level: expected identities per batch (0 = auto)

    def validate(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"dpsgd.level must be one of {LEVELS}, got {self.level!r}")
        if self.identities_per_batch < 0:
            raise ConfigError("dpsgd.identities_per_batch must be >= 0 (0 = as many images per "
                              f"batch as the image level), got {self.identities_per_batch}")
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


def identity_clipped_sums(grad_samples: list[Tensor], groups: Tensor, n_groups: int,
                          max_norm: float) -> tuple[list[Tensor], Tensor]:
    """Per-identity clipping (§4.4 at the identity level, issue 20): for each identity ``u`` in
    the batch, ``g_u = Σ_{i: groups[i]=u} ∇ℓ_i`` (the per-sample gradients of its images,
    summed), scaled by ``min(1, C / ‖g_u‖)`` with the L2 norm over *all* parameters together.

    ``grad_samples``: one ``[B, *shape]`` tensor per parameter; ``groups [B]``: each row's
    identity in ``0..n_groups-1``. Returns the clipped per-identity sums (one ``[n_groups, *shape]``
    tensor per parameter; identities absent from the batch are zero rows) and the norms before
    clipping ``[n_groups]``. Each identity's clipped sum has norm ≤ ``max_norm``: adding or
    removing a person moves the sum over identities by at most ``max_norm``."""
    groups = groups.to(grad_samples[0].device)
    sums = [torch.zeros((n_groups,) + tuple(g.shape[1:]), dtype=g.dtype, device=g.device)
            .index_add_(0, groups, g) for g in grad_samples]
    norms = torch.sqrt(sum(s.flatten(1).pow(2).sum(1) for s in sums))
    # the same 1e-6 guard as Opacus's per-sample clipping: a zero sum stays zero
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [s * factor.view((-1,) + (1,) * (s.ndim - 1)) for s in sums], norms


def group_privacy(epsilon: float, delta: float, group: int) -> tuple[float, float]:
    """The standard group-privacy bound of (ε, δ)-DP for groups of ``group`` units:
    ``(k·ε, k·e^{(k−1)ε}·δ)``, δ capped at 1 (where it is 1 the bound guarantees nothing)."""
    k = max(1, int(group))
    if k == 1 or delta <= 0:
        return k * epsilon, float(delta) if k == 1 else 0.0
    log_delta = math.log(k) + (k - 1) * epsilon + math.log(delta)
    return k * epsilon, 1.0 if log_delta >= 0 else math.exp(log_delta)


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float,
                         steps: int) -> float:
    """σ for which the RDP accountant reaches ``target_epsilon`` at ``delta`` after ``steps``
    Poisson-sampled steps at ``sample_rate`` (Opacus's search, tolerance 0.01)."""
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant="rdp"))
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise ConfigError(f"dpsgd: no noise multiplier reaches target_epsilon={target_epsilon} at "
                          f"delta={delta:.3g} over {steps} steps ({e}); raise target_epsilon") from None


@DEFENSES.register("dpsgd")
@DEFENSES.register("dpsgd", variant="identity", level="identity")
class DPSGD(Defense):
    """DP-SGD with Opacus (ALGORITHMS §4.4) at the image or identity level: see the module
    docstring."""

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
        from opacus.validators import ModuleValidator

        from bench.recognition import Recognizer, build_seeded
        from defenses.feature_split import split_recognizer

        cfg, o = ctx.recognizer, self.options
        faces = data.train.relabelled()
        images = faces.take(torch.arange(len(faces)))
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        labels = faces.labels
        n, n_ids = len(labels), faces.num_identities
        units = n if o.level == "image" else n_ids
        delta = o.delta or 1.0 / units
        epochs = o.epochs or cfg.epochs
        if o.level == "identity":  # bad input fails here, before any training
            self._identity_rate(cfg, n, n_ids)
        gen = ctx.generator("recognizer", self.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure RNG and its own defaults
            model = build_seeded(lambda: ModuleValidator.fix(
                Recognizer(cfg, tuple(images.shape[1:]), n_ids)), gen)
            errors = ModuleValidator.validate(model, strict=False)
            if errors:
                raise ConfigError(f"dpsgd: the recognizer has layers Opacus cannot train: {errors}")
            detach_inplace(model)
            net = CosineNet(model).to(ctx.device)
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            noise_gen = torch.Generator(device=ctx.device).manual_seed(
                int(torch.randint(2**62, (1,), generator=gen)))
            train = self._train_images if o.level == "image" else self._train_identities
            budget = train(net, opt, images, labels, cfg, epochs, delta, gen, noise_gen, ctx)
        for p in model.parameters():
            p.grad = None
        model = model.cpu().eval()
        self.extractor, _ = split_recognizer(model, o.split_at)
        per_identity = torch.bincount(labels)
        person_eps, person_delta = ((budget["epsilon"], delta) if o.level == "identity" else
                                    group_privacy(budget["epsilon"], delta, int(per_identity.max())))
        self.record = {"dp_level": o.level, **budget, "delta": delta,
                       "target_epsilon": o.target_epsilon, "max_grad_norm": o.max_grad_norm,
                       "epochs": epochs, "accountant": "rdp", "units": units,
                       "max_images_per_identity": int(per_identity.max()),
                       "person_epsilon": person_eps, "person_delta": person_delta,
                       "norm_layers": "GroupNorm (BatchNorm replaced)"}
        return model.to(ctx.device)

    def _identity_rate(self, cfg: Any, n: int, n_ids: int) -> float:
        """``q`` of the identity level: expected identities per batch / identities."""
        # auto: the image level's expected images per batch (all identities when the batch
        # exceeds the training set, as Opacus then samples every image)
        expected = self.options.identities_per_batch or min(n_ids, cfg.batch_size * n_ids / n)
        if not 0 < expected <= n_ids:
            raise ConfigError(f"dpsgd.identities_per_batch must lie in (0, {n_ids}] (the training "
                              f"identities), got {expected:g}")
        return expected / n_ids

    def _sigma(self, q: float, steps: int, delta: float) -> float:
        o = self.options
        return o.noise_multiplier if o.noise_multiplier > 0 else noise_multiplier_for(
            o.target_epsilon, delta, q, steps)

    def _train_images(self, net: nn.Module, opt: Any, images: Tensor, labels: Tensor, cfg: Any,
                      epochs: int, delta: float, gen: torch.Generator,
                      noise_gen: torch.Generator, ctx: Context) -> dict[str, Any]:
        """Image level: Opacus's ``make_private`` (Poisson sampling at ``1/len(loader)``,
        per-sample clipping, noise on the sum, accountant per step)."""
        from opacus import PrivacyEngine

        o = self.options
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                             batch_size=cfg.batch_size)
        q = 1.0 / len(loader)  # what Opacus's DPDataLoader and accountant use
        steps_per_epoch = len(loader)  # Opacus's sampler yields int(1/q) batches per epoch
        sigma = self._sigma(q, epochs * steps_per_epoch, delta)
        engine = PrivacyEngine(accountant="rdp")
        with global_rng_from(gen, ctx.device):  # Poisson sampling draws from the global RNG
            dp_net, dp_opt, dp_loader = engine.make_private(
                module=net, optimizer=opt, data_loader=loader, noise_multiplier=sigma,
                max_grad_norm=o.max_grad_norm, noise_generator=noise_gen)
            steps = self._loop(epochs, ctx, opt=dp_opt,
                               batches=lambda: iter(dp_loader),
                               step=lambda x, y: self._image_step(dp_net, dp_opt, x, y, cfg, ctx, gen))
        if abs(dp_loader.sample_rate - q) > 1e-12:
            raise TrainingError(f"dpsgd: Opacus sampled at {dp_loader.sample_rate}, accounted {q}")
        dp_net._close()  # hooks and per-sample gradients off: the model pickles and runs plain
        return {"epsilon": float(engine.get_epsilon(delta)), "noise_multiplier": float(sigma),
                "sample_rate": q, "steps": steps, "expected_batch_units": len(images) * q}

    def _image_step(self, net: nn.Module, opt: Any, x: Tensor, y: Tensor, cfg: Any,
                    ctx: Context, gen: torch.Generator) -> float | None:
        if len(y) == 0:
            # an empty Poisson batch is still a noised step of the mechanism (and of Opacus's
            # accountant, which steps in the optimizer): zero-length per-sample gradients
            opt.zero_grad(set_to_none=True)
            for p in opt.params:
                p.grad_sample = torch.zeros((0,) + tuple(p.shape), device=p.device, dtype=p.dtype)
            opt.step()
            return None
        loss = self._loss(net, x, y, cfg, ctx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    def _train_identities(self, net: nn.Module, opt: Any, images: Tensor, labels: Tensor, cfg: Any,
                          epochs: int, delta: float, gen: torch.Generator,
                          noise_gen: torch.Generator, ctx: Context) -> dict[str, Any]:
        """Identity level: Poisson sampling of identities, per-identity clipping
        (:func:`identity_clipped_sums`), noise on the sum over identities, one accountant step
        per identity-batch with ``q``."""
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant

        o = self.options
        n_ids = int(labels.max()) + 1
        q = self._identity_rate(cfg, len(labels), n_ids)
        steps_per_epoch = max(1, round(1.0 / q))
        sigma = self._sigma(q, epochs * steps_per_epoch, delta)
        expected = q * n_ids
        members = [torch.nonzero(labels == u).flatten() for u in range(n_ids)]
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
        params = [p for p in gsm.parameters() if p.requires_grad]
        accountant = RDPAccountant()

        def batches():
            for _ in range(steps_per_epoch):
                chosen = torch.nonzero(torch.rand(n_ids, generator=gen) < q).flatten()
                idx = (torch.cat([members[u] for u in chosen.tolist()]) if len(chosen)
                       else torch.zeros(0, dtype=torch.long))
                yield images[idx], labels[idx]

        def step(x: Tensor, y: Tensor) -> float | None:
            gsm.zero_grad(set_to_none=True)
            loss = None
            if len(y):
                loss = self._loss(gsm, x, y, cfg, ctx, gen)
                loss.backward()
                _, groups = y.unique(return_inverse=True)
                clipped, _ = identity_clipped_sums([p.grad_sample for p in params], groups,
                                                   int(groups.max()) + 1, o.max_grad_norm)
                summed = [c.sum(0) for c in clipped]
            else:  # nobody sampled: the mechanism still releases noise
                summed = [torch.zeros_like(p) for p in params]
            for p, s in zip(params, summed):
                noise = torch.normal(0.0, sigma * o.max_grad_norm, size=tuple(p.shape),
                                     generator=noise_gen, device=p.device)
                p.grad = ((s + noise) / expected).to(p.dtype)
                p.grad_sample = None
            opt.step()
            accountant.step(noise_multiplier=sigma, sample_rate=q)
            return None if loss is None else float(loss)

        steps = self._loop(epochs, ctx, opt=opt, batches=batches, step=step)
        gsm._close()
        return {"epsilon": float(accountant.get_epsilon(delta)), "noise_multiplier": float(sigma),
                "sample_rate": q, "steps": steps, "expected_batch_units": expected}

    @staticmethod
    def _loss(net: nn.Module, x: Tensor, y: Tensor, cfg: Any, ctx: Context,
              gen: torch.Generator) -> Tensor:
        """ArcFace on a batch, each face flipped with probability 1/2 (the recognizer recipe)."""
        from bench.recognition import flip_where, mixed_arcface_loss

        flip = torch.rand(len(y), generator=gen) < 0.5
        x = flip_where(x.to(ctx.device), flip)
        y = y.to(ctx.device)
        cos = net(x)
        return mixed_arcface_loss(cos, y[None], torch.ones(len(y), 1, device=cos.device),
                                  cfg.arcface_s, cfg.arcface_m)

    def _loop(self, epochs: int, ctx: Context, opt: Any, batches: Any, step: Any) -> int:
        """Epochs of ``step(x, y)`` over ``batches()`` with the recognizer's lr schedule;
        returns the number of steps (every batch, empty ones included, is a step)."""
        from tqdm.auto import tqdm

        from bench.recognition import lr_at

        cfg = ctx.recognizer
        steps = 0
        for epoch in tqdm(range(epochs), desc=f"recognizer[{self.name}]", disable=not ctx.progress,
                          leave=False):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            total, count = 0.0, 0
            for x, y in batches():
                steps += 1
                loss = step(x, y)
                if loss is not None:
                    total, count = total + loss, count + 1
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
