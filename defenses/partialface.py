"""`partialface`: PartialFace — recognition on random subsets of pruned frequency channels
(ALGORITHMS §13) [PAPER ICCV'23 "Privacy-Preserving Face Recognition Using Random Frequency
Components"] [CODE Tencent/TFace:recognition/tasks/partialface/utils.py, train.py, train.yaml].

1. Front end (:mod:`defenses.tface_dct`): ×8 upsampling, YCbCr, −128, BDCT → ``[B, 3, 64, h, w]``.
2. Pruning: the 10 low-frequency channels :data:`PRUNED` ``[0, 1, 2, 3, 8, 9, 10, 16, 17, 24]``
   of each colour go; the other 54 per colour stay in increasing order (TFace's set difference).
3. Subsets: a selection table of 6 rows × 9 indices into those 54 (disjoint, covering all 54)
   splits them into 6 subsets; the same 9 frequencies are taken from each colour, so one subset
   is 3 × 9 = 27 channels, colour-major.
4. Training (:meth:`PartialFace.train_step`): each image is sent as ONE subset. The identity with
   class index ``y`` may only ever use the 3 subsets of the allowed triple ``TRIPLES[y mod 20]``
   (:data:`TRIPLES`: the C(6, 3) = 20 triples in lexicographic order, TFace's ``choice_index``);
   one of the 3 is drawn per image and step. The 9 channels are then reordered by one of the
   candidate permutations (3 by default), drawn per image (the same order for the 3 colours).
   TFace repeats every training image ``NUM_AUG = 3`` times per epoch (``num_aug``): here each
   epoch is ``num_aug`` passes over the faces (epochs, milestones and warm-up scaled by it).
5. Recognizer: ``backbone`` ("" = ``recognizer.backbone``; TFace: IR-18, the paper preset) on the
   27 channels with the 3×3 stride-1 stem (§0.2).
6. Test time: TFace's public code ships no inference routine for PartialFace
   (``create_channel_subsets`` returns all six subsets; ``form_training_batch`` needs the label).
   An unseen test identity has no class index, so it cannot be bound to a triple: each probe is
   sent as one subset drawn uniformly from all 6, with a drawn candidate permutation
   (``test_subset = -1``, [ASSUMP] default), or always subset ``k`` (``test_subset = k``). The
   verification flip, the leak and the precise-BN pass all use this test-time mechanism.
7. Threat model (§13): the server (attacker) sees the 27-channel subsets. Attacker pairs are the
   test-time mechanism run on its auxiliary faces; the stolen inputs are the test faces' subsets.
   The selection table and the candidate permutations are "one per model" (§13; TFace: "can be
   randomly and model-wisely generated"): ``table='seeded'`` [ASSUMP default] draws them from
   ``key_seed`` — the deployment's secret, handed to white-box attackers (``Leak.secrets``),
   while a black-box attacker simulates with a table and permutations of its own
   (:meth:`PartialFace.attacker_copy`); ``table='tface'`` uses TFace's published table and
   permutations (:data:`TFACE_SELECTION`, :data:`TFACE_PERMUTATIONS`). Which subset and
   permutation each stolen input used is ground truth (``Leak.oracle``); the attacker knows
   them for the pairs it simulated (``extra["train_subset"]``, ``extra["train_permutation"]``).

[ASSUMP] choices, each an option: coefficients are standardised per channel with training-set
statistics (``standardize``; TFace feeds raw coefficients to the recognizer: a fixed per-channel
affine map the client applies, so what the server learns is unchanged); gray faces replicated to
three colours (:mod:`defenses.tface_dct`). The image view of a subset (S1/S2) follows §0.1 with
what the server knows (no table, no permutation): the 9 luma channels go, in their received order,
into the first 9 unpruned slots, inverse BDCT, min-max.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.core.context import Context, derive_seed
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from defenses.base import ENCODE_BATCH, Defense
from defenses.bdct import masked_view
from defenses.tface_dct import (COLOURS, N_FREQ, PlannedModel, channel_stats, check_backbone,
                                epoch_images, front_end)

PRUNED = (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)  # [CODE partialface/utils.py chs_prune]
KEPT = tuple(i for i in range(N_FREQ) if i not in PRUNED)  # 54, increasing (TFace's set difference)
N_SUBSETS, SUBSET_SIZE, ALLOWED = 6, 9, 3
#: the C(6, 3) = 20 allowed triples, lexicographic (TFace's ``choice_index``); identity y uses
#: ``TRIPLES[y % 20]``
TRIPLES = tuple(itertools.combinations(range(N_SUBSETS), ALLOWED))
#: TFace's published selection table (indices into :data:`KEPT`) [CODE create_channel_subsets]
TFACE_SELECTION = ((1, 24, 28, 12, 32, 45, 47, 40, 52),
                   (35, 39, 44, 42, 10, 4, 37, 31, 53),
                   (0, 50, 19, 6, 22, 51, 49, 23, 21),
                   (38, 8, 25, 13, 17, 30, 7, 33, 9),
                   (26, 29, 16, 2, 43, 14, 5, 11, 48),
                   (36, 41, 46, 34, 15, 27, 18, 20, 3))
#: TFace's candidate permutations of a subset's 9 channels [CODE form_training_batch]
TFACE_PERMUTATIONS = ((0, 1, 2, 3, 4, 5, 6, 7, 8),
                      (7, 3, 0, 6, 5, 4, 1, 2, 8),
                      (4, 8, 6, 0, 2, 5, 3, 7, 1))
TABLES = ("seeded", "tface")


def draw_table(gen: torch.Generator, n_permutations: int) -> tuple[Tensor, Tensor]:
    """A selection table (a random split of the 54 kept channels into 6 subsets of 9) and
    ``n_permutations`` random orders of 9 — one model's secrets."""
    selection = torch.randperm(len(KEPT), generator=gen).view(N_SUBSETS, SUBSET_SIZE)
    perms = torch.stack([torch.randperm(SUBSET_SIZE, generator=gen) for _ in range(n_permutations)])
    return selection, perms


def select_subsets(coeff: Tensor, selection: Tensor, perms: Tensor, subset: Tensor,
                   perm: Tensor) -> Tensor:
    """Coefficients ``[B, 3, 64, h, w]`` → each image's subset ``subset[b]`` (a row of
    ``selection``, indices into :data:`KEPT`), reordered by ``perms[perm[b]]`` (channel ``k`` of
    the output is the subset's channel ``perms[perm[b], k]``, as TFace's ``x[:, perm]``), the
    same 9 frequencies for every colour → ``[B, 27, h, w]`` colour-major."""
    b, c, _, h, w = coeff.shape
    kept = torch.tensor(KEPT, device=coeff.device)
    rows = selection.to(coeff.device)[subset.to(coeff.device)]  # [B, 9] indices into KEPT
    order = perms.to(coeff.device)[perm.to(coeff.device)]  # [B, 9]
    freq = kept[rows.gather(1, order)]  # [B, 9] BDCT frequency of each output channel
    idx = freq[:, None, :, None, None].expand(b, c, SUBSET_SIZE, h, w)
    return coeff.gather(2, idx).reshape(b, c * SUBSET_SIZE, h, w)


def training_subsets(labels: Tensor, gen: torch.Generator) -> Tensor:
    """One subset per training image: a uniform draw from its identity's allowed triple
    ``TRIPLES[label mod 20]``."""
    triples = torch.tensor(TRIPLES)[labels.cpu() % len(TRIPLES)]  # [B, 3]
    pick = torch.randint(ALLOWED, (len(labels),), generator=gen)
    return triples.gather(1, pick[:, None]).squeeze(1)


@dataclass
class PartialFaceOptions:
    table: str = "seeded"  # seeded (per-deployment secret from key_seed) | tface [ASSUMP default]
    key_seed: int = 0  # the deployment's secret selection table and permutations (table=seeded)
    n_permutations: int = 3  # candidate permutations per model [CODE form_training_batch]
    num_aug: int = 3  # passes over the faces per epoch [CODE train.yaml NUM_AUG]
    test_subset: int = -1  # -1: a random subset of the 6 per probe [ASSUMP]; k: always subset k
    standardize: bool = True  # per-channel standardisation with training statistics [ASSUMP]
    upsample: bool = True  # ×8 bilinear upsampling before the BDCT (§0.1 v2: every preset)
    backbone: str = ""  # "" = recognizer.backbone; TFace: IR-18 (paper preset)

    def validate(self) -> None:
        if self.table not in TABLES:
            raise ConfigError(f"partialface table must be one of {TABLES}, got {self.table!r}")
        if self.table == "tface" and self.n_permutations != len(TFACE_PERMUTATIONS):
            raise ConfigError(f"partialface table=tface has {len(TFACE_PERMUTATIONS)} candidate "
                              f"permutations; n_permutations={self.n_permutations} needs table=seeded")
        if self.n_permutations < 1 or self.num_aug < 1:
            raise ConfigError("partialface n_permutations and num_aug must be >= 1")
        if not -1 <= self.test_subset < N_SUBSETS:
            raise ConfigError(f"partialface test_subset must be -1 (random) or 0..{N_SUBSETS - 1}, "
                              f"got {self.test_subset}")
        check_backbone("partialface", self.backbone)


@DEFENSES.register("partialface")
class PartialFace(Defense):
    """PartialFace (ALGORITHMS §13): 10 low frequencies per colour pruned, the other 54 split into
    6 secret subsets of 9; each image is sent as one subset (27 channels, a training identity only
    ever uses its triple ``label mod 20``), its channels in one of 3 secret orders."""

    Options = PartialFaceOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o.table == "tface":
            self.selection = torch.tensor(TFACE_SELECTION)
            self.permutations = torch.tensor(TFACE_PERMUTATIONS)
        else:
            key = torch.Generator().manual_seed(derive_seed(o.key_seed, "partialface-table"))
            self.selection, self.permutations = draw_table(key, o.n_permutations)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    # -- learned parts: channel statistics ------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Per-channel statistics of the 192 coefficients on the training faces."""
        if self.options.standardize:  # on the device: the ×8 maps are large
            self.mean, self.std = channel_stats(
                data.train, lambda x: self._coeff(x.to(ctx.device)).flatten(1, 2))
        else:
            self.mean, self.std = torch.zeros(1, COLOURS * N_FREQ, 1, 1), torch.ones(1, COLOURS * N_FREQ, 1, 1)

    def _coeff(self, x: Tensor) -> Tensor:
        return front_end(x, self.options.upsample)

    def coefficients(self, x: Tensor) -> Tensor:
        """Standardised front-end coefficients ``[B, 3, 64, h, w]``."""
        if self.mean is None:
            raise TrainingError("partialface is used before fit()")
        c = self._coeff(x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((c.flatten(1, 2) - mean) / std).view_as(c)

    # -- the representation -------------------------------------------------------------------
    def draw(self, b: int, gen: torch.Generator, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Subset and permutation indices of ``b`` images: training (``labels`` given) within the
        identity's allowed triple, else the test-time rule (``test_subset``)."""
        if labels is not None:
            subset = training_subsets(labels, gen)
        elif self.options.test_subset >= 0:
            subset = torch.full((b,), self.options.test_subset, dtype=torch.long)
        else:
            subset = torch.randint(N_SUBSETS, (b,), generator=gen)
        return subset, torch.randint(len(self.permutations), (b,), generator=gen)

    def encode_with(self, x: Tensor, subset: Tensor, perm: Tensor) -> Tensor:
        return select_subsets(self.coefficients(x), self.selection, self.permutations, subset, perm)

    def encode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The test-time mechanism (no identity to bind): one subset per image, 27 channels."""
        subset, perm = self.draw(len(x), gen)
        return self.encode_with(x, subset, perm)

    def train_step(self, model: Any, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """ArcFace on each image's subset drawn from its identity's triple ``y mod 20``."""
        subset, perm = self.draw(len(x), gen, labels=y)
        return model.loss(self.encode_with(x, subset, perm), y)

    def view(self, r: Tensor) -> Tensor | None:
        """§0.1 view with what the server knows: the luma plane's 9 channels in their received
        order into the first 9 unpruned slots, inverse BDCT (shrunk back for ×8 maps), min-max."""
        if r.ndim != 4 or r.shape[1] != COLOURS * SUBSET_SIZE:
            return None
        return masked_view(r[:, :SUBSET_SIZE].cpu(), removed=PRUNED, upsampled=self.options.upsample)

    # -- the recognizer -------------------------------------------------------------------------
    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        """The harness recognizer on 27 channels, ``num_aug`` passes per epoch (TFace NUM_AUG)."""
        from bench.recognition import train_recognizer

        cfg, k = ctx.recognizer, self.options.num_aug
        cfg = dataclasses.replace(cfg, backbone=self.options.backbone or cfg.backbone,
                                  epochs=cfg.epochs * k, warmup_epochs=cfg.warmup_epochs * k,
                                  milestones=tuple(m * k for m in cfg.milestones))
        return train_recognizer(data.train, ctx, defense=self, desc=f"recognizer[{self.name}]", cfg=cfg)

    # -- the threat model -------------------------------------------------------------------------
    def _subsets_of(self, images: Tensor, gen: torch.Generator, device: torch.device
                    ) -> tuple[Tensor, Tensor, Tensor]:
        reps, subsets, perms = [], [], []
        for chunk in images.split(ENCODE_BATCH):
            s, p = self.draw(len(chunk), gen)
            reps.append(self.encode_with(chunk.to(device), s, p).cpu())
            subsets.append(s)
            perms.append(p)
        return torch.cat(reps), torch.cat(subsets), torch.cat(perms)

    def leak(self, data: FaceData, ctx: Context) -> Leak:
        """The test faces' subsets (stolen), attacker pairs from the test-time mechanism on the
        auxiliary faces; subset and permutation indices: the attacker's own for its pairs
        (``extra``), ground truth for the stolen ones (``oracle``)."""
        gen = ctx.generator("leak", self.name)
        train_inputs, train_subset, train_perm = self._subsets_of(data.aux.images, gen, ctx.device)
        inputs, subset, perm = self._subsets_of(data.test.images, gen, ctx.device)
        return Leak(train_inputs, data.aux.images, inputs, data.test.images, data.test.labels,
                    views=self.view(inputs),
                    extra={"train_subset": train_subset, "train_permutation": train_perm},
                    oracle={"subset": subset, "permutation": perm})

    # -- attacker knowledge (§1 v2) -------------------------------------------------------------------
    def attacker_copy(self, gen: torch.Generator) -> Defense:
        """The same mechanism (and channel statistics) with a selection table and candidate
        permutations drawn from ``gen``: what a black-box attacker simulates with."""
        other = copy.copy(self)
        other.selection, other.permutations = draw_table(gen, len(self.permutations))
        return other

    def deployment_secrets(self) -> dict[str, Any]:
        """The selection table and candidate permutations (white-box attackers only)."""
        return {"selection": self.selection.clone(), "permutations": self.permutations.clone()}

    def mechanism(self) -> dict[str, Any]:
        """The public description (no table): what every attacker knows."""
        return {"family": "partialface", "pruned": list(PRUNED), "kept": list(KEPT),
                "n_subsets": N_SUBSETS, "subset_size": SUBSET_SIZE, "allowed": ALLOWED,
                "n_permutations": len(self.permutations), "test_subset": self.options.test_subset,
                "upsample": bool(self.options.upsample), "table": self.options.table}

    # -- shapes and models without fitting (``bench.plan``) -------------------------------------
    def representation_shape(self, image_shape: tuple[int, int, int],
                             recognizer: Any = None) -> tuple[int, ...]:
        """27 channels at the front end's map size."""
        h, w = image_shape[1:]
        side = (h, w) if self.options.upsample else (h // 8, w // 8)
        return (COLOURS * SUBSET_SIZE, *side)

    def plan_models(self, image_shape: tuple[int, int, int], recognizer: Any, num_classes: int,
                    n_train: int) -> dict[str, PlannedModel]:
        """The recognizer on 27 channels, ``num_aug`` passes per epoch."""
        from bench.recognition import Recognizer

        cfg = dataclasses.replace(recognizer, backbone=self.options.backbone or recognizer.backbone)
        shape = self.representation_shape(image_shape)
        images = epoch_images(n_train, cfg.batch_size, cfg.epochs * self.options.num_aug)
        return {f"{cfg.backbone} F2": PlannedModel(Recognizer(cfg, shape, num_classes), shape, images)}
