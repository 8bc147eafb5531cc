"""Attacks on ViT token maps and XNN's privacy evaluation (ALGORITHMS §9, §7.2).

- ``token_rec``: a ResRec-style decoder (§7.2) from a token map ``[T, d]`` (any ``[C, H, W]``
  representation read as ``H·W`` tokens of ``C`` features) to the image. Tokens → per-channel
  standardisation → Linear(d → w) → ``layers`` Transformer encoder layers *without* position
  information → cross-attention from ``T`` learned position queries (``order_free``, default) →
  a ``w``-channel grid → the ResRec decoder. Without position information the decoder does not
  depend on the order the tokens arrive in, so a secret token permutation alone cannot hide the
  face from it [ASSUMP: layers/widths]. Maps wider than ``max_side`` per side are area-pooled
  first (attention cost).
- ``xnn_expected``: §9's "expected" attacks of the public code (black-box: the attacker knows the
  mechanism, not the key). *Expected recognition*: the attacker trains the same tail
  architecture (from ``Leak.extra["mechanism"]``) with ArcFace on its public faces' clean client
  features, obfuscated under a key re-drawn every batch, then identifies the probe's query faces
  in its gallery (gallery and query under different keys) by L2 nearest neighbour of the tail's
  embeddings: ``info["expected_recognition_acc"]`` (top-1), with ``info["chance_acc"]`` =
  1 / gallery identities, and ``info["raw_nn_acc"]`` (the same on the raw representations, no
  tail). ``run`` only embeds the probe; who its faces are is ground truth (``Leak.oracle``, never
  handed to an attacker), so the accuracies are scored by :meth:`ExpectedAttack.diagnose`, which
  the pipeline calls with the full leak after ``run`` (issue 20). *Expected inversion* (the
  images): the ``token_rec`` decoder trained on pairs whose keys are re-drawn every batch. On
  leaks without the XNN material (any other defense) it degrades to ``token_rec`` on the leak's
  pairs; it declares ``n/a`` for defenses that are not ViT splits.
- ``xnn_reorder``: §9's row/column nearest-neighbour reordering attack. The attacker's template
  is the mean clean token map of its public faces; each stolen map's rows (tokens) are assigned
  to template positions by minimum total L2 distance, features scaled by their public std
  (Hungarian; ``method="greedy"``: each row to its nearest free position in order of distance),
  then optionally its columns (features) likewise; the reordered maps are decoded by a ResRec
  decoder trained on clean public pairs.
  ``info["token_order_acc"]``: the share of tokens put back in place, scored by
  :meth:`ReorderAttack.diagnose` against the deployment key (``Leak.secrets`` of the full leak,
  for either knowledge: scoring only, after ``run``).
  ``n/a`` for defenses that are not ViT splits.

[ASSUMP] hyper-parameters (epochs, widths, lr) follow the §7.2 decoders' defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from attacks.base import Attack
from bench.backbones.decoders import build_decoder
from bench.core.context import Context
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError
from bench.core.registry import ATTACKS
from bench.core.training import (Standardizer, check_leak, check_positive, predict, resize,
                                 train_l1_decoder)


def _token_defense_only(attack: Attack, defense: Any) -> str | None:
    if getattr(defense, "token_map", False):
        return None
    return (f"attack {attack.name} evaluates ViT token-map defenses (xnn, xnn_d); "
            f"{getattr(defense, 'name', type(defense).__name__)} publishes no token map")


# -- the token decoder --------------------------------------------------------------------------
class CrossAttentionPool(nn.Module):
    """Learned position queries attending over an (unordered) token set: ``[B, T, w]`` out."""

    def __init__(self, tokens: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.q, self.out = nn.Linear(width, width), nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)

    def forward(self, t: Tensor) -> Tensor:
        b, n, w = t.shape
        split = lambda x: x.reshape(b, -1, self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        k, v = self.kv(self.norm(t)).chunk(2, -1)
        q = self.q(self.queries).expand(b, -1, -1)
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out(o.transpose(1, 2).reshape(b, -1, w))


class TokenDecoder(nn.Module):
    """Token map ``[B, d, gh, gw]`` → image ``[B, C, H, W]`` in [0, 1] (module docstring)."""

    def __init__(self, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                 width: int = 64, heads: int = 4, layers: int = 2, order_free: bool = True,
                 max_side: int = 16) -> None:
        super().__init__()
        d, h, w = in_shape
        self.grid = (min(h, max_side), min(w, max_side))
        tokens = self.grid[0] * self.grid[1]
        heads = math.gcd(width, heads) or 1
        self.order_free = order_free
        self.embed = nn.Linear(d, width)
        # timm's pre-norm ViT block (plain ops: no fused inference kernels, so FLOPs count)
        self.encoder = nn.Sequential(*[Block(width, heads, mlp_ratio=2.0) for _ in range(layers)])
        self.pool = CrossAttentionPool(tokens, width, heads)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)  # order_free=False only
        self.decoder = build_decoder("resrec", (width, *self.grid), out_shape, width)

    def forward(self, r: Tensor) -> Tensor:
        if tuple(r.shape[-2:]) != self.grid:
            r = resize(r, self.grid)
        t = self.embed(r.flatten(2).transpose(1, 2))
        if self.order_free:
            t = self.pool(self.encoder(t))
        else:  # tokens in their grid order, with learned position embeddings
            t = self.encoder(t + self.pos)
        grid = t.transpose(1, 2).reshape(len(t), -1, *self.grid)
        return self.decoder(grid)


@dataclass
class TokenOptions(Attack.Options):
    epochs: int = 50  # [ASSUMP] as §7.2
    batch_size: int = 32
    lr: float = 1e-3
    width: int = 64
    heads: int = 4
    layers: int = 2
    order_free: bool = True
    max_side: int = 16
    where: ClassVar[str] = "attacks.token_rec"

    def validate(self) -> None:
        Attack.Options.validate(self)
        check_positive(self.where, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                       width=self.width, heads=self.heads, layers=self.layers,
                       max_side=self.max_side)


def train_token_decoder(name: str, o: TokenOptions, inputs: Tensor, targets: Tensor,
                        ctx: Context, rekey: Any = None) -> tuple[nn.Module, Standardizer, dict]:
    """Train a :class:`TokenDecoder` with L1; ``rekey(idx, gen)`` (optional) returns the batch's
    inputs re-drawn (the expected attack) instead of ``inputs[idx]``."""
    norm = Standardizer(inputs if rekey is None else rekey(torch.arange(min(len(inputs), 256)),
                                                           ctx.generator(name, "stats")))
    key_gen = ctx.generator(name, "keys")
    net, losses = train_l1_decoder(
        name, lambda: TokenDecoder(tuple(inputs.shape[1:]), tuple(targets.shape[1:]), o.width, o.heads,
                                   o.layers, o.order_free, o.max_side),
        inputs, targets, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, ctx=ctx,
        init_salt=(name, "init"), shuffle=ctx.generator(name, "shuffle"),
        batch_inputs=lambda idx: norm(inputs[idx] if rekey is None else rekey(idx, key_gen)))
    return net, norm, losses


@ATTACKS.register("token_rec")
class TokenRecAttack(Attack):
    """Token-space ResRec-style decoder (ALGORITHMS §7.2 on §9's token maps): order-free
    attention over the tokens, then the ResRec decoder."""

    family, family_rank = "decoder", 3  # ALGORITHMS §15
    # on `none` (quick, ORL): measured SSIM .25, SRRA .35 — order-free tokens lose the pixel layout
    floor = {"SSIM": 0.2, "SRRA": 0.25}
    Options = TokenOptions

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        net, norm, losses = train_token_decoder(self.name, o, leak.train_inputs,
                                                leak.train_targets, ctx)
        images = predict(lambda r: net(norm(r).to(ctx.device)), leak.inputs, max(o.batch_size, 64))
        return Reconstruction(images.clamp(0, 1), info={"final_l1": losses.get("l1"),
                                                        "epochs": o.epochs,
                                                        "knowledge": self.knowledge})

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        o = self.options
        net = TokenDecoder(tuple(in_shape), tuple(image_shape), o.width, o.heads, o.layers,
                           o.order_free, o.max_side)
        return {"token_decoder": ModelSpec(net, tuple(in_shape))}


# -- the expected attacks ---------------------------------------------------------------------------
def rekeyer(clean: Tensor, mechanism: dict[str, Any]) -> Any:
    """``rekey(idx, gen)``: the clean token grids ``clean[idx]`` obfuscated under one key drawn
    from ``gen`` (XNN's mechanism), or None when the mechanism has no key."""
    from bench.backbones.vit import grid_to_tokens, tokens_to_grid
    from defenses.xnn import draw_key, obfuscate

    if mechanism.get("kind") != "xnn" or not (mechanism.get("permute") or mechanism.get("matrix")):
        return None
    d, gh, gw = clean.shape[1:]

    def rekey(idx: Tensor, gen: torch.Generator) -> Tensor:
        key = draw_key(gh * gw, d, gen, bool(mechanism["permute"]), bool(mechanism["matrix"]))
        return tokens_to_grid(obfuscate(grid_to_tokens(clean[idx]), key), (gh, gw))

    return rekey


def identification_accuracy(gallery: Tensor, gallery_labels: Tensor, query: Tensor,
                            query_labels: Tensor) -> float:
    """Top-1 accuracy of L2 nearest-neighbour identification of ``query`` in ``gallery``."""
    if len(query) == 0 or len(gallery) == 0:
        return float("nan")
    nearest = torch.cdist(query.flatten(1).double(), gallery.flatten(1).double()).argmin(1)
    return float((gallery_labels[nearest] == query_labels).float().mean())


@dataclass
class ExpectedOptions(TokenOptions):
    knowledge: str = "black_box"  # §9: the attacker does not hold the key
    tail_epochs: int = 40  # the attacker's recognition tail [ASSUMP]
    tail_lr: float = 0.05  # §9's SGD lr
    tail_batch_size: int = 32
    where: ClassVar[str] = "attacks.xnn_expected"

    def validate(self) -> None:
        super().validate()
        check_positive(self.where, tail_epochs=self.tail_epochs, tail_lr=self.tail_lr,
                       tail_batch_size=self.tail_batch_size)


def train_expected_tail(mechanism: dict[str, Any], inputs: Tensor, labels: Tensor, ctx: Context,
                        epochs: int, lr: float, batch_size: int, rekey: Any = None) -> nn.Module:
    """The attacker's copy of the tail architecture, trained with ArcFace (SGD, the harness
    loop) on its public faces' representations, each batch re-keyed by ``rekey`` when given."""
    import dataclasses

    from bench.backbones.vit import ViTSplitConfig, fresh_tail
    from bench.config import RecognizerConfig
    from bench.recognition import build_seeded, recalibrate_batchnorm, sgd_epochs

    base = ctx.recognizer or RecognizerConfig(embedding_dim=128, arcface_s=32.0)
    cfg = dataclasses.replace(base, epochs=epochs, lr=lr, batch_size=batch_size)
    vit = ViTSplitConfig(**mechanism["vit"])
    _, y = labels.unique(return_inverse=True)
    n_cls = int(y.max()) + 1
    emb = int(mechanism.get("embedding_dim") or cfg.embedding_dim)
    gen = ctx.generator("xnn_expected", "tail")
    tail = build_seeded(lambda: fresh_tail(vit, n_cls, emb, cfg.arcface_s, cfg.arcface_m),
                        gen).to(ctx.device)
    y = y.to(ctx.device)

    def batch(idx: Tensor) -> Tensor:
        return (inputs[idx] if rekey is None else rekey(idx, gen)).to(ctx.device)

    def step_loss(idx: Tensor, flip: Tensor, x: Tensor | None) -> Tensor:
        return tail.loss(batch(idx), y[idx.to(ctx.device)])

    tail.train()
    sgd_epochs(list(tail.parameters()), step_loss, len(inputs), cfg, gen, "xnn_expected-tail",
               ctx.progress, device=ctx.device)
    size = max(2, min(batch_size, len(inputs)))
    recalibrate_batchnorm(tail, (batch(idx) for idx in torch.arange(len(inputs)).split(size)))
    return tail.eval()


@ATTACKS.register("xnn_expected")
class ExpectedAttack(Attack):
    """§9's expected attacks on XNN: expected recognition (top-1 restore-identification accuracy
    in ``info``) and expected inversion (the images), keys re-drawn every batch."""

    family, family_rank = "decoder", 4  # ALGORITHMS §15: a decoder trained with re-drawn keys
    floor_note = "n/a on none (ViT token-map defenses only)"
    Options = ExpectedOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._probe: dict[str, Tensor] | None = None  # run's probe embeddings, for diagnose

    def not_applicable(self, defense: Any) -> str | None:
        return _token_defense_only(self, defense)

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        mechanism = leak.extra.get("mechanism") or {}
        clean = leak.extra.get("clean_train_inputs")
        rekey = rekeyer(clean, mechanism) if clean is not None else None
        info: dict[str, Any] = {"epochs": o.epochs, "knowledge": self.knowledge,
                                "rekeyed": rekey is not None}
        # expected inversion: re-keyed clean public features (XNN), else the leak's own pairs
        pairs = clean if rekey is not None else leak.train_inputs
        net, norm, losses = train_token_decoder(self.name, o, pairs, leak.train_targets, ctx, rekey)
        images = predict(lambda r: net(norm(r).to(ctx.device)), leak.inputs, max(o.batch_size, 64))
        info["final_l1"] = losses.get("l1")
        info.update(self.recognition(leak, mechanism, clean, rekey, ctx))
        return Reconstruction(images.clamp(0, 1), info=info)

    def recognition(self, leak: Leak, mechanism: dict[str, Any], clean: Tensor | None,
                    rekey: Any, ctx: Context) -> dict[str, Any]:
        """Expected recognition, the attacker's part: train its tail and embed the leak's
        identification probe (kept for :meth:`diagnose`, which scores it). Returns the probe's
        sizes (nothing where the leak has no probe)."""
        o = self.options
        self._probe = None
        probe, labels = leak.extra.get("identification_probe"), leak.extra.get("train_labels")
        if probe is None or labels is None or "vit" not in mechanism:
            return {}
        inputs = clean if rekey is not None else leak.train_inputs
        tail = train_expected_tail(mechanism, inputs, labels, ctx, o.tail_epochs, o.tail_lr,
                                   o.tail_batch_size, rekey)
        embed = lambda r: F.normalize(predict(lambda c: tail(c.to(ctx.device)), r, 256))  # noqa: E731
        g, q = probe["gallery"], probe["query"]
        self._probe = {"gallery": embed(g), "query": embed(q)}
        return {"n_query": len(q), "n_gallery": len(g)}

    def diagnose(self, leak: Leak, recon: Reconstruction | None = None) -> dict[str, Any]:
        """§9's restore-identification accuracy of the embeddings :meth:`recognition` made, scored
        with the probe's test-identity labels (``leak.oracle``: the full leak, after ``run``;
        None where the leak has no probe or the attack did not run on one)."""
        probe = self._probe
        truth = (leak.oracle or {}).get("identification_probe")
        raw = leak.extra.get("identification_probe")
        if probe is None or truth is None or raw is None:
            return {"expected_recognition_acc": None, "chance_acc": None, "raw_nn_acc": None}
        gl, ql = truth["gallery_labels"], truth["query_labels"]
        return {"expected_recognition_acc": identification_accuracy(probe["gallery"], gl,
                                                                    probe["query"], ql),
                "chance_acc": 1.0 / max(1, len(gl.unique())),
                "raw_nn_acc": identification_accuracy(raw["gallery"], gl, raw["query"], ql)}

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        o = self.options
        net = TokenDecoder(tuple(in_shape), tuple(image_shape), o.width, o.heads, o.layers,
                           o.order_free, o.max_side)
        return {"token_decoder": ModelSpec(net, tuple(in_shape))}


# -- the reordering attack --------------------------------------------------------------------------
METHODS = ("hungarian", "greedy")


def _assign(cost: Tensor, method: str) -> Tensor:
    """``pos[i]``: the template position row ``i`` is assigned to (a permutation)."""
    if method == "hungarian":
        rows, cols = linear_sum_assignment(cost.double().numpy())
        pos = torch.empty(len(rows), dtype=torch.long)
        pos[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        return pos
    n = cost.shape[0]
    pos = torch.full((n,), -1, dtype=torch.long)
    taken = torch.zeros(cost.shape[1], dtype=torch.bool)
    for flat in cost.flatten().argsort().tolist():  # nearest pairs first
        i, j = divmod(flat, cost.shape[1])
        if pos[i] < 0 and not taken[j]:
            pos[i], taken[j] = j, True
    return pos


def recover_token_order(tokens: Tensor, template: Tensor, method: str = "hungarian",
                        scale: Tensor | None = None) -> Tensor:
    """For stolen tokens ``[B, T, d]`` and a template ``[T, d]``: ``pos [B, T]``, the position
    each stolen row is matched to by L2 distance (``pos == perm`` when the attack succeeds for
    ``h' = h[:, perm]``). ``scale [d]`` (e.g. the public tokens' per-feature std) divides each
    feature first, so no high-variance feature dominates the distance."""
    s = (torch.ones(template.shape[1], dtype=torch.float64) if scale is None
         else scale.double().clamp_min(1e-8))
    ref = template.double() / s
    return torch.stack([_assign(torch.cdist(t.double() / s, ref) ** 2, method) for t in tokens])


def reorder(tokens: Tensor, pos: Tensor) -> Tensor:
    """Put row ``i`` of each map at position ``pos[i]``."""
    out = torch.empty_like(tokens)
    out.scatter_(1, pos[..., None].expand(-1, -1, tokens.shape[2]), tokens)
    return out


@dataclass
class ReorderOptions(Attack.Options):
    method: str = "hungarian"  # hungarian | greedy (row/column nearest neighbour)
    columns: bool = True  # also reorder the feature columns against the template
    epochs: int = 50  # the ResRec decoder on clean public pairs, as §7.2
    batch_size: int = 32
    lr: float = 1e-3
    width: int = 64
    where: ClassVar[str] = "attacks.xnn_reorder"

    def validate(self) -> None:
        Attack.Options.validate(self)
        if self.method not in METHODS:
            raise ConfigError(f"{self.where}.method must be one of {METHODS}, got {self.method!r}")
        check_positive(self.where, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                       width=self.width)


@ATTACKS.register("xnn_reorder")
class ReorderAttack(Attack):
    """§9's row/column nearest-neighbour reordering attack on permuted token maps, followed by a
    ResRec decoder trained on clean public pairs."""

    family, family_rank = "analytic", 1  # ALGORITHMS §15: undoes the key structurally
    floor_note = "n/a on none (ViT token-map defenses only)"
    Options = ReorderOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._pos: Tensor | None = None  # run's recovered token order, for diagnose

    def not_applicable(self, defense: Any) -> str | None:
        return _token_defense_only(self, defense)

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        clean = leak.extra.get("clean_train_inputs")
        public = clean if clean is not None else leak.train_inputs
        shape = tuple(public.shape[1:])
        as_tokens = lambda r: r.flatten(2).transpose(1, 2)  # noqa: E731
        as_grid = lambda t: t.transpose(1, 2).reshape(len(t), *shape)  # noqa: E731
        pub_tokens = as_tokens(public)
        template = pub_tokens.mean(0)
        stolen = as_tokens(leak.inputs)
        pos = recover_token_order(stolen, template, o.method, pub_tokens.std((0, 1)))
        restored = reorder(stolen, pos)
        if o.columns:  # columns: the same matching on the transposed maps
            col = recover_token_order(restored.transpose(1, 2), template.T, o.method,
                                      pub_tokens.std((0, 2)))
            restored = reorder(restored.transpose(1, 2), col).transpose(1, 2)
        info: dict[str, Any] = {"epochs": o.epochs, "knowledge": self.knowledge, "method": o.method}
        self._pos = pos  # scored against the key by diagnose, never here
        # decode the restored maps with a ResRec trained on clean public pairs (§7.2)
        norm = Standardizer(public)
        device = ctx.device
        net, losses = train_l1_decoder(
            self.name, lambda: build_decoder("resrec", shape, tuple(leak.train_targets.shape[1:]), o.width),
            public, leak.train_targets, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, ctx=ctx,
            init_salt=(self.name, "init"), shuffle=ctx.generator(self.name, "shuffle"),
            batch_inputs=lambda idx: norm(public[idx]))
        images = predict(lambda r: net(norm(r).to(device)), as_grid(restored), max(o.batch_size, 64))
        info["final_l1"] = losses.get("l1")
        return Reconstruction(images.clamp(0, 1), info=info)

    def diagnose(self, leak: Leak, recon: Reconstruction | None = None) -> dict[str, Any]:
        """``token_order_acc``: the share of tokens :meth:`run` put back in place, against the
        deployment key of the full leak (``leak.secrets``; absent without a fixed key)."""
        pos = self._pos
        perm = (leak.secrets or {}).get("perm")
        if pos is None or perm is None or perm.shape[-1] != pos.shape[1]:
            return {}
        return {"token_order_acc": float((pos == perm.expand_as(pos)).float().mean())}

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        net = build_decoder("resrec", tuple(in_shape), tuple(image_shape), self.options.width)
        return {"resrec": ModelSpec(net, tuple(in_shape))}
