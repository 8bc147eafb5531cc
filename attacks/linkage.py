"""The identity-linkage attack ``linkage`` (ALGORITHMS §14 "Linkage", `[ASSUMP]` throughout).

It reconstructs no faces for scoring: it asks whether the stolen protected records can be tied to
people. The attacker simulates the defense on its public faces with its knowledge (§1: the pairs
``leak.for_attacker(knowledge)`` hands it — the deployment's secrets for ``white_box``, its own
for ``black_box``) and owns their identity labels (``Leak.train_labels``, public data). It trains,
jointly with SGD on the recognizer recipe (§0.2):

- an embedding network ``E`` — the preset recognizer's backbone family and size
  (``ctx.recognizer``) with its ArcFace head — on the clear public faces (flipped at random as
  the recipe does);
- a cross-domain mapping ``T`` from a protected representation to the face domain (a ResRec
  decoder, §7.2, for maps; the NbNet-like template decoder for vectors such as templates), so
  the embedding of a protected record is ``E(T(r))``: ArcFace on ``E(T(r_i))`` with the public
  labels (the embedding network of the protected representation), plus
  ``align_weight · (1 − cos(E(T(r_i)), E(x_i)))`` on each simulated pair and
  ``pixel_weight · L1(T(r_i), x_i)``, which starts ``T`` near a reconstruction.

One ``E`` embeds both domains, so protected records and clear photos are compared in one space
by construction (two separately trained branches tied by a pair term align only on the public
identities: measured on synthetic identities, rank-1 at chance even for the identity map).
BatchNorm statistics are then re-estimated (``recognizer.bn_recalibration``), and every
embedding averages the face and its mirror image (§8; a translated record is mirrored in the face
domain). Scoring needs the test identities (ground truth), so it happens in
:meth:`LinkageAttack.diagnose`, which the pipeline calls with the full leak after ``run``:

- ``link_verif_acc`` / ``link_tar@far1e-3``: protected↔protected verification of test pairs built
  from the test labels (:func:`metrics.identity.label_pairs`: every same-person pair, up to
  ``max_pairs // 2``, and as many different-person pairs), 10-fold protocol of §8;
- ``link_rank1`` / ``link_rank5``: each protected probe against a gallery of the clear photos of
  the test identities *other than its own photo*, an identity scored by its best photo;
  ``link_chance`` (1 / identities) and ``link_chance5`` next to them. ``per_probe_rank`` and
  ``per_pair_correct`` keep the items for intervals.

Options (``[ASSUMP]``): ``epochs``, ``lr``, ``batch_size`` (None = the recognizer's recipe,
``ctx.recognizer``; its milestones are scaled to ``epochs``), ``align_weight`` 1.0,
``pixel_weight`` 1.0, ``translator_width`` 32 and ``translator_lr`` 1e-3 (the mapping's width and
Adam rate, as the §7.2 decoders), ``max_pairs`` 6000 (LFW's count).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import Attack
from bench.core.context import Context, global_rng_from
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import ATTACKS
from bench.core.training import Standardizer, check_positive, predict, train_epochs


def _positive_or_none(where: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{where}.{name} must be > 0 (or unset: the recognizer's), got {value}")


def build_translator(rep_shape: tuple[int, ...], image_shape: tuple[int, int, int],
                     width: int) -> nn.Module:
    """The cross-domain mapping T: a ResRec decoder (§7.2) for a map ``(C, H, W)``, the NbNet-like
    template decoder (§14) for a vector ``(D,)``; output face-shaped, in [0, 1]."""
    from bench.backbones.decoders import build_decoder, build_template_decoder

    if len(rep_shape) == 3:
        return build_decoder("resrec", tuple(rep_shape), tuple(image_shape), width)
    return build_template_decoder(int(math.prod(rep_shape)), tuple(image_shape), width)


class LinkageNet(nn.Module):
    """``T`` (protected → face domain) and ``E`` (a recognizer with its ArcFace head)."""

    def __init__(self, cfg: Any, rep_shape: tuple[int, ...], image_shape: tuple[int, int, int],
                 num_classes: int, width: int) -> None:
        from bench.recognition import Recognizer

        super().__init__()
        self.translator = build_translator(rep_shape, image_shape, width)
        self.embedder = Recognizer(cfg, tuple(image_shape), num_classes)

    def protected(self, r: Tensor) -> Tensor:
        """Flip-averaged embedding of standardised protected records (not normalised)."""
        x = self.translator(r)
        return self.embedder(x) + self.embedder(x.flip(-1))

    def clear(self, x: Tensor) -> Tensor:
        """Flip-averaged embedding of clear faces (not normalised)."""
        return self.embedder(x) + self.embedder(x.flip(-1))


def recipe(recognizer: Any, epochs: int | None, lr: float | None,
           batch_size: int | None) -> Any:
    """The recognizer config with the attack's own epochs / lr / batch size where set; the step
    milestones are scaled to the attack's epochs (same schedule shape)."""
    from bench.config import RecognizerConfig

    cfg = recognizer if recognizer is not None else RecognizerConfig()
    e = epochs or cfg.epochs
    milestones = tuple(max(1, round(m * e / cfg.epochs)) for m in cfg.milestones if m < cfg.epochs)
    warmup = min(cfg.warmup_epochs, max(0, e - 1))
    return dataclasses.replace(cfg, epochs=e, lr=lr or cfg.lr,
                               batch_size=batch_size or cfg.batch_size, milestones=milestones,
                               warmup_epochs=warmup, compile=False)


@ATTACKS.register("linkage")
class LinkageAttack(Attack):
    """Identity linkage of protected records (ALGORITHMS §14): an ArcFace embedding of the
    protected representation through a cross-domain mapping to the face domain, scored by
    protected↔protected verification and rank-1/5 identification against clear photos."""

    family = "linkage"
    reconstructs = False
    # ALGORITHMS §15 floor on `none`, quick preset, ORL (measured .28 / .78; chance .1 / .5):
    # README "Identity-level attacks, worst case, strength floors"
    floor = {"link_rank1": 0.2, "link_verif_acc": 0.7}

    @dataclass
    class Options(Attack.Options):
        epochs: int | None = None  # None: recognizer.epochs
        lr: float | None = None  # None: recognizer.lr
        batch_size: int | None = None  # None: recognizer.batch_size
        align_weight: float = 1.0  # [ASSUMP] weight of the cross-domain pair term
        pixel_weight: float = 1.0  # [ASSUMP] weight of L1(T(r), x)
        translator_width: int = 32  # [ASSUMP] width of the mapping T
        translator_lr: float = 1e-3  # [ASSUMP] Adam, as the §7.2 decoders
        max_pairs: int = 6000  # [ASSUMP] verification pairs over the test records (LFW: 6000)

        def validate(self) -> None:
            Attack.Options.validate(self)  # knowledge (ALGORITHMS §1)
            if self.epochs is not None and self.epochs < 1:
                raise ConfigError(f"attacks.linkage.epochs must be >= 1 (or unset), got {self.epochs}")
            _positive_or_none("attacks.linkage", lr=self.lr, batch_size=self.batch_size)
            check_positive("attacks.linkage", translator_lr=self.translator_lr)
            for name in ("align_weight", "pixel_weight"):
                if getattr(self, name) < 0:
                    raise ConfigError(f"attacks.linkage.{name} must be >= 0, got {getattr(self, name)}")
            if self.translator_width < 1:
                raise ConfigError(f"attacks.linkage.translator_width must be >= 1, "
                                  f"got {self.translator_width}")
            if self.max_pairs < 20:
                raise ConfigError(f"attacks.linkage.max_pairs must be >= 20 (10 folds of "
                                  f"same/different pairs), got {self.max_pairs}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._state: dict[str, Any] = {}

    @property
    def epochs(self) -> int:
        """Cost estimates: the option, else the default recognizer recipe's (the preset's is not
        known here)."""
        from bench.config import RecognizerConfig

        return int(self.options.epochs or RecognizerConfig().epochs)

    # -- the attack (no ground truth) -------------------------------------------------------------
    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        r_train, faces, labels = check_linkage_leak(self.name, leak)
        cfg = recipe(ctx.recognizer, o.epochs, o.lr, o.batch_size)
        net, norm, loss = train_linkage(self.name, r_train, faces, labels, cfg, o, ctx)
        self._state = {"net": net, "probe": embed_protected(net, norm, leak.inputs)}
        return Reconstruction(None, info={
            "knowledge": self.knowledge, "epochs": cfg.epochs, "final_loss": loss,
            "public_identities": int(labels.unique().numel()), "public_pairs": len(labels)})

    # -- ground-truth scoring (called by the pipeline with the full leak, after run) ----------------
    def diagnose(self, leak: Leak, recon: Reconstruction) -> dict[str, Any]:
        """``link_*`` scores of the stolen records against the test identities (module
        docstring); empty when the leak has no test labels or targets."""
        st = self._state
        if not st or leak.labels is None or leak.targets is None:
            return {}
        gallery = embed_clear(st["net"], leak.targets.float())
        return linkage_scores(st["probe"], gallery, leak.labels, self.options.max_pairs)

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """The mapping and the embedding network (cost estimates use the default recognizer
        size; the run uses the preset's). Per pair: T and E on the record, E on the face, both
        forward and backward."""
        cfg = recipe(None, self.options.epochs, self.options.lr, self.options.batch_size)
        net = LinkageNet(cfg, tuple(in_shape), tuple(image_shape), 2, self.options.translator_width)
        return {"T": ModelSpec(net.translator, tuple(in_shape)),
                "E": ModelSpec(net.embedder, tuple(image_shape), passes=6.0)}


def check_linkage_leak(name: str, leak: Leak) -> tuple[Tensor, Tensor, Tensor]:
    """The attacker's pairs and their identity labels, or a TrainingError saying what is missing."""
    r, x, y = leak.train_inputs, leak.train_targets, leak.train_labels
    if y is None:
        raise TrainingError(f"{name}: the leak has no train_labels (the identities of the "
                            "attacker's public faces, ALGORITHMS §14); the pipeline adds them — "
                            "build the Leak with train_labels=")
    if x.dim() != 4 or r.dim() not in (2, 4) or leak.inputs.shape[1:] != r.shape[1:]:
        raise TrainingError(f"{name}: expects train_inputs [N, C, H, W] or [N, D] matching inputs "
                            f"and train_targets [N, C, H, W]; got {tuple(r.shape)}, "
                            f"{tuple(leak.inputs.shape)}, {tuple(x.shape)}")
    if not len(r) == len(x) == len(y) or len(r) < 2:
        raise TrainingError(f"{name}: needs as many train_inputs, train_targets and train_labels "
                            f"(at least 2), got {len(r)}, {len(x)}, {len(y)}")
    if y.unique().numel() < 2:
        raise TrainingError(f"{name}: the attacker's public faces hold one identity (the "
                            "defense simulated its pairs on part of the aux split); ArcFace needs "
                            "two or more — give aux more identities (data.split, "
                            "data.limit_identities)")
    return r, x, y


def train_linkage(name: str, r_train: Tensor, faces: Tensor, labels: Tensor, cfg: Any, o: Any,
                  ctx: Context) -> tuple[LinkageNet, Standardizer, float]:
    """Joint training of ``T`` and ``E`` on the module docstring's loss over shuffled mini-batches
    (:func:`bench.core.training.train_epochs`, NaN-checked): ``E`` with the recognizer's SGD
    recipe (momentum, weight decay, step schedule, :func:`bench.recognition.lr_at`), ``T`` with
    Adam at ``translator_lr`` as the §7.2 decoders (SGD at a recognizer's rate diverges on a
    decoder: measured NaN in the first epoch). Returns the network in eval mode, the per-channel
    standardisation of the protected inputs (fitted on ``r_train``, reused on stolen records) and
    the last epoch's mean loss."""
    from bench.recognition import build_seeded, flip_where, lr_at, recalibrate_batchnorm

    device = ctx.device
    gen = ctx.generator(name, "train")
    norm = Standardizer(r_train)
    _, y = torch.unique(labels, return_inverse=True)
    net = build_seeded(lambda: LinkageNet(cfg, tuple(r_train.shape[1:]), tuple(faces.shape[1:]),
                                          int(y.max()) + 1, o.translator_width), gen)
    net = net.to(device).train()
    y = y.to(device)
    E, T = net.embedder, net.translator
    sgd = torch.optim.SGD(E.parameters(), lr=lr_at(cfg, 0), momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    adam = torch.optim.Adam(T.parameters(), lr=o.translator_lr)

    def step(idx: Tensor) -> dict[str, Tensor]:
        if len(idx) < 2:  # a ragged last batch of one: BatchNorm needs two samples
            idx = torch.cat([idx, torch.randint(len(r_train), (1,), generator=gen)])
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = faces[idx].float().to(device)
        t = T(norm(r_train[idx]).to(device))
        yy = y[idx.to(device)]
        # the record's face-domain image is mirrored with its face (flip in the face domain)
        f_t, f_x = E(flip_where(t, flip)), E(flip_where(x, flip))
        loss = (E.head.loss(f_x, yy) + E.head.loss(f_t, yy)
                + o.align_weight * (1 - F.cosine_similarity(f_t, f_x)).mean()
                + o.pixel_weight * F.l1_loss(t, x))
        sgd.zero_grad(set_to_none=True)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        adam.step()
        return {"loss": loss}

    def next_epoch(epoch: int) -> None:
        for group in sgd.param_groups:
            group["lr"] = lr_at(cfg, epoch + 1)

    batch = max(2, min(cfg.batch_size, len(r_train)))
    with global_rng_from(gen, device):  # dropout masks: a function of the run seed alone
        losses = train_epochs(name, len(r_train), cfg.epochs, batch, step, gen, ctx,
                              on_epoch_end=next_epoch)
    if cfg.bn_recalibration:  # precise BN, as the recognizers (RecognizerConfig.bn_recalibration)
        recalibrate_batchnorm(T, (norm(c).to(device) for c in r_train.split(batch)))
        with torch.no_grad():
            translated = torch.cat([T(norm(c).to(device)).cpu() for c in r_train.split(batch)])
        both = torch.cat([faces.float(), translated])[torch.randperm(2 * len(faces), generator=gen)]
        recalibrate_batchnorm(E, (c.to(device) for c in both.split(batch)))
    return net.eval(), norm, losses.get("loss", math.nan)


def embed_protected(net: LinkageNet, norm: Standardizer, records: Tensor) -> Tensor:
    """Unit embeddings ``E(T(r))`` of protected records, standardised as the training inputs."""
    device = next(net.parameters()).device
    net.eval()
    return F.normalize(predict(lambda c: net.protected(norm(c).to(device)), records, 256))


def embed_clear(net: LinkageNet, images: Tensor) -> Tensor:
    """Unit embeddings ``E(x)`` of clear photos."""
    device = next(net.parameters()).device
    net.eval()
    return F.normalize(predict(lambda c: net.clear(c.to(device)), images, 256))


def linkage_scores(probe: Tensor, gallery: Tensor, labels: Tensor, max_pairs: int,
                   seed: int = 0) -> dict[str, Any]:
    """§14's scores of probe embeddings (protected records) against the test labels and a clear
    gallery (row ``i`` of ``gallery`` is the clear photo the probe ``i`` was made from, excluded
    from probe ``i``'s gallery). Pairs are drawn with a generator seeded by ``seed`` [ASSUMP]:
    a function of the labels alone."""
    from metrics.identity import identification_ranks, label_pairs, verification_accuracy

    labels = torch.as_tensor(labels).reshape(-1).cpu()
    out: dict[str, Any] = {}
    pairs, issame = label_pairs(labels, max_pairs, torch.Generator().manual_seed(seed))
    if len(pairs) >= 10 and issame.any() and (~issame).any():
        v = verification_accuracy(probe[pairs[:, 0]], probe[pairs[:, 1]], issame.numpy())
        out.update({"link_verif_acc": v["accuracy_mean"], "link_verif_std": v["accuracy_std"],
                    "link_tar@far1e-3": v["val_at_far"], "link_pairs": int(len(pairs)),
                    "per_pair_correct": v["correct"]})
    ranks, n_ids = identification_ranks(probe, labels, gallery, labels,
                                        exclude=torch.arange(len(labels)))
    ok = ranks > 0
    if ok.any():
        r = ranks[ok].double()
        out.update({"link_rank1": float((r <= 1).double().mean()),
                    "link_rank5": float((r <= 5).double().mean()),
                    "link_probes": int(ok.sum()), "per_probe_rank": ranks.tolist()})
    out["link_identities"] = n_ids
    out["link_chance"] = 1.0 / n_ids if n_ids else math.nan
    out["link_chance5"] = min(5, n_ids) / n_ids if n_ids else math.nan
    return out
