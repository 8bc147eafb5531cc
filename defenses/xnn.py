"""`xnn` and `xnn_d`: obfuscated token maps of a split ViT recognizer (ALGORITHMS §9, [X]).

Both share a split ViT (:mod:`bench.backbones.vit`): stage 0 trains the whole ViT (client +
tail + ArcFace head) on the clean training faces with the harness's SGD loop (§9: SGD lr 5e-2,
momentum 0.9, warm-up; the harness's step schedule stands in for the cosine [ASSUMP]); the client
front (patch + position embedding + first blocks) is then frozen, as the public code freezes its
pretrained MoCo-v3 front. What leaves the client is its token map ``h [T, d]``, carried as a token
grid ``[B, d, gh, gw]`` so every 2-D decoder attack (§7.1, §7.2) reads it unchanged.

``xnn`` (training-time defense): ``h' = (P h) M`` with ``P`` a secret permutation of the T tokens
and ``M`` a Gaussian ``d × d`` matrix scaled by ``1/√d`` (not trainable). A *fresh* server tail
(same architecture as stage 0's) is trained with ArcFace on ``h'``: attention without position
information is permutation-equivariant and the first linear layers absorb ``M``.
Options: ``permute`` / ``matrix`` (ablation: variants ``xnn.perm_only``, ``xnn.matrix_only``,
``xnn.clean`` = neither, the clean split with a retrained tail), ``key_mode``:

- ``deployment`` (default): one key ``(P, M)`` drawn at fit, used for training and test;
- ``per_batch``: a key drawn per encode call (per client / batch, §9);
- ``per_sample``: a key per face — how a black-box attacker simulates the expectation over keys
  (:meth:`Xnn.attacker_copy`); usable as an ablation.

:meth:`Xnn.unobfuscate` inverts ``h'`` with the key.

``xnn_d`` (inference-time defense): stage 1 = stage 0's tail is the *teacher*; stage 2 trains a
noise generator ``G(h, E_z(z))`` over the frozen client features (``E_z`` a trainable noise
encoder of Gaussian ``z``; the noise is ``noise_scale · std(h) · tanh(·)`` per element [ASSUMP:
the bound]) adversarially: an auxiliary tail minimises the identity cross-entropy on
``h + G(h)`` while ``G`` maximises it (alternating Adam steps [ASSUMP]). The recognizer is a
*student* tail (initialised from the teacher [ASSUMP]) on the noised features, distilled from the
teacher on the clean features: ``α·T²·KL(p_T ‖ p_S) + (1 − α)·ArcFace`` with α = 0.3 (§9;
[ASSUMP] α weights the KL term as in the common PyTorch KD recipe), T = 4 [ASSUMP]; logits are
the heads' scaled cosines. The leak is the noised features.

Threat model (both): the stolen test representations; attacker pairs simulated on the public
half of ``aux`` (:func:`~defenses.feature_split.split_aux`, as the other feature defenses) —
white-box pairs with the deployment's key, black-box pairs with keys drawn per face
(``Leak.black_box``). ``Leak.extra`` also carries what §9's privacy evaluation needs: the
public faces' identity labels and clean client features (black-box queries of the client front),
and an identification probe over the test faces (gallery and query encoded under different keys,
the stolen encodings only). Who the probe's faces are (their test-identity labels) is ground
truth, kept in ``Leak.oracle["identification_probe"]``, which no attacker receives; the
expected-recognition attack is scored with it after it ran (``diagnose``,
:mod:`attacks.xnn_attacks`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.backbones.vit import (ViTRecognizer, ViTServer, ViTSplitConfig, fresh_tail,
                                 grid_to_tokens, tokens_to_grid, vit_split)
from bench.config import RecognizerConfig
from bench.core.context import Context, device_generator
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData, to_float
from bench.recognition import (build_seeded, epoch_chunks, flip_where, recalibrate_batchnorm,
                               recalibration_batches, sgd_epochs, verify)
from defenses.base import ENCODE_BATCH, Defense
from defenses.feature_split import freeze, split_aux
from defenses.training import fit_arcface

KEY_MODES = ("deployment", "per_batch", "per_sample")
PER_SAMPLE_CHUNK = 32  # per-sample keys are [B, d, d]: draw them in chunks (ViT-B: 2.4 MB each)


# -- the obfuscation (pure functions: the defense, the tests and the attacks share them) ---------
def draw_key(tokens: int, dim: int, gen: torch.Generator, permute: bool = True,
             matrix: bool = True, batch: int | None = None) -> dict[str, Tensor | None]:
    """A key ``{"perm": [T] or [B, T], "matrix": [d, d] or [B, d, d]}`` (None for a part that is
    off): a uniform random permutation and a Gaussian matrix scaled by ``1/√d`` (§9)."""
    shape = () if batch is None else (batch,)
    perm = mat = None
    if permute:
        perm = torch.rand(*shape, tokens, generator=gen).argsort(-1)
    if matrix:
        mat = torch.randn(*shape, dim, dim, generator=gen) / math.sqrt(dim)
    return {"perm": perm, "matrix": mat}


def obfuscate(h: Tensor, key: dict[str, Tensor | None]) -> Tensor:
    """``h' = (P h) M`` for tokens ``h [B, T, d]``; a per-sample key has a leading batch dim."""
    perm, mat = key.get("perm"), key.get("matrix")
    if perm is not None:
        perm = perm.to(h.device)
        idx = perm.expand(h.shape[0], -1) if perm.ndim == 1 else perm
        h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[2]))
    if mat is not None:
        h = h @ mat.to(h)
    return h


def unobfuscate(h: Tensor, key: dict[str, Tensor | None]) -> Tensor:
    """The inverse of :func:`obfuscate` with the same key: ``h = P⁻¹ (h' M⁻¹)`` (the solve runs
    in float64 so a moderately ill-conditioned Gaussian ``M`` still inverts to float precision)."""
    perm, mat = key.get("perm"), key.get("matrix")
    if mat is not None:
        m = mat.to(h.device, torch.float64)
        # h M = h'  ⇔  Mᵀ hᵀ = h'ᵀ
        ht = torch.linalg.solve(m.transpose(-1, -2), h.double().transpose(-1, -2))
        h = ht.transpose(-1, -2).to(h.dtype)
    if perm is not None:
        inv = perm.to(h.device).argsort(-1)
        idx = inv.expand(h.shape[0], -1) if inv.ndim == 1 else inv
        h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[2]))
    return h


# -- options ----------------------------------------------------------------------------------
@dataclass
class ViTDefenseOptions:
    """The split ViT (§9) and its training budget; 0 means "the recognizer config's value"."""

    image_size: int = 0  # side the ViT works at (0 = the data's side; else resized in the client)
    patch_size: int = 4  # quick: 32 px / 4 = 8×8 = 64 tokens (§9's 64 tokens without upsampling)
    embed_dim: int = 96  # paper preset: 768 (ViT-B/16)
    num_heads: int = 4  # paper: 12
    client_depth: int = 2  # paper: 5 (the public code's MoCo-v3 front)
    server_depth: int = 2  # paper: 6
    mlp_ratio: float = 2.0  # paper: 4
    vit_epochs: int = 0  # stage 0 (clean ViT); 0 = recognizer.epochs
    tail_epochs: int = 0  # the defense's recognizer tail; 0 = recognizer.epochs
    lr: float = 0.0  # SGD lr of every tail (§9: 5e-2); 0 = recognizer.lr

    def validate(self) -> None:
        for name in ("patch_size", "embed_dim", "num_heads", "server_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("image_size", "client_depth", "vit_epochs", "tail_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr < 0 or self.mlp_ratio <= 0:
            raise ConfigError("lr must be >= 0 and mlp_ratio > 0")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}")
        if self.image_size and self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size "
                              f"{self.patch_size}")


class ViTSplitDefense(Defense):
    """Base of the ViT-split defenses: stage 0 (clean ViT), frozen client, a tail trained on
    ``perturb(E(x))``, the §9 leak. Subclasses define :meth:`perturb`."""

    name = "vit_split"
    domain: ClassVar[Literal["image", "feature"]] = "feature"
    Options = ViTDefenseOptions
    token_map: ClassVar[bool] = True  # the representation is a ViT token grid (attacks check it)
    with_probe: bool = True  # the leak carries the identification probe (not the attacker's copies)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.vit_cfg: ViTSplitConfig | None = None
        self.client: nn.Module | None = None
        self.teacher: ViTServer | None = None
        self.record: dict[str, Any] = {}
        self.embedding_dim = 0

    # -- configuration ---------------------------------------------------------------------------
    def vit_config(self, image_shape: tuple[int, int, int]) -> ViTSplitConfig:
        o = self.options
        c, h, w = image_shape
        side = o.image_size or min(h, w)
        if side % o.patch_size:
            raise ConfigError(f"{self.name}: image side {side} is not a multiple of patch_size "
                              f"{o.patch_size}; set defenses.{self.name.split('.')[0]}.image_size")
        return ViTSplitConfig(img_size=side, patch_size=o.patch_size, in_chans=c,
                              embed_dim=o.embed_dim, num_heads=o.num_heads,
                              client_depth=o.client_depth, server_depth=o.server_depth,
                              mlp_ratio=o.mlp_ratio)

    def _cfg(self, ctx: Context, epochs: int) -> RecognizerConfig:
        base = ctx.recognizer or RecognizerConfig()
        return dataclasses.replace(base, epochs=epochs or base.epochs, lr=self.options.lr or base.lr)

    # -- learned parts ------------------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Stage 0: train the whole split ViT on the clean training faces, freeze its client."""
        faces = data.train.relabelled()
        self.vit_cfg = self.vit_config(tuple(data.train.shape))
        cfg = self._cfg(ctx, self.options.vit_epochs)
        self.embedding_dim = cfg.embedding_dim
        gen = ctx.generator("vit-split", "init")
        model: ViTRecognizer = build_seeded(
            lambda: vit_split(self.vit_cfg, faces.num_identities, cfg.embedding_dim,
                              cfg.arcface_s, cfg.arcface_m), gen).to(ctx.device)
        fit_arcface(model, lambda idx, flip, x: x, faces.labels, ctx, cfg,
                    desc="vit-split", faces=faces)  # one shuffle for every variant: same client
        self.client = freeze(model.client)
        self.teacher = freeze(model.server)
        vgen = ctx.generator("vit-split", "verify")
        self.record["clean_split_accuracy"] = {
            v.name: verify(model, v, None, vgen)["accuracy_mean"] for v in data.verification}

    def _need_fit(self) -> None:
        if self.client is None:
            raise TrainingError(f"defense {self.name} is used before fit()")

    # -- the representation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """The client's clean token grid ``E(x)`` ``[B, d, gh, gw]``."""
        self._need_fit()
        self.client.to(x.device)
        return self.client(x)

    def perturb(self, r: Tensor, gen: torch.Generator) -> Tensor:
        return r

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.perturb(self.features(x), gen)

    def probe_encode(self, x: Tensor, gen: torch.Generator, second: bool) -> Tensor:
        """The identification probe's encoding (gallery ``second=False``, query ``True``)."""
        return self.test_encode(x, gen)

    def view(self, r: Tensor) -> Tensor | None:
        return None  # token maps have no image-domain view (S1/S2 are n/a)

    # -- the recognizer ------------------------------------------------------------------------------
    def new_tail(self, ctx: Context, num_classes: int, *salt: object) -> ViTServer:
        cfg = ctx.recognizer or RecognizerConfig()
        return build_seeded(lambda: fresh_tail(self.vit_cfg, num_classes, cfg.embedding_dim,
                                               cfg.arcface_s, cfg.arcface_m),
                            ctx.generator("vit-split", "tail", *salt)).to(ctx.device)

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """A fresh server tail trained with ArcFace on ``encode(x)`` (XNN's cloud tail)."""
        self._need_fit()
        faces = data.train.relabelled()
        tail = self.new_tail(ctx, faces.num_identities, self.name)
        gen = ctx.generator("vit-split", "encode", self.name)
        return fit_arcface(tail, lambda idx, flip, x: self.encode(x, gen), faces.labels, ctx,
                           self._cfg(ctx, self.options.tail_epochs), desc=f"recognizer[{self.name}]",
                           faces=faces)

    # -- the threat model ---------------------------------------------------------------------------
    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """Stolen test representations; attacker pairs on the public half of ``aux``; §9's
        evaluation material in ``extra`` (module docstring)."""
        self._need_fit()
        gen = ctx.generator("leak", self.name)
        _, public = split_aux(data.aux, ctx.seed)
        dev = ctx.device
        batches = lambda fn, x: torch.cat([fn(c.to(dev)).cpu() for c in x.split(ENCODE_BATCH)])  # noqa: E731
        clean = batches(self.features, public.images)
        train_inputs = batches(lambda c: self.test_encode(c, gen), public.images)
        inputs = batches(lambda c: self.test_encode(c, gen), data.test.images)
        extra = {"train_labels": public.labels.clone(), "clean_train_inputs": clean,
                 "token_grid": tuple(self.vit_cfg.grid)}
        oracle: dict[str, Any] = {}
        if self.with_probe:
            gallery, query = probe_split(data.test.labels)
            # the stolen encodings only: who the test faces are is ground truth for scoring
            # (issue 20), in ``oracle``, which :meth:`Leak.for_attacker` removes
            extra["identification_probe"] = {
                "gallery": batches(lambda c: self.probe_encode(c, gen, False), data.test.images[gallery]),
                "query": batches(lambda c: self.probe_encode(c, gen, True), data.test.images[query])}
            oracle["identification_probe"] = {"gallery_labels": data.test.labels[gallery],
                                              "query_labels": data.test.labels[query]}
        return Leak(train_inputs, public.images, inputs, data.test.images, data.test.labels,
                    views=None, extra=extra, oracle=oracle)

    def mechanism(self) -> dict[str, Any] | None:
        """Public description: the split ViT's architecture (the attacker's tail copies it)."""
        if self.vit_cfg is None:
            return None
        return {"kind": self.name.split(".")[0], "vit": dataclasses.asdict(self.vit_cfg),
                "embedding_dim": self.embedding_dim}

    # -- shapes without fitting ---------------------------------------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        return self.vit_config(tuple(image_shape)).token_shape


def probe_split(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Gallery / query indices for the identification probe: per identity, its faces alternate
    (even positions → gallery, odd → query); identities with one face go to the gallery only."""
    gallery, query = [], []
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        k = seen.get(int(y), 0)
        seen[int(y)] = k + 1
        (gallery if k % 2 == 0 else query).append(i)
    return torch.tensor(gallery, dtype=torch.long), torch.tensor(query, dtype=torch.long)


# -- XNN --------------------------------------------------------------------------------------------
@dataclass
class XnnOptions(ViTDefenseOptions):
    permute: bool = True  # secret token permutation P (§9)
    matrix: bool = True  # Gaussian d×d matrix M / √d (§9)
    key_mode: str = "deployment"  # deployment | per_batch | per_sample (module docstring)

    def validate(self) -> None:
        super().validate()
        if self.key_mode not in KEY_MODES:
            raise ConfigError(f"xnn key_mode must be one of {KEY_MODES}, got {self.key_mode!r}")


XNN_VARIANT_DEFAULTS = {"permute": True, "matrix": True, "key_mode": "deployment"}


def _xnn_variant(variant: str, **options: Any) -> Any:
    return DEFENSES.register("xnn", variant=variant, **{**XNN_VARIANT_DEFAULTS, **options})


@DEFENSES.register("xnn")
@_xnn_variant("perm_only", matrix=False)
@_xnn_variant("matrix_only", permute=False)
@_xnn_variant("clean", permute=False, matrix=False)
@_xnn_variant("per_batch", key_mode="per_batch")
class Xnn(ViTSplitDefense):
    """XNN (ALGORITHMS §9): the client's ViT token map obfuscated as ``(P h) M`` with a secret
    key; a fresh server tail trained with ArcFace on the obfuscated token maps."""

    Options = XnnOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.key: dict[str, Tensor | None] | None = None

    def fit(self, data: FaceData, ctx: Context) -> None:
        super().fit(data, ctx)
        o = self.options
        self.key = draw_key(self.vit_cfg.tokens, self.vit_cfg.embed_dim,
                            ctx.generator("xnn", "deployment-key"), o.permute, o.matrix)

    def _key(self, n: int, gen: torch.Generator) -> dict[str, Tensor | None]:
        o = self.options
        if o.key_mode == "deployment":
            return self.key
        t, d = self.vit_cfg.tokens, self.vit_cfg.embed_dim
        return draw_key(t, d, gen, o.permute, o.matrix, batch=n if o.key_mode == "per_sample" else None)

    def obfuscate(self, r: Tensor, key: dict[str, Tensor | None]) -> Tensor:
        """Token grid in, obfuscated token grid out."""
        return tokens_to_grid(obfuscate(grid_to_tokens(r), key), self.vit_cfg.grid)

    def unobfuscate(self, r: Tensor, key: dict[str, Tensor | None] | None = None) -> Tensor:
        """Undo the obfuscation with ``key`` (default: the deployment key)."""
        key = self.key if key is None else key
        return tokens_to_grid(unobfuscate(grid_to_tokens(r), key), self.vit_cfg.grid)

    def perturb(self, r: Tensor, gen: torch.Generator) -> Tensor:
        if self.key is None:
            raise TrainingError(f"defense {self.name} is used before fit()")
        if self.options.key_mode != "per_sample":
            return self.obfuscate(r, self._key(len(r), gen))
        return torch.cat([self.obfuscate(c, self._key(len(c), gen))
                          for c in r.split(PER_SAMPLE_CHUNK)])

    def probe_encode(self, x: Tensor, gen: torch.Generator, second: bool) -> Tensor:
        """Gallery under the deployment key, query under a second client's key (§9: gallery and
        query under different keys); in the per-batch/per-sample modes every call draws anew."""
        if not second or self.options.key_mode != "deployment":
            return self.test_encode(x, gen)
        o = self.options
        key = draw_key(self.vit_cfg.tokens, self.vit_cfg.embed_dim, gen, o.permute, o.matrix)
        return self.obfuscate(self.features(x), key)

    # -- attacker knowledge -----------------------------------------------------------------------
    def attacker_copy(self, gen: torch.Generator) -> "Xnn":
        """The black-box attacker knows the mechanism, not the key: it simulates its pairs with
        a key drawn per face (the expectation over keys, §9's "expected" attacks)."""
        twin = copy.copy(self)
        twin.with_probe = False  # the probe stays the deployment's (Leak.for_attacker merges extra)
        twin.options = dataclasses.replace(self.options, key_mode="per_sample")
        twin.key = draw_key(self.vit_cfg.tokens, self.vit_cfg.embed_dim, gen,
                            self.options.permute, self.options.matrix) if self.vit_cfg else None
        return twin

    def deployment_secrets(self) -> dict[str, Any]:
        if self.key is None or self.options.key_mode != "deployment":
            return {}
        return {k: v for k, v in self.key.items() if v is not None}

    def mechanism(self) -> dict[str, Any] | None:
        out = super().mechanism()
        if out is not None:
            o = self.options
            out.update(permute=o.permute, matrix=o.matrix, key_mode=o.key_mode)
        return out


# XNN's base name carries its variant options too, so every cell records them.
DEFENSES.get("xnn").options.update(XNN_VARIANT_DEFAULTS)


# -- XNN-d ------------------------------------------------------------------------------------------
class NoiseGenerator(nn.Module):
    """``G(h, E_z(z))``: per-token MLP on the clean token and the encoded latent, bounded by
    ``scale · tanh`` (``scale`` = noise_scale × the clean features' std)."""

    def __init__(self, dim: int, z_dim: int, hidden: int, scale: float) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.noise_encoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.net = nn.Sequential(nn.LayerNorm(dim + hidden), nn.Linear(dim + hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, r: Tensor, gen: torch.Generator) -> Tensor:
        """The noise for token grid ``r`` (same shape), with ``z`` drawn from ``gen``."""
        h = grid_to_tokens(r)
        z = torch.randn(*h.shape[:2], self.z_dim, generator=device_generator(gen, h.device),
                        device=h.device)
        n = self.scale * torch.tanh(self.net(torch.cat([h, self.noise_encoder(z)], -1)))
        return tokens_to_grid(n, tuple(r.shape[-2:]))


def identity_ce(tail: ViTServer, r: Tensor, y: Tensor) -> Tensor:
    """Plain softmax cross-entropy on the tail head's scaled cosines (the identity CE of §9)."""
    return F.cross_entropy(tail.head.cosine(tail(r)) * tail.head.s, y)


@dataclass
class XnnDOptions(ViTDefenseOptions):
    noise_scale: float = 0.5  # bound of the noise in units of the clean features' std [ASSUMP]
    z_dim: int = 16  # latent of the noise encoder [ASSUMP]
    generator_hidden: int = 0  # width of G (0 = embed_dim) [ASSUMP]
    adv_epochs: int = 0  # stage 2 epochs; 0 = recognizer.epochs
    adv_lr: float = 1e-3  # Adam lr of G and the auxiliary tail [ASSUMP]
    kd_alpha: float = 0.3  # §9
    kd_temperature: float = 4.0  # [ASSUMP]

    def validate(self) -> None:
        super().validate()
        if self.noise_scale < 0 or self.z_dim < 1 or self.generator_hidden < 0 or self.adv_epochs < 0:
            raise ConfigError("xnn_d needs noise_scale >= 0, z_dim >= 1, generator_hidden >= 0, "
                              "adv_epochs >= 0")
        if self.adv_lr <= 0 or self.kd_temperature <= 0 or not 0 <= self.kd_alpha <= 1:
            raise ConfigError("xnn_d needs adv_lr > 0, kd_temperature > 0, kd_alpha in [0, 1]")


def adversarial_stage(client: nn.Module, generator: NoiseGenerator, aux: ViTServer,
                      faces: Any, labels: Tensor, epochs: int, batch_size: int, lr: float,
                      ctx: Context, aux_updates: bool = True) -> dict[str, float]:
    """XNN-d stage 2: alternating Adam steps — the auxiliary tail minimises the identity CE on
    ``h + G(h)``, then ``G`` maximises it. Returns last-epoch means: the aux CE on the batch
    before and after each G step (``G`` raises it when it works), and the aux training CE.
    ``aux_updates=False`` keeps the auxiliary tail fixed (a test of ``G`` alone)."""
    gen = ctx.generator("xnn_d", "stage2")
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr)
    opt_a = torch.optim.Adam(aux.parameters(), lr=lr) if aux_updates else None
    y_all = labels.to(ctx.device)
    stats: dict[str, float] = {}
    for _ in range(epochs):
        chunks, flips = epoch_chunks(len(labels), batch_size, gen)
        sums = {"aux_ce_train": 0.0, "aux_ce_before_g": 0.0, "aux_ce_after_g": 0.0}
        for idx, flip, x in zip(chunks, flips, faces.batches(chunks)):
            x = flip_where(to_float(x, ctx.device), flip)
            y = y_all[idx.to(ctx.device)]
            with torch.no_grad():
                h = client(x)
            # batch statistics while the tail learns (running BN averages lag on short runs);
            # a fixed tail keeps its own statistics
            aux.train(aux_updates)
            if opt_a is not None:
                with torch.no_grad():
                    noised = h + generator(h, gen)
                loss_a = identity_ce(aux, noised, y)
                opt_a.zero_grad(set_to_none=True)
                loss_a.backward()
                opt_a.step()
                sums["aux_ce_train"] += float(loss_a.detach())
            z_seed = int(torch.randint(2**62, (1,), generator=gen))  # the same z before and after
            ce = identity_ce(aux, h + generator(h, torch.Generator().manual_seed(z_seed)), y)
            opt_g.zero_grad(set_to_none=True)
            (-ce).backward()
            opt_g.step()
            with torch.no_grad():
                after = identity_ce(aux, h + generator(h, torch.Generator().manual_seed(z_seed)), y)
            sums["aux_ce_before_g"] += float(ce.detach())
            sums["aux_ce_after_g"] += float(after)
        stats = {k: v / len(chunks) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingError("xnn_d stage 2: loss became non-finite; lower defenses.xnn_d.adv_lr")
    for p in aux.parameters():
        p.grad = None
    aux.eval()
    return stats


@DEFENSES.register("xnn_d")
class XnnD(ViTSplitDefense):
    """XNN-d (ALGORITHMS §9): adversarial generator noise on the client's ViT token map, a
    student tail distilled from the clean teacher tail recognises the noised features."""

    Options = XnnDOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.generator: NoiseGenerator | None = None

    def fit(self, data: FaceData, ctx: Context) -> None:
        """Stage 0/1 (clean ViT; its tail is the teacher), then stage 2 (G vs. the aux tail)."""
        super().fit(data, ctx)
        o = self.options
        faces = data.train.relabelled()
        cfg = self._cfg(ctx, o.adv_epochs)
        # the clean features' scale, from the first training batch (the bound's unit)
        first = to_float(faces.take(torch.arange(min(len(faces), cfg.batch_size))), ctx.device)
        std = float(self.features(first).std())
        self.record["feature_std"] = std
        hidden = o.generator_hidden or self.vit_cfg.embed_dim
        self.generator = build_seeded(  # G's init: a function of the seed only
            lambda: NoiseGenerator(self.vit_cfg.embed_dim, o.z_dim, hidden, o.noise_scale * std),
            ctx.generator("xnn_d", "init")).to(ctx.device)
        aux = self.new_tail(ctx, faces.num_identities, "xnn_d-aux")
        stats = adversarial_stage(self.client, self.generator, aux, faces, faces.labels,
                                  cfg.epochs, cfg.batch_size, o.adv_lr, ctx)
        self.generator = freeze(self.generator)
        self.record.update(stats)

    def perturb(self, r: Tensor, gen: torch.Generator) -> Tensor:
        if self.generator is None:
            raise TrainingError(f"defense {self.name} is used before fit()")
        with torch.no_grad():
            self.generator.to(r.device)
            return r + self.generator(r, gen)

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """The student tail (initialised from the teacher) on noised features, distilled from
        the teacher on the clean features (module docstring)."""
        self._need_fit()
        o = self.options
        faces = data.train.relabelled()
        cfg = self._cfg(ctx, o.tail_epochs)
        teacher = self.teacher.to(ctx.device).eval()
        student = copy.deepcopy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
        gen = ctx.generator("xnn_d", "student")
        labels = faces.labels.to(ctx.device)
        t, a = o.kd_temperature, o.kd_alpha

        def step_loss(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
            h = self.features(x)
            noised = self.perturb(h, gen)
            y = labels[idx.to(ctx.device)]
            with torch.no_grad():
                p_t = F.softmax(teacher.head.cosine(teacher(h)) * teacher.head.s / t, 1)
            f = student(noised)
            log_p_s = F.log_softmax(student.head.cosine(f) * student.head.s / t, 1)
            kd = F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t
            return a * kd + (1 - a) * student.head.loss(f, y)

        student.train()
        sgd_epochs(list(student.parameters()), step_loss, len(faces), cfg, gen,
                   f"recognizer[{self.name}]", ctx.progress, faces=faces, device=ctx.device,
                   workers=ctx.workers)
        if cfg.bn_recalibration:
            size = max(2, min(cfg.batch_size, len(faces)))
            recalibrate_batchnorm(student, (self.encode(x, gen) for x in
                                            recalibration_batches(faces, size, ctx.device, ctx.workers)))
        return student.eval()

    def mechanism(self) -> dict[str, Any] | None:
        out = super().mechanism()
        if out is not None:
            out["noise_scale"] = self.options.noise_scale
        return out
