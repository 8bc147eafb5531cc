"""Client/server split of a recognizer, and the base of the feature-domain defenses
(ALGORITHMS §6 "Model split"; AdvFace [A §3.1, Fig. 1]).

A deployed recognizer is cut into a client feature extractor ``E`` (the front layers) and the
server part ``Ψ`` (the rest, its embedding neck and ArcFace head): ``Ψ(E(x)) == model(x)``.
``split_at`` names the last module on the client side of a timm ResNet:

- ``stem`` (default): conv1 / bn1 / act1 / maxpool — "the first convolutional layers", as in
  [A §5.1.2] (FaceNet's first three conv layers); on 64×64 gray faces ``z ∈ R^{64×16×16}``;
- ``layer1`` … ``layer3``: the stem and that many residual stages.

:class:`FeatureDefense` is what every feature defense shares: ``fit`` splits the baseline
recognizer F1 (the "deployed" network), ``encode`` = ``perturb(E(x))``, the recognizer is the
baseline's Ψ unchanged (online-style), and ``leak`` follows [A §3.2]: the attacker steals the
stored features of the test faces and builds its training pairs ``(E(x_pub), x_pub)`` by
black-box queries of ``E`` on a public face set — the half of ``aux`` that the defense's own
shadow data (:func:`split_aux`) does not use.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from bench.core.context import Context, derive_seed
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.data.facedata import FaceData, FaceSet
from bench.recognition import ArcFaceHead
from defenses.base import ENCODE_BATCH, Defense

STEM = ("conv1", "bn1", "act1", "maxpool")
STAGES = ("layer1", "layer2", "layer3", "layer4")
SPLIT_POINTS = ("stem", "layer1", "layer2", "layer3")
ATTACKER_DATA = ("clean", "protected")


class FeatureRecognizer(nn.Module):
    """The server part Ψ: ``body`` (the remaining backbone stages) → neck (BN–Dropout–Flatten–
    FC–BN) → embedding, with the ArcFace ``head``. Same interface as
    :class:`bench.recognition.Recognizer`, on feature inputs."""

    def __init__(self, body: nn.Module, neck: nn.Module, head: ArcFaceHead,
                 in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.body, self.neck, self.head = body, neck, head
        self.in_shape = tuple(in_shape)

    def forward(self, r: Tensor) -> Tensor:
        return self.neck(self.body(r))

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)


def split_recognizer(model: nn.Module, split_at: str = "stem") -> tuple[nn.Sequential, FeatureRecognizer]:
    """Cut a trained :class:`~bench.recognition.Recognizer` (timm ResNet backbone) into
    ``(E, Ψ)`` with ``Ψ(E(x)) == model(x)``. Both are deep copies (``model`` is untouched) in
    the mode ``model`` is in."""
    if split_at not in SPLIT_POINTS:
        raise ConfigError(f"split_at must be one of {SPLIT_POINTS}, got {split_at!r}")
    backbone = model.backbone
    missing = [m for m in (*STEM, *STAGES) if not hasattr(backbone, m)]
    if missing:
        raise ConfigError(f"cannot split backbone {type(backbone).__name__}: it has no {missing} "
                          "(feature defenses need a timm ResNet-family recognizer.backbone)")
    n_client = 0 if split_at == "stem" else STAGES.index(split_at) + 1
    client = [(m, getattr(backbone, m)) for m in (*STEM, *STAGES[:n_client])]
    server: list[tuple[str, nn.Module]] = [(m, getattr(backbone, m)) for m in STAGES[n_client:]]
    server.append(("global_pool", backbone.global_pool))
    if getattr(backbone, "drop_rate", 0.0):
        server.append(("drop", nn.Dropout(float(backbone.drop_rate))))
    server.append(("fc", backbone.fc))
    extractor = nn.Sequential(OrderedDict(client))
    body = nn.Sequential(OrderedDict(server))
    extractor, body = copy.deepcopy(extractor), copy.deepcopy(body)
    c, h, w = model.in_shape
    with torch.no_grad():
        extractor.eval()
        device = next(extractor.parameters()).device
        in_shape = tuple(extractor(torch.zeros(1, c, h, w, device=device)).shape[1:])
    extractor.train(model.training)
    psi = FeatureRecognizer(body, copy.deepcopy(model.neck), copy.deepcopy(model.head), in_shape)
    psi.train(model.training)
    return extractor, psi


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for the parameters (they still pass gradients to inputs)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def split_aux(aux: FaceSet, seed: int) -> tuple[FaceSet, FaceSet]:
    """Split the auxiliary faces into two identity-disjoint halves ``(shadow, public)``: the
    defense's own shadow data and the attacker's public face set (ALGORITHMS §6) [ASSUMP: a
    seeded random half of the identities each; the shadow half gets the extra one if odd]."""
    ids = aux.labels.unique()
    if len(ids) < 2:
        raise TrainingError(f"the aux split has {len(ids)} identity; AdvFace needs two "
                            "(shadow and public halves); enlarge data.split[1]")
    gen = torch.Generator().manual_seed(derive_seed(seed, "aux-halves"))
    ids = ids[torch.randperm(len(ids), generator=gen)]
    half = (len(ids) + 1) // 2
    parts = []
    for group in (ids[:half], ids[half:]):
        mask = torch.isin(aux.labels, group)
        parts.append(FaceSet(aux.images[mask], aux.labels[mask]))
    return parts[0], parts[1]


@dataclass
class FeatureOptions:
    """Options shared by the feature defenses."""

    split_at: str = "stem"  # where E ends (see module docstring)
    # [A §3.2]: the attacker trains on (E(x_pub), x_pub) from black-box queries of E ("clean");
    # "protected" [ASSUMP] lets it simulate the whole defense on its public faces (adaptive).
    attacker_data: str = "clean"

    def validate(self) -> None:
        if self.split_at not in SPLIT_POINTS:
            raise ConfigError(f"split_at must be one of {SPLIT_POINTS}, got {self.split_at!r}")
        if self.attacker_data not in ATTACKER_DATA:
            raise ConfigError(f"attacker_data must be one of {ATTACKER_DATA}, got {self.attacker_data!r}")


class FeatureDefense(Defense):
    """Base of the feature-domain defenses: ``encode(x) = perturb(E(x))`` with ``E`` the client
    part of the baseline recognizer F1; the recognizer is F1's server part Ψ, unchanged."""

    name = "feature"
    domain: ClassVar[Literal["image", "feature"]] = "feature"
    Options = FeatureOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.extractor: nn.Module | None = None
        self.server: FeatureRecognizer | None = None

    # -- learned parts ----------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        if ctx.baseline is None:
            raise TrainingError(f"{self.name} needs the baseline recognizer (ctx.baseline)")
        extractor, server = split_recognizer(ctx.baseline, self.options.split_at)
        self.extractor = freeze(extractor)
        self.server = freeze(server)

    def _need_fit(self) -> None:
        if self.extractor is None:
            raise TrainingError(f"defense {self.name} is used before fit()")

    # -- the representation -------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """The client features ``z = E(x)`` a deployed system uploads."""
        self._need_fit()
        self.extractor.to(x.device)
        return self.extractor(x)

    def perturb(self, z: Tensor, gen: torch.Generator) -> Tensor:
        """What the defense stores instead of ``z``. Default: ``z`` itself."""
        return z

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.perturb(self.features(x), gen)

    def view(self, r: Tensor) -> Tensor | None:
        return None  # feature maps have no image-domain view (S1/S2 are n/a)

    # -- the recognizer -------------------------------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """Online style: the deployed server part Ψ, unchanged."""
        self._need_fit()
        return copy.deepcopy(self.server).to(ctx.device).eval()

    # -- the threat model -------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """[A §3.2]: stolen stored features of the test faces; attacker pairs from black-box
        queries of E on the public half of ``aux`` (or the whole defense, ``attacker_data``)."""
        gen = ctx.generator("leak", self.name)
        _, public = split_aux(data.aux, ctx.seed)
        if self.options.attacker_data == "clean":
            train_inputs = torch.cat([self.features(c.to(ctx.device)).cpu()
                                      for c in public.images.split(ENCODE_BATCH)])
        else:
            train_inputs = self.encode_all(public.images.to(ctx.device), gen, test=True).cpu()
        inputs = self.encode_all(data.test.images.to(ctx.device), gen, test=True).cpu()
        return Leak(train_inputs, public.images, inputs, data.test.images, data.test.labels,
                    views=None, extra={"attacker_data": self.options.attacker_data})

    # -- shapes without fitting (``bench.plan``) ------------------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """The client feature map ``E(x)``: a fresh F1 (``recognizer``, a RecognizerConfig) split
        at ``split_at``; the shape depends on the architecture, not on the trained weights
        (perturbations keep it)."""
        from bench.config import RecognizerConfig
        from bench.recognition import Recognizer

        model = Recognizer(recognizer or RecognizerConfig(), tuple(image_shape), 2)
        extractor, _ = split_recognizer(model.eval(), self.options.split_at)
        with torch.no_grad():
            return tuple(extractor(torch.zeros(1, *image_shape)).shape[1:])
