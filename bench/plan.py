"""Cost before compute: what ``python -m bench run … --dry-run`` prints instead of training.

For every stage a matrix run would schedule (:mod:`bench.matrix`: one baseline per seed, one
defense chain fit → recognizer → leak per seed × defense, one attack and one measurement per cell)
the plan says whether the artifact store already holds it, which model it trains with how many
parameters, and an estimate of its work:

- one forward pass of ONE sample is counted with :class:`torch.utils.flop_counter.FlopCounterMode`
  on the CPU (convolutions and matrix products; 2 FLOPs per multiply-add) on the very model the
  stage builds, freshly initialised;
- training ≈ 3 × that forward (forward + backward) × training images × epochs; evaluation passes
  (precise-BN, flipped verification embeddings, reconstructions) add 1 × forward per image;
- defense extras where they dominate: AdaMixUp's policy net and FRNet1 step, AdvFace's shadow
  decoder and its PGD steps, DuetFace's client network; data transforms (BDCT, masking, mixing,
  PCA), LPIPS and I/O are not counted.

Hours are FLOPs divided by a sustained throughput the user states (``--throughput-tflops``).
Building a plan reads the dataset (ORL decodes 400 small images; a folder set lists its files and
decodes its in-memory aux/test splits) and builds each model once; nothing is trained or written.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench.config import RecognizerConfig, RunConfig
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import ATTACKS, DATASETS, DEFENSES
from bench.data.facedata import FaceData, FaceSet
from bench.pipeline import Cell, Pipeline, not_applicable, plugin_options
from bench.plugins import load_plugins
from bench.recognition import BN_RECALIBRATION_MAX_IMAGES, Recognizer
from bench.store import ArtifactStore

DEFAULT_TFLOPS = 100.0  # assumed sustained bf16 training rate of one H100-class GPU (~10% of peak)
THROUGHPUT_NOTE = "assumed: one H100-class GPU in bf16; set --throughput-tflops"
TRAIN_PASSES = 3.0  # forward + backward ≈ 3 forward passes
ESTIMATE_NOTE = ("FLOPs: one-sample forward counted by torch FlopCounterMode on the model each "
                 "stage builds; training ≈ 3 × forward × images × epochs, evaluation 1 × forward "
                 "per image; defense extras included (adamixup policy + FRNet1, advface shadow + "
                 "PGD, duetface client, the networks §13 defenses list); transforms, LPIPS and I/O "
                 "not counted.")


@dataclass
class PlanRow:
    """One stage of the plan (shared stages appear once, with ``*`` for what they are shared by)."""

    seed: int
    defense: str  # "*": the baseline, shared by every defense of the seed
    attack: str  # "*": shared by every attack on the defense
    stage: str  # baseline | defense (fit + recognizer + leak) | attack | measure
    stored: str  # yes | no | partial (a defense chain with some of its three artifacts stored)
    model: str  # what the stage trains
    params: int  # parameters it trains (0: it trains nothing)
    flops: float  # estimated FLOPs of the whole stage
    flops_left: float  # FLOPs of its parts the store lacks
    note: str = ""


@dataclass(frozen=True)
class DataSummary:
    """The counts and shape a cost estimate needs from one seed's ``FaceData``."""

    image_shape: tuple[int, int, int]
    n_train: int
    train_ids: int
    n_aux: int
    n_shadow: int  # AdvFace's shadow half of aux
    n_public: int  # the attacker's public half of aux (feature defenses)
    n_test: int
    verification_images: int  # every verification set, both faces of each pair
    primary_images: int  # the set the SRRA thresholds come from

    @staticmethod
    def of(data: FaceData, seed: int) -> "DataSummary":
        from defenses.feature_split import split_aux

        # split_aux on the labels alone: a zero-stride stand-in, so no aux image is copied
        stand_in = FaceSet(torch.zeros(1, 1, 1, 1).expand(len(data.aux), 1, 1, 1), data.aux.labels)
        try:
            shadow, public = (len(s) for s in split_aux(stand_in, seed))
        except TrainingError:  # one aux identity: feature defenses fail at run time, say so there
            shadow = public = 0
        return DataSummary(tuple(data.train.shape), len(data.train), data.train.num_identities,
                           len(data.aux), shadow, public, len(data.test),
                           sum(len(v.images) for v in data.verification),
                           len(data.primary_verification.images))


@dataclass
class Estimate:
    """What one stage trains and its FLOPs, split by the stored artifacts that make it up."""

    model: str
    params: int
    parts: dict[str, float]  # store stage name → FLOPs
    note: str = ""


def forward_flops(model: nn.Module, input_shape: Sequence[int],
                  call: Callable[[Tensor], Any] | None = None) -> int:
    """FLOPs of one forward pass of ONE sample of ``input_shape`` through ``model`` (or through
    ``call``, e.g. a recognizer and its ArcFace head), counted on the CPU in eval mode (BatchNorm
    accepts a single sample; the count is the same); every module's mode is restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            (call or model)(torch.zeros(1, *input_shape))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(counter.get_total_flops())


def num_params(model: nn.Module) -> int:
    """Every parameter of ``model`` (frozen ones too: the stage trained them once)."""
    return sum(p.numel() for p in model.parameters())


def sgd_samples(n: int, batch_size: int, epochs: int) -> int:
    """Images the recognizer loop processes: full batches only (it drops the ragged one)."""
    if n == 0:
        return 0
    size = min(batch_size, n)
    return max(1, n // size) * size * epochs


def _counting_config(cfg: RecognizerConfig) -> RecognizerConfig:
    """The recognizer config for counting: same architecture, no compile and fp32 on the CPU
    (bf16 convolutions are slow there; the FLOP count does not depend on the precision)."""
    fixed = {"compile": False, "precision": "fp32", "channels_last": False}
    return dataclasses.replace(cfg, **{k: v for k, v in fixed.items() if hasattr(cfg, k)})


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


class Planner:
    """Builds the plan of one matrix; every model is built and counted once per shape."""

    def __init__(self, cfg: RunConfig, results_dir: Path) -> None:
        load_plugins()
        self.cfg = cfg
        self.pipe = Pipeline(cfg, ArtifactStore(Path(results_dir) / "cache"), progress=False)
        self.store = self.pipe.store
        self.rcfg = _counting_config(cfg.recognizer)
        self._recognizers: dict[tuple, tuple[Recognizer, int, int]] = {}
        self._memo: dict[tuple, Any] = {}

    # -- models ---------------------------------------------------------------------------------
    def recognizer(self, shape: tuple[int, ...], n_classes: int) -> tuple[Recognizer, int, int]:
        """A fresh :class:`Recognizer` as the pipeline builds it, its parameter count and the
        FLOPs of one sample through backbone, neck and ArcFace head."""
        key = (tuple(shape), n_classes)
        if key not in self._recognizers:
            model = Recognizer(self.rcfg, tuple(shape), n_classes)
            fwd = forward_flops(model, shape, lambda r: model.head.cosine(model(r)))
            self._recognizers[key] = (model, num_params(model), fwd)
        return self._recognizers[key]

    def shapes(self, defense: Any, d: DataSummary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The defense's representation and leak shapes (feature defenses build a fresh F1)."""
        key = ("shapes", type(defense), repr(defense.options), d.image_shape)
        if key not in self._memo:
            self._memo[key] = (tuple(defense.representation_shape(d.image_shape, self.rcfg)),
                               tuple(defense.leak_shape(d.image_shape, self.rcfg)))
        return self._memo[key]

    def _eval(self, fwd: float, d: DataSummary) -> float:
        """A trained recognizer's evaluation: precise-BN pass and flipped verification embeddings."""
        return fwd * (min(d.n_train, BN_RECALIBRATION_MAX_IMAGES) + 2 * d.verification_images)

    # -- stages ---------------------------------------------------------------------------------
    def baseline(self, d: DataSummary) -> Estimate:
        """F1 on raw images: training, precise-BN, verification and the SRRA thresholds."""
        r = self.cfg.recognizer
        _, params, fwd = self.recognizer(d.image_shape, d.train_ids)
        train = TRAIN_PASSES * fwd * sgd_samples(d.n_train, r.batch_size, r.epochs)
        evaluate = self._eval(fwd, d) + fwd * 2 * d.primary_images  # + the SRRA thresholds
        return Estimate(f"{r.backbone} F1 on {_shape(d.image_shape)}, {d.train_ids} ids", params,
                        {"baseline": train + evaluate}, f"{d.n_train} imgs × {r.epochs} ep")

    def chain(self, defense: Any, d: DataSummary) -> Estimate:
        """The defense chain fit → recognizer → leak (what every attack on the defense reuses)."""
        from defenses.advface import AdvFace
        from defenses.duetface import DuetFace
        from defenses.feature_split import FeatureDefense
        from defenses.none import NoDefense

        _, _, base_fwd = self.recognizer(d.image_shape, d.train_ids)
        if isinstance(defense, NoDefense):
            return self._parts("F1 reused", 0, 0.0, base_fwd * 2 * d.verification_images, 0.0,
                               "no training")
        if isinstance(defense, AdvFace):
            return self._advface(defense, d)
        if isinstance(defense, FeatureDefense):
            return self._parts(f"F1 split at {defense.options.split_at}, Ψ reused", 0, 0.0,
                               base_fwd * 2 * d.verification_images, 0.0, "no training")
        if isinstance(defense, DuetFace):
            return self._duetface(defense, d)
        if hasattr(defense, "plan_models"):  # defenses that name the networks they train (§13)
            return self._planned_models(defense, d)
        return self._trained_recognizer(defense, d)

    @staticmethod
    def _parts(model: str, params: int, fit: float, recognizer: float, leak: float,
               note: str = "") -> Estimate:
        return Estimate(model, params, {"defense_fit": fit, "defense_recognizer": recognizer,
                                        "leak": leak}, note)

    def _trained_recognizer(self, defense: Any, d: DataSummary) -> Estimate:
        """Image-domain defenses: a recognizer F2 trained on the representation (mixing ones with
        mixed-label ArcFace, the same FLOPs); AdaMixUp adds its policy and FRNet1."""
        from defenses.adamixup import AdaMixup, KPolicy

        r = self.cfg.recognizer
        shape = self.shapes(defense, d)[0]
        _, params, fwd = self.recognizer(shape, d.train_ids)
        samples = sgd_samples(d.n_train, r.batch_size, r.epochs)
        model = f"{r.backbone} F2 on {_shape(shape)}"
        if not isinstance(defense, AdaMixup):
            return self._parts(model, params, 0.0, TRAIN_PASSES * fwd * samples + self._eval(fwd, d),
                               0.0, f"{d.n_train} imgs × {r.epochs} ep")
        o = defense.options
        key = ("policy", tuple(shape), len(o.k_values), tuple(o.policy_widths))
        if key not in self._memo:
            policy = KPolicy(shape[0], min(shape[1:]), len(o.k_values), tuple(o.policy_widths))
            self._memo[key] = (num_params(policy), forward_flops(policy, shape))
        p_params, p_fwd = self._memo[key]
        f = 1.0 / o.policy_every  # share of steps with a policy step
        # per sample: F2 step (3) + on policy steps FRNet1 = a copy's L1 forward + backward (3)
        # and its L2 forward (1); policy: the k draw (1) + REINFORCE forward + backward (3)
        train = ((TRAIN_PASSES + 4 * f) * fwd + (1 + 3 * f) * p_fwd) * samples
        return self._parts(f"{model} + K-policy", params + p_params, 0.0,
                           train + self._eval(fwd, d), 0.0,
                           f"{d.n_train} imgs × {r.epochs} ep; + policy, FRNet1")

    def _planned_models(self, defense: Any, d: DataSummary) -> Estimate:
        """A defense that lists its networks (``plan_models``, e.g. the §13 defenses): per network
        its parameters (those its stage trains), ``passes`` × one-sample forward × the training
        images it states, and ``evaluated`` forwards per verification image (the precise-BN pass
        too, for the recognizer stage) and per leaked (aux + test) image."""
        key = ("planned", type(defense), repr(defense.options), d.image_shape, d.train_ids, d.n_train)
        if key not in self._memo:
            models = defense.plan_models(d.image_shape, self.rcfg, d.train_ids, d.n_train)
            fwd: dict[int, int] = {}  # a network listed twice (frozen reuse) is counted once
            rows = []
            for name, m in models.items():
                if id(m.module) not in fwd:
                    fwd[id(m.module)] = forward_flops(m.module, m.input_shape) if m.input_shape else 0
                rows.append((name, m, num_params(m.module) if m.trains else 0, fwd[id(m.module)]))
            self._memo[key] = rows
        parts = {"defense_fit": 0.0, "defense_recognizer": 0.0, "leak": 0.0}
        evaluated = 2 * d.verification_images
        for _, m, _, f in self._memo[key]:
            parts[m.stage] += m.passes * f * m.images
            parts["defense_recognizer"] += m.evaluated * f * evaluated
            parts["leak"] += m.evaluated * f * (d.n_aux + d.n_test)
            if m.stage == "defense_recognizer" and m.trains and m.passes:  # precise BN
                parts["defense_recognizer"] += f * min(d.n_train, BN_RECALIBRATION_MAX_IMAGES)
        label = " + ".join(f"{name} ({si(p)})" if p else name for name, _, p, _ in self._memo[key])
        params = sum(p for _, _, p, _ in self._memo[key])
        return Estimate(label, params, parts, f"{d.n_train} imgs; {self.cfg.recognizer.epochs} ep")

    def _duetface(self, defense: Any, d: DataSummary) -> Estimate:
        """Client MobileFaceNet pre-trained alone, then the server with the frozen client."""
        from bench.recognition import ArcFaceHead
        from defenses.duetface import DuetFaceRecognizer, DuetFaceServer
        from defenses.mobilefacenet import ClientRecognizer, MobileFaceNet

        r, o = self.rcfg, defense.options
        shape = self.shapes(defense, d)[0]
        n_server = self.shapes(defense, d)[1][0]
        n_client = shape[0] - n_server
        key = ("duetface", tuple(shape), n_server, d.train_ids, o.client_width, o.server_backbone)
        if key not in self._memo:
            client = ClientRecognizer(
                MobileFaceNet(n_client, min(shape[1:]), r.embedding_dim, o.client_width),
                ArcFaceHead(r.embedding_dim, d.train_ids, r.arcface_s, r.arcface_m))
            server_cfg = dataclasses.replace(r, backbone=o.server_backbone or r.backbone)
            server = DuetFaceServer(server_cfg, (n_server, *shape[1:]), client.net.stage_channels,
                                    d.train_ids)
            full = DuetFaceRecognizer(client, server, n_server)
            c_fwd = forward_flops(client, (n_client, *shape[1:]),
                                  lambda x: client.head.cosine(client(x)))
            f_fwd = forward_flops(full, shape, lambda x: full.head.cosine(full(x)))
            self._memo[key] = (num_params(full), c_fwd, f_fwd)
        params, c_fwd, f_fwd = self._memo[key]
        c_epochs = o.client_epochs or r.epochs
        client_train = TRAIN_PASSES * c_fwd * sgd_samples(d.n_train, r.batch_size, c_epochs)
        # server step: server forward + backward, the frozen client forward only
        server_train = ((TRAIN_PASSES * (f_fwd - c_fwd) + c_fwd)
                        * sgd_samples(d.n_train, r.batch_size, r.epochs))
        evaluate = self._eval(c_fwd, d) + self._eval(f_fwd, d)
        server_name = o.server_backbone or r.backbone
        return self._parts(f"MobileFaceNet client + {server_name} server", params, 0.0,
                           client_train + server_train + evaluate, 0.0,
                           f"{d.n_train} imgs × {c_epochs}+{r.epochs} ep")

    def _advface(self, defense: Any, d: DataSummary) -> Estimate:
        """Shadow decoder training, PGD through it for every published feature, offline Ψ."""
        from bench.backbones.decoders import build_decoder
        from defenses.feature_split import split_recognizer

        o, r = defense.options, self.cfg.recognizer
        base, _, base_fwd = self.recognizer(d.image_shape, d.train_ids)
        z_shape = self.shapes(defense, d)[0]
        key = ("advface", d.image_shape, d.train_ids, o.split_at, o.shadow, o.shadow_width)
        if key not in self._memo:
            extractor, psi = split_recognizer(base, o.split_at)
            shadow = build_decoder(o.shadow, z_shape, d.image_shape, o.shadow_width)
            self._memo[key] = (forward_flops(extractor, d.image_shape), num_params(shadow),
                               forward_flops(shadow, z_shape), num_params(psi))
        e_fwd, s_params, s_fwd, psi_params = self._memo[key]
        psi_fwd = base_fwd - e_fwd
        steps = o.iterations if o.eps > 0 and o.alpha > 0 else 0
        # one published feature: E(x), S(z), E(S(z)), then per step S forward + input gradient
        pgd = 2 * e_fwd + s_fwd * (1 + 2 * steps)
        fit = TRAIN_PASSES * s_fwd * d.n_shadow * o.shadow_epochs + d.n_shadow * pgd
        # verification faces and their mirrors, each perturbed once (an upper bound: repeats
        # of a face are served from the store)
        recognizer = 2 * d.verification_images * (pgd + psi_fwd)
        params, model = s_params, f"{o.shadow} shadow (w={o.shadow_width}) + PGD×{steps}"
        if o.mode == "offline":
            finetune = sgd_samples(d.n_train, r.batch_size, o.finetune_epochs)
            recognizer += (2 * d.n_train * pgd + TRAIN_PASSES * psi_fwd * finetune
                           + psi_fwd * min(d.n_train, BN_RECALIBRATION_MAX_IMAGES))
            params, model = params + psi_params, model + " + Ψ fine-tune"
        public = d.n_public * (e_fwd if o.attacker_data == "clean" else pgd)
        return self._parts(model, params, fit, recognizer, d.n_test * pgd + public,
                           f"shadow {d.n_shadow} imgs × {o.shadow_epochs} ep")

    def attacker_pairs(self, defense: Any, d: DataSummary) -> int:
        """How many (representation, image) pairs the leak gives the attacker to train on."""
        from defenses.feature_split import FeatureDefense

        if isinstance(defense, FeatureDefense):
            return d.n_public
        return d.n_aux * int(getattr(defense.options, "leak_rounds", 1))

    def attack(self, attack: Any, defense: Any, d: DataSummary) -> Estimate:
        in_shape = self.shapes(defense, d)[1]
        key = ("attack", type(attack), repr(attack.options), in_shape, d.image_shape)
        if key not in self._memo:
            specs = attack.training_models(in_shape, d.image_shape)
            self._memo[key] = [(name, num_params(s.module), forward_flops(s.module, s.input_shape),
                                s.passes, s.inference) for name, s in specs.items()]
        specs = self._memo[key]
        n = self.attacker_pairs(defense, d)
        train = sum(passes * fwd * n * attack.epochs for _, _, fwd, passes, _ in specs)
        infer = sum(fwd * d.n_test for _, _, fwd, _, used in specs if used)
        names = "+".join(name for name, *_ in specs) or "nothing"
        label = names if names == attack.name else f"{attack.name} {names}"  # "urec", "cgan G+D"
        return Estimate(f"{label} on {_shape(in_shape)}", sum(s[1] for s in specs),
                        {"attack": train + infer}, f"{n} pairs × {attack.epochs} ep")

    def measure(self, defense: Any, d: DataSummary) -> Estimate:
        """F1's flipped embeddings of the originals, reconstructions and (image defenses) views."""
        _, _, fwd = self.recognizer(d.image_shape, d.train_ids)
        sets = 2 if getattr(defense, "domain", "image") == "feature" else 3
        return Estimate("F1 embeddings", 0, {"measure": fwd * 2 * d.n_test * sets},
                        "LPIPS not counted")

    # -- the matrix -------------------------------------------------------------------------------
    def row(self, seed: int, defense: str, attack: str, stage: str, est: Estimate,
            keys: dict[str, str], note: str = "") -> PlanRow:
        have = {part: self.store.has(part, keys[part]) for part in est.parts}
        stored = "yes" if all(have.values()) else "partial" if any(have.values()) else "no"
        left = sum(f for part, f in est.parts.items() if not have[part])
        notes = "; ".join(n for n in (est.note, note) if n)
        return PlanRow(seed, defense, attack, stage, stored, est.model, est.params,
                       sum(est.parts.values()), left, notes)

    def plan(self, defenses: list[str], attacks: list[str]) -> list[PlanRow]:
        pipe, cfg = self.pipe, self.cfg
        rows: list[PlanRow] = []
        for seed in cfg.seeds:
            # uncached (not pipe.data): only counts are kept, so one seed's splits at a time
            # are in memory (a streamed set's aux/test splits are decoded to be counted)
            d = DataSummary.of(DATASETS.get(cfg.data.name).factory(cfg.data, seed), seed)
            rows.append(self.row(seed, "*", "*", "baseline", self.baseline(d),
                                 {"baseline": pipe.baseline_key(seed)},
                                 f"shared by {len(defenses) * len(attacks)} cells"))
            for dname in defenses:
                defense = DEFENSES.create(dname, **plugin_options(cfg.defenses, dname))
                defense.name = dname
                keys = {"defense_fit": pipe.fit_key(seed, dname),
                        "defense_recognizer": pipe.recognizer_key(seed, dname),
                        "leak": pipe.leak_key(seed, dname)}
                rows.append(self.row(seed, dname, "*", "defense", self.chain(defense, d), keys,
                                     f"shared by {len(attacks)} attacks" if len(attacks) > 1 else ""))
                for aname in attacks:
                    cell = Cell(seed, dname, aname)
                    attack = ATTACKS.create(aname, **plugin_options(cfg.attacks, aname))
                    reason = not_applicable(attack, defense)
                    if reason is None:
                        est, meas = self.attack(attack, defense, d), self.measure(defense, d)
                    else:  # the runner records n/a: nothing is trained or measured
                        est = Estimate("n/a", 0, {"attack": 0.0}, f"n/a: {reason}")
                        meas = Estimate("n/a", 0, {"measure": 0.0})
                    rows.append(self.row(seed, dname, aname, "attack", est,
                                         {"attack": pipe.attack_key(cell)}))
                    rows.append(self.row(seed, dname, aname, "measure", meas,
                                         {"measure": pipe.measure_key(cell)}))
        return rows


def plan_matrix(cfg: RunConfig, defenses: list[str], attacks: list[str],
                results_dir: Path) -> list[PlanRow]:
    """Every stage ``run_matrix(cfg, defenses, attacks, results_dir)`` would compute or load,
    with what it trains and its estimated FLOPs; trains and writes nothing."""
    from bench.matrix import fold_configs

    rows: list[PlanRow] = []
    with torch.random.fork_rng(devices=[]):  # fresh models draw init weights: keep the RNG as it was
        for fold, cfg_f in fold_configs(cfg):  # each identity fold is its own set of stages
            fold_rows = Planner(cfg_f, results_dir).plan(defenses, attacks)
            if fold is not None:
                fold_rows = [dataclasses.replace(r, note="; ".join(n for n in (f"fold {fold}", r.note) if n))
                             for r in fold_rows]
            rows += fold_rows
    return rows


# -- formatting -------------------------------------------------------------------------------------
def si(value: float, unit: str = "") -> str:
    """``3.2 P`` style: three significant digits with an SI prefix (k … E); 0 as ``0``."""
    if value == 0:
        return f"0 {unit}".rstrip()
    for exp, prefix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10 ** exp:
            return f"{value / 10 ** exp:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def duration(hours: float) -> str:
    """Hours in a readable unit: ``0``, ``42 s``, ``12 min``, ``3.1 h``, ``2.5 d``."""
    if hours == 0:
        return "0"
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min"
    if hours < 48:
        return f"{hours:.3g} h"
    return f"{hours / 24:.3g} d"


def format_plan(rows: list[PlanRow], tflops: float = DEFAULT_TFLOPS) -> str:
    """The plan as a table (one row per stage) with the totals under it."""
    from bench.reporting.tables import format_table

    if not tflops > 0:
        raise ConfigError(f"--throughput-tflops must be > 0, got {tflops}")
    per_hour = tflops * 1e12 * 3600
    table = pd.DataFrame([{
        "seed": r.seed, "defense": r.defense, "attack": r.attack, "stage": r.stage,
        "stored": r.stored, "model": r.model, "params": si(r.params) if r.params else "-",
        "FLOPs": si(r.flops), "time_left": duration(r.flops_left / per_hour), "note": r.note,
    } for r in rows])
    cells = len({(r.seed, r.defense, r.attack) for r in rows if r.stage == "measure"})
    left = sum(r.flops_left for r in rows)
    stored = sum(r.stored == "yes" for r in rows)
    hours = left / per_hour
    return "\n".join([
        f"dry run: {cells} cells, {len(rows)} stages; nothing is trained or written",
        format_table(table) if rows else "(no stages)",
        f"work left: {si(left, 'FLOP')} = {hours:.3g} h{f' ({duration(hours)})' if hours else ''} "
        f"at {tflops:g} TFLOP/s sustained ({THROUGHPUT_NOTE})",
        f"stages: {stored} stored, {len(rows) - stored} to compute",
        ESTIMATE_NOTE,
    ])
