"""`advface`: adversarial client features against reconstruction attacks (ALGORITHMS §6, [A]).

1. Split the deployed recognizer F1 into client ``E`` and server ``Ψ``
   (:mod:`defenses.feature_split`, ``split_at``).
2. Shadow model ``S`` (:func:`attacks.decoders.build_decoder`, architecture ``shadow``) trained
   with L1 (Eq. 3) on ``(E(x), x)`` of the *shadow half* of the auxiliary faces; Adam lr 1e-4.
   The attacker's public faces are the other half (:func:`~defenses.feature_split.split_aux`).
3. Adversarial features, per batch of uploaded features ``z`` (Eqs. 4–6):
   ``x_sh = S(z)``; ``z0 = E(x_sh)``; 40 × ``z ← z + clamp(α·sign(∇_z ‖S(z) − x_sh‖₁), −ε, ε)``
   with α = ε = 0.2. ``S``'s BatchNorm uses the current batch's statistics and never updates its
   running statistics [A §4.2]. ``pgd_bound='global'`` [ASSUMP] instead projects onto the
   ε-ball around ``z0`` (Madry PGD).
4. ``mode='online'`` (default): Ψ unchanged, both sides of a verification pair are stored
   adversarial features. ``mode='offline'``: Ψ (with F1's ArcFace head) fine-tuned on the
   adversarial features of the training faces with their identity labels.

[ASSUMP] choices, each an option: ``shadow_epochs`` (the paper's schedule is unknown; our aux
halves are tiny, so more epochs than one pass), ``shadow_width``, the decoder layers
(§7.2), ``pgd_bound``, ``finetune_epochs``/``finetune_lr`` of the offline mode (constant lr, F1's
SGD recipe otherwise), and the shadow reads the *raw* features (no standardisation) so ε is in
feature units. The server perturbs each distinct uploaded face once and stores it
(``store_features``): a face that comes again (verification sets repeat faces) gets its stored
adversarial feature, and the attacker steals exactly what is stored.

Fixed batch composition: ``S`` runs on the statistics of the PGD batch, so a face's adversarial
feature depends on which faces share its batch. The stored features are therefore computed once,
in :meth:`AdvFace.fit`, for every face the deployment serves (the verification faces and their
mirror images, the test faces, and the attacker's public faces under
``attacker_data='protected'``), in batches of ``pgd_batch_size`` [ASSUMP] composed by a permutation
drawn from ``ctx.generator("advface", "pgd-batches")`` over the faces sorted by content digest: a
fixed function of the seed and the data, never of which stage (verification, leak) asked first
or of any other stage's randomness. A face outside that set is perturbed with the other unknown
faces of its call (sorted by digest), not stored, and counted in ``record["unstored_faces"]``.
With ``store_features=False`` every call's distinct faces form its own PGD batch.

Note: with ``pgd_bound='per_step'`` each step is ``clamp(α·sign(g), −ε, ε)``, so ε ≥ α gives
the same features as ε = α. The ε-sweep variants therefore tie α to ε ([ASSUMP]: the only reading
under which Fig. 4's curve can move above ε = 0.20; below it the result is the same as α = 0.2).

Variants: ``advface.offline``; ``advface.shadow_urec`` / ``advface.shadow_transrec`` (shadow ×
attacker transfer, [A] Table 4); ``advface.eps0.00`` … ``advface.eps0.30`` (Fig. 4, α = ε).
Every variant's registry options carry ``mode``, ``shadow`` and ``eps``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.backbones.decoders import DECODERS, build_decoder
from bench.core.context import Context
from bench.core.errors import ConfigError
from bench.core.registry import DEFENSES
from bench.core.training import train_l1_decoder
from bench.data.facedata import FaceData, FaceSet
from defenses.base import ENCODE_BATCH
from defenses.feature_split import FeatureDefense, FeatureOptions, freeze, split_aux
from defenses.training import fit_arcface

MODES = ("online", "offline")
BOUNDS = ("per_step", "global")
EPS_SWEEP = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30)  # [A] Fig. 4


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Run ``net``'s BatchNorm layers on the current batch's statistics without touching their
    running statistics (momentum 0), restoring every module's mode afterwards [A §4.2]."""
    modes = {m: m.training for m in net.modules()}
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    net.eval()
    for bn in norms:
        bn.train()
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, mom in zip(norms, momenta):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode


def adversarial_features(shadow: nn.Module, extractor: nn.Module, z: Tensor, eps: float,
                         alpha: float = 0.2, iterations: int = 40,
                         bound: str = "per_step") -> Tensor:
    """AdvFace's PGD (ALGORITHMS §6, [A] Eqs. 4–6) on a batch of client features ``z``.

    Returns ``z_T`` starting from the shadow feature ``z0 = E(S(z))``; ``S`` runs on batch
    statistics; gradients are taken w.r.t. the features only."""
    if bound not in BOUNDS:
        raise ConfigError(f"pgd_bound must be one of {BOUNDS}, got {bound!r}")
    with torch.enable_grad(), batch_statistics(shadow):
        with torch.no_grad():
            x_sh = shadow(z)
            z0 = extractor(x_sh)
        zt = z0.clone()
        if eps <= 0 or alpha <= 0:
            return zt
        for _ in range(iterations):
            zt.requires_grad_(True)
            loss = F.l1_loss(shadow(zt), x_sh, reduction="sum")
            (grad,) = torch.autograd.grad(loss, zt)
            with torch.no_grad():
                step = alpha * grad.sign()
                if bound == "per_step":
                    zt = zt + step.clamp(-eps, eps)
                else:
                    zt = z0 + (zt + step - z0).clamp(-eps, eps)
        return zt.detach()


@torch.no_grad()
def shadow_l1(shadow: nn.Module, z: Tensor, target: Tensor) -> float:
    """Mean L1 between ``S(z)`` (batch statistics) and ``target``."""
    with batch_statistics(shadow):
        return float(F.l1_loss(shadow(z), target))


@dataclass
class AdvFaceOptions(FeatureOptions):
    mode: str = "online"  # online (Ψ unchanged) | offline (Ψ fine-tuned on adversarial features)
    shadow: str = "resrec"  # resrec | urec | transrec (§7.2 decoders)
    eps: float = 0.2  # [A §5.1.2]
    alpha: float = 0.2  # [A §5.1.2]
    iterations: int = 40  # [A §5.1.2]
    pgd_bound: str = "per_step"  # per_step (literal Eq. 6) | global [ASSUMP]
    shadow_width: int = 64  # [ASSUMP]
    shadow_epochs: int = 100  # [ASSUMP]
    shadow_batch_size: int = 32  # [ASSUMP]
    shadow_lr: float = 1e-4  # [A §5.1.2]
    finetune_epochs: int = 10  # offline mode [ASSUMP]
    finetune_lr: float = 0.01  # offline mode [ASSUMP]
    # [ASSUMP] the server stores one adversarial feature per distinct uploaded face, computed in
    # fit() for every face the deployment serves (fixed batch composition, module docstring):
    # test_encode returns the stored one (verification sets repeat faces; the leak steals what
    # is stored). Costs memory at paper scale; off = each call's faces form their PGD batch.
    store_features: bool = True
    pgd_batch_size: int = 256  # [ASSUMP] faces per PGD batch (S's batch statistics) when storing

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ConfigError(f"advface mode must be one of {MODES}, got {self.mode!r}")
        if self.shadow not in DECODERS:
            raise ConfigError(f"advface shadow must be one of {tuple(DECODERS)}, got {self.shadow!r}")
        if self.pgd_bound not in BOUNDS:
            raise ConfigError(f"advface pgd_bound must be one of {BOUNDS}, got {self.pgd_bound!r}")
        if self.eps < 0 or self.alpha < 0 or self.iterations < 0:
            raise ConfigError("advface eps, alpha and iterations must be >= 0")
        for name in ("shadow_width", "shadow_epochs", "shadow_batch_size", "finetune_epochs",
                     "pgd_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"advface {name} must be >= 1, got {getattr(self, name)}")
        if self.shadow_lr <= 0 or self.finetune_lr <= 0:
            raise ConfigError("advface shadow_lr and finetune_lr must be > 0")


VARIANT_DEFAULTS = {"mode": "online", "shadow": "resrec", "eps": 0.2}


def _variant(variant: str, **options: Any) -> Any:
    return DEFENSES.register("advface", variant=variant, **{**VARIANT_DEFAULTS, **options})


@DEFENSES.register("advface")
@_variant("offline", mode="offline")
@_variant("shadow_urec", shadow="urec")
@_variant("shadow_transrec", shadow="transrec")
@_variant("eps0.00", eps=0.0, alpha=0.0)
@_variant("eps0.05", eps=0.05, alpha=0.05)
@_variant("eps0.10", eps=0.10, alpha=0.10)
@_variant("eps0.15", eps=0.15, alpha=0.15)
@_variant("eps0.20", eps=0.20, alpha=0.20)
@_variant("eps0.25", eps=0.25, alpha=0.25)
@_variant("eps0.30", eps=0.30, alpha=0.30)
class AdvFace(FeatureDefense):
    """AdvFace (ALGORITHMS §6): PGD on client features against a shadow decoder; online (Ψ
    unchanged) or offline (Ψ fine-tuned on adversarial features)."""

    Options = AdvFaceOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.shadow_model: nn.Module | None = None
        self.record: dict[str, Any] = {}
        self.stored: dict[str, Tensor] = {}  # digest of an uploaded face → its stored feature

    # -- learned parts ----------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Split F1 and train the shadow decoder on the shadow half of ``aux`` (Eq. 3)."""
        super().fit(data, ctx)
        o = self.options
        shadow_faces, _ = split_aux(data.aux, ctx.seed)
        x = shadow_faces.images.to(ctx.device)
        z = torch.cat([self.features(c) for c in x.split(ENCODE_BATCH)])
        net, losses = train_l1_decoder(
            "advface-shadow",
            lambda: build_decoder(o.shadow, tuple(z.shape[1:]), tuple(x.shape[1:]), o.shadow_width),
            z, x, epochs=o.shadow_epochs, batch_size=min(o.shadow_batch_size, len(z)),
            lr=o.shadow_lr, ctx=ctx, init_salt=("advface-shadow", o.shadow),
            shuffle=ctx.generator("advface-shadow", "shuffle"), lr_option="shadow_lr")
        self.shadow_model = freeze(net)
        zt = self._pgd(z)
        self.record = {
            "shadow_train_l1": losses.get("l1"),
            "shadow_l1_clean": shadow_l1(self.shadow_model, z, x),  # S(z) vs x
            "shadow_l1_adversarial": shadow_l1(self.shadow_model, zt, x),  # S(z_T) vs x
            "mean_abs_perturbation": float((zt - z).abs().mean()),
            "mean_abs_feature": float(z.abs().mean()),
        }
        self.stored = {}
        if o.store_features:
            self._store_served_faces(data, ctx)
        self.record.update({"stored_faces": len(self.stored), "unstored_faces": 0})

    @staticmethod
    def _digest(x: Tensor) -> list[str]:
        """Content digest of each face (the key of the store)."""
        return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x.detach().cpu().contiguous()]

    def served_faces(self, data: FaceData, ctx: Context) -> list[tuple[Tensor, bool]]:
        """Every face the deployment uploads, as ``(images, mirrored)`` sources: the verification
        faces and their mirror images (:func:`bench.recognition.embed` flips), the test faces the
        attacker steals, and, under ``attacker_data='protected'``, the attacker's public faces
        (its black-box queries)."""
        sources = [(v.images, flip) for v in data.verification for flip in (False, True)]
        sources.append((data.test.images, False))
        if self.options.attacker_data == "protected":
            _, public = split_aux(data.aux, ctx.seed)
            sources.append((public.images, False))
        return sources

    def _store_served_faces(self, data: FaceData, ctx: Context) -> None:
        """The stored adversarial features of :meth:`served_faces`, in PGD batches that are a fixed
        function of the seed and the data: distinct faces sorted by digest, permuted by a generator
        used for nothing else, cut into ``pgd_batch_size`` chunks. Faces are read per chunk (no
        copy of the whole served set)."""
        sources = self.served_faces(data, ctx)

        def face(src: int, i: int) -> Tensor:
            images, flip = sources[src]
            return images[i].flip(-1) if flip else images[i]

        first: dict[str, tuple[int, int]] = {}
        for src, (images, flip) in enumerate(sources):
            for start in range(0, len(images), ENCODE_BATCH):
                chunk = images[start:start + ENCODE_BATCH]
                for j, k in enumerate(self._digest(chunk.flip(-1) if flip else chunk)):
                    first.setdefault(k, (src, start + j))
        keys = sorted(first)
        order = torch.randperm(len(keys), generator=ctx.generator("advface", "pgd-batches")).tolist()
        keys = [keys[i] for i in order]
        for start in range(0, len(keys), self.options.pgd_batch_size):
            chunk = keys[start:start + self.options.pgd_batch_size]
            faces = torch.stack([face(*first[k]) for k in chunk]).to(ctx.device)
            adv = self._pgd(self.features(faces)).cpu()
            self.stored.update(zip(chunk, adv))

    # -- the representation -------------------------------------------------------------------
    def _pgd(self, z: Tensor) -> Tensor:
        o = self.options
        self.shadow_model.to(z.device)
        return adversarial_features(self.shadow_model, self.extractor, z, o.eps, o.alpha,
                                    o.iterations, o.pgd_bound)

    def perturb(self, z: Tensor, gen: torch.Generator) -> Tensor:
        """Adversarial features of the batch; each distinct feature is perturbed once."""
        if self.shadow_model is None:
            raise ConfigError(f"defense {self.name} is used before fit()")
        uniq, inverse = torch.unique(z.flatten(1), dim=0, return_inverse=True)
        if len(uniq) == len(z):
            return self._pgd(z)
        return self._pgd(uniq.view(-1, *z.shape[1:]))[inverse]

    def test_encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The stored adversarial features (computed in :meth:`fit`, fixed batches). Faces the
        store lacks are perturbed together (distinct, sorted by digest), not stored — so what
        any face gets never depends on what was asked before — and counted."""
        if not self.options.store_features:
            return self.encode(x, gen)
        if self.shadow_model is None:
            raise ConfigError(f"defense {self.name} is used before fit()")
        keys = self._digest(x)
        unknown: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self.stored:
                unknown.setdefault(k, i)
        fresh: dict[str, Tensor] = {}
        if unknown:
            order = sorted(unknown)
            adv = self._pgd(self.features(x[[unknown[k] for k in order]])).cpu()
            fresh = dict(zip(order, adv))
            self.record["unstored_faces"] = self.record.get("unstored_faces", 0) + len(order)
        return torch.stack([self.stored[k] if k in self.stored else fresh[k] for k in keys]).to(x.device)

    # -- the recognizer -------------------------------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """Online: Ψ unchanged. Offline: Ψ fine-tuned with F1's ArcFace head on the adversarial
        features of the training faces (and of their mirror images, the flip augmentation)."""
        model = super().train_recognizer(data, ctx)
        if self.options.mode == "online":
            return model
        o = self.options
        if not isinstance(data.train, FaceSet):
            # one stored 64×h×w feature per face ([A] online storage): no streaming can bound that
            raise ConfigError("advface offline mode stores an adversarial feature for every training "
                              "face and needs an in-memory training set; use mode=online on streamed "
                              "sets, or data.limit_identities to train on a subset")
        faces = data.train.relabelled()  # the labels F1 (and its head) was trained with
        gen = ctx.generator("advface", "offline")
        adv = self.encode_all(faces.images.to(ctx.device), gen).cpu()
        adv_flip = self.encode_all(faces.images.flip(-1).to(ctx.device), gen).cpu()
        for p in model.parameters():
            p.requires_grad_(True)
        cfg = dataclasses.replace(ctx.recognizer, epochs=o.finetune_epochs, lr=o.finetune_lr,
                                  milestones=(), warmup_epochs=0)

        def batch(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
            return torch.where(flip[:, None, None, None], adv_flip[idx], adv[idx])

        return fit_arcface(model, batch, faces.labels, ctx, cfg, desc=f"recognizer[{self.name}]")


# The base name carries the variant options too, so every cell records mode/shadow/eps.
DEFENSES.get("advface").options.update(VARIANT_DEFAULTS)
