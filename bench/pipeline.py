"""The stages of one cell (ARCHITECTURE "The stages of one cell"), each stored in the artifact
store under a key derived from config and code alone (effective options, upstream keys,
harness version, a fingerprint of the modules that compute it: :mod:`bench.fingerprint`):

    baseline ─► defense_fit ─► defense_recognizer ─► leak ─► attack ─► measure

``baseline`` (the recognizer F1 on raw images) is shared by every cell of a dataset and seed;
``defense_*`` and ``leak`` by every attack on the same defense.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench import __version__
from bench.config import RunConfig
from bench.core.context import Context
from bench.core.contract import TEMPLATE_EXTRA, Leak, Reconstruction
from bench.core.registry import ATTACKS, DATASETS, DEFENSES, Entry
from bench.core.curves import CurveLog, recording_curves
from bench.data.facedata import FaceData
from bench.environment import environment
from bench.fingerprint import harness_fingerprint, plugin_fingerprint
from bench.plugins import load_plugins
from bench.recognition import embed, tensor_digest, train_recognizer, verify
from bench.store import ArtifactStore, stage_key

N_SAMPLES = 8  # reconstructions kept per cell for figures


@dataclass(frozen=True)
class Cell:
    seed: int
    defense: str
    attack: str
    fold: int | None = None  # identity fold (``--folds``); None for the single split

    @property
    def id(self) -> str:
        fold = "" if self.fold is None else f"__f{self.fold}"
        return f"{self.defense}__{self.attack}__s{self.seed}{fold}"


def plugin_options(cfg_section: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Options a config gives plugin ``name``: its base name's table, then the variant's own."""
    base = name.split(".")[0]
    return {**cfg_section.get(base, {}), **(cfg_section.get(name, {}) if name != base else {})}


def effective_options(entry: Entry, overrides: dict[str, Any], what: str) -> dict[str, Any]:
    """The options a registered plugin is built with, every default filled in: its ``Options``
    dataclass built from the variant's options and ``overrides`` (the given dict when the factory
    has no ``Options`` dataclass)."""
    from bench.config import build_options

    given = {**entry.options, **overrides}
    cls = getattr(entry.factory, "Options", None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return given
    return dataclasses.asdict(build_options(cls, given, what))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from bench.core.errors import ConfigError

        raise ConfigError("device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _load_data(data_json: str, seed: int) -> FaceData:
    from bench.config import DataConfig, build_options

    cfg = build_options(DataConfig, json.loads(data_json), "data")
    return DATASETS.get(cfg.name).factory(cfg, seed)


class Pipeline:
    """Computes (or loads) every stage of a cell from a resolved config and an artifact store."""

    def __init__(self, cfg: RunConfig, store: ArtifactStore, progress: bool = True,
                 tensorboard: str | Path | None = None) -> None:
        load_plugins()
        self.cfg = cfg
        self.store = store
        self.progress = progress
        self.tensorboard = tensorboard  # a folder: training curves also written live there
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once

    # -- keys (config and code only; nothing is loaded) ------------------------------------------
    # Each key hashes the stage's effective settings (plugin options with every default filled
    # in, the full data/recognizer/metrics sections), its upstream key, the harness version
    # (stage_key) and a fingerprint of the code that computes it (bench.fingerprint): an edited
    # default, plugin or harness module retires exactly the stages it computes.
    def data_key(self, seed: int) -> str:
        return stage_key("data", data=dataclasses.asdict(self.cfg.data), seed=seed,
                         code=plugin_fingerprint(DATASETS.get(self.cfg.data.name).factory))

    def baseline_key(self, seed: int) -> str:
        return stage_key("baseline", data=self.data_key(seed),
                         recognizer=dataclasses.asdict(self.cfg.recognizer),
                         code=harness_fingerprint("baseline"))

    def defense_options(self, name: str) -> dict[str, Any]:
        """Every option defense ``name`` runs with: its Options defaults, the variant's, the config's."""
        return effective_options(DEFENSES.get(name), plugin_options(self.cfg.defenses, name),
                                 f"defense {name}")

    def attack_options(self, name: str) -> dict[str, Any]:
        """Every option attack ``name`` runs with: its Options defaults, the variant's, the config's."""
        return effective_options(ATTACKS.get(name), plugin_options(self.cfg.attacks, name),
                                 f"attack {name}")

    def fit_key(self, seed: int, defense: str) -> str:
        return stage_key("defense_fit", defense=defense, options=self.defense_options(defense),
                         baseline=self.baseline_key(seed),
                         code=plugin_fingerprint(DEFENSES.get(defense).factory))

    def recognizer_key(self, seed: int, defense: str) -> str:
        return stage_key("defense_recognizer", fit=self.fit_key(seed, defense))

    def leak_key(self, seed: int, defense: str) -> str:
        return stage_key("leak", recognizer=self.recognizer_key(seed, defense))

    def extended_leak_key(self, seed: int, defense: str) -> str:
        return stage_key("leak", base=self.leak_key(seed, defense), extended=True)

    def attack_leak_key(self, cell: Cell) -> str:
        """The leak an attack reads: the extended one when it ``requires`` structural entries."""
        if structural(ATTACKS.get(cell.attack).factory):
            return self.extended_leak_key(cell.seed, cell.defense)
        return self.leak_key(cell.seed, cell.defense)

    def attack_key(self, cell: Cell) -> str:
        return stage_key("attack", leak=self.attack_leak_key(cell), attack=cell.attack,
                         options=self.attack_options(cell.attack),
                         code=plugin_fingerprint(ATTACKS.get(cell.attack).factory))

    def measure_key(self, cell: Cell) -> str:
        return stage_key("measure", attack=self.attack_key(cell),
                         metrics=dataclasses.asdict(self.cfg.metrics),
                         code=harness_fingerprint("measure"))

    # -- stages -------------------------------------------------------------------------------
    def context(self, seed: int, *salt: object) -> Context:
        return Context(seed=seed, device=self.device, progress=self.progress,
                       recognizer=self.cfg.recognizer, workers=self.cfg.data.workers)

    def data(self, seed: int) -> FaceData:
        return _load_data(json.dumps(dataclasses.asdict(self.cfg.data), sort_keys=True), seed)

    def _fold(self) -> str:
        """``_f<fold>`` under ``--folds`` (labels of live curves), else empty."""
        return f"_f{self.cfg.data.fold}" if self.cfg.data.folds > 1 else ""

    @contextlib.contextmanager
    def curves(self, stage: str, label: str) -> Iterator[CurveLog]:
        """Record the training curves of a stage being computed (each training loop's per-epoch
        losses, :mod:`bench.core.training`); with ``tensorboard``, also write them live under
        ``<tensorboard>/<stage>/<label>``."""
        if self.tensorboard is None:
            with recording_curves() as log:
                yield log
            return
        from bench.tensorboard import TensorBoardSink

        with TensorBoardSink(Path(self.tensorboard) / stage / label) as sink, \
                recording_curves(sink) as log:
            yield log

    def baseline(self, seed: int) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            data, ctx, t0 = self.data(seed), self.context(seed), time.time()
            with self.curves("baseline", f"s{seed}{self._fold()}") as log:
                model = train_recognizer(data.train, ctx, desc="baseline recognizer")
            accuracy = {v.name: verify(model, v) for v in data.verification}
            return {"model": model.cpu(), "accuracy": accuracy, "seconds": time.time() - t0,
                    "threads": torch.get_num_threads(), "host": socket.gethostname(),
                    "curves": log.curves, **self._thresholds(model, data)}

        return self.store.get_or_compute("baseline", self.baseline_key(seed), compute)

    @staticmethod
    def _thresholds(model: torch.nn.Module, data: FaceData) -> dict[str, float]:
        """SRRA thresholds on cosine similarity: the verification threshold of the unprotected
        model (mean of the 10 fold thresholds) and the one at FAR = 1e-3 (ALGORITHMS §8)."""
        from metrics.identity import threshold_at_far, verification_accuracy

        v = data.primary_verification
        emb = embed(model, v.images)
        cos = (emb[0::2] * emb[1::2]).sum(1)
        tau = 1.0 - verification_accuracy(emb[0::2], emb[1::2], v.issame)["threshold_mean"] / 2.0
        tau_far = threshold_at_far(cos[v.issame], cos[~v.issame], 1e-3)
        return {"tau": float(tau), "tau_far": float(tau_far)}

    def _baseline_ctx(self, seed: int) -> Context:
        ctx = self.context(seed)
        ctx.baseline = self.baseline(seed)["model"].to(self.device)
        return ctx

    def defense_fit(self, seed: int, name: str) -> Any:
        def compute() -> Any:
            defense = DEFENSES.create(name, **plugin_options(self.cfg.defenses, name))
            defense.name = name
            data, ctx = self.data(seed), self._baseline_ctx(seed)
            with self.curves("defense_fit", f"{name}_s{seed}{self._fold()}") as log:
                defense.fit(data, ctx)
            defense.fit_curves = log.curves  # kept with the fitted state (a defense is the stage)
            return defense

        return self.store.get_or_compute("defense_fit", self.fit_key(seed, name), compute)

    def defense_recognizer(self, seed: int, name: str) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            defense, data, t0 = self.defense_fit(seed, name), self.data(seed), time.time()
            ctx = self._baseline_ctx(seed)
            with self.curves("defense_recognizer", f"{name}_s{seed}{self._fold()}") as log:
                model = defense.train_recognizer(data, ctx)
            gen = ctx.generator("verify", name)
            accuracy = {v.name: verify(model, v, defense.test_encode, gen) for v in data.verification}
            return {"defense": defense, "model": model.cpu(), "accuracy": accuracy,
                    "seconds": time.time() - t0, "threads": torch.get_num_threads(),
                    "host": socket.gethostname(), "curves": log.curves,
                    "record": getattr(defense, "record", {})}

        return self.store.get_or_compute("defense_recognizer", self.recognizer_key(seed, name), compute)

    def leak(self, seed: int, name: str) -> Leak:
        """The defense's leak, plus what attacker knowledge (ALGORITHMS §1 v2) needs: the
        deployment's secrets (``Leak.secrets``, white-box only), the public mechanism
        (``extra["mechanism"]``) and, when the defense has deployment secrets (its
        :meth:`~defenses.base.Defense.attacker_copy` differs from it), the pairs a black-box
        attacker simulates with secrets of its own (``Leak.black_box``). The black-box pairs are
        built by the copy alone: it never reads the deployment's key.

        ALGORITHMS §14 adds what identity-level attacks read: ``Leak.train_labels``, the
        identities of the attacker's public faces (:func:`public_labels`), and the defended
        recognizer F2's templates (:func:`templates`): ``extra["templates"]`` of the stolen faces
        (``leak.targets``; a stolen template database) and ``extra["train_templates"]`` of the
        attacker's public faces, computed with the deployment's encoding (white-box: the
        attacker holds F2 and the secrets) and, for the black-box pairs, with the copy's."""
        def compute() -> Leak:
            recog = self.defense_recognizer(seed, name)
            defense = recog["defense"]
            data, ctx = self.data(seed), self._baseline_ctx(seed)
            leak = defense.leak(data, ctx)
            leak.train_labels = public_labels(leak.train_targets, data.aux)
            model = recog.get("model")
            if model is not None:  # F2 where the defense ran; back on the CPU below
                model = model.to(ctx.device)
                gen = ctx.generator("templates", name)
                leak.extra["templates"] = templates(model, defense, leak.targets, gen)
                leak.extra["train_templates"] = templates(model, defense, leak.train_targets, gen)
            mechanism = defense.mechanism() if hasattr(defense, "mechanism") else None
            if mechanism is not None:
                leak.extra.setdefault("mechanism", mechanism)
            if hasattr(defense, "deployment_secrets"):
                leak.secrets = defense.deployment_secrets() or None
            copy = defense.attacker_copy(ctx.generator("attacker_secrets", name)) \
                if hasattr(defense, "attacker_copy") else defense
            if copy is not defense:
                bb = copy.leak(data, ctx)
                leak.black_box = {"train_inputs": bb.train_inputs,
                                  "train_targets": bb.train_targets, "extra": dict(bb.extra),
                                  "train_labels": public_labels(bb.train_targets, data.aux)}
                if model is not None:  # F2 on the attacker's own encoding (queries, §14)
                    leak.black_box["extra"]["train_templates"] = templates(
                        model, copy, bb.train_targets, ctx.generator("templates", name, "copy"))
            if model is not None:
                model.cpu()  # as the recognizer stage stores it
            return leak

        return self.store.get_or_compute("leak", self.leak_key(seed, name), compute)

    def extended_leak(self, seed: int, name: str) -> Leak:
        """The leak plus the structural entries of :meth:`~defenses.base.Defense.extend_leak`
        (for the deployment and, when there is one, for the black-box copy's own simulation),
        stored apart so that runs without a structural attack never build or store them."""
        def compute() -> Leak:
            base = self.leak(seed, name)
            leak = dataclasses.replace(base, extra=dict(base.extra), oracle=dict(base.oracle))
            defense = self.defense_recognizer(seed, name)["defense"]
            data, ctx = self.data(seed), self._baseline_ctx(seed)
            defense.extend_leak(leak, data, ctx)
            if leak.black_box is not None:
                copy = defense.attacker_copy(ctx.generator("attacker_secrets", name))
                own = copy.leak(data, ctx)
                copy.extend_leak(own, data, ctx)
                leak.black_box = {**leak.black_box, "extra": dict(own.extra)}
            return leak

        return self.store.get_or_compute("leak", self.extended_leak_key(seed, name), compute)

    def attack(self, cell: Cell) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            defense = self.defense_fit(cell.seed, cell.defense)
            attack = ATTACKS.create(cell.attack, **plugin_options(self.cfg.attacks, cell.attack))
            reason = not_applicable(attack, defense)
            if reason is not None:
                return {"status": "n/a", "reason": reason, "reconstruction": None, "seconds": 0.0,
                        "host": socket.gethostname()}
            t0 = time.time()
            knowledge = getattr(attack, "knowledge", "white_box")
            leak = (self.extended_leak(cell.seed, cell.defense) if structural(attack)
                    else self.leak(cell.seed, cell.defense))
            # only attacks that declare ``uses_oracle`` (upper bounds, labelled so) see Leak.oracle
            attacker_leak = leak.for_attacker(knowledge,
                                              oracle=bool(getattr(attack, "uses_oracle", False)))
            with self.curves("attack", cell.id) as log:
                recon = attack.run(attacker_leak, self.context(cell.seed, cell.attack))
            if hasattr(attack, "diagnose"):  # ground-truth scoring, after the reconstruction is fixed
                recon.info.update(attack.diagnose(leak, recon))
            return {"status": "ok", "reconstruction": recon, "seconds": time.time() - t0,
                    "threads": torch.get_num_threads(), "host": socket.gethostname(),
                    "curves": log.curves}

        return self.store.get_or_compute("attack", self.attack_key(cell), compute)

    def measure(self, cell: Cell) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            attack = self.attack(cell)
            recog = self.defense_recognizer(cell.seed, cell.defense)
            base = self.baseline(cell.seed)
            out: dict[str, Any] = {
                "status": attack["status"],
                "na_reason": attack.get("reason") if attack["status"] == "n/a" else None,
                "accuracy": recog["accuracy"],
                "baseline_accuracy": base["accuracy"],
                "record": recog.get("record", {}),
                "seconds": {"baseline": base["seconds"], "defense_recognizer": recog["seconds"],
                            "attack": attack["seconds"]},
                # CPU float reductions depend on the intra-op thread count, so it is provenance
                "torch_threads": {"baseline": base.get("threads"),
                                  "defense_recognizer": recog.get("threads"),
                                  "attack": attack.get("threads")},
                # which machine computed each stage (a cluster run spreads them over hosts)
                "hosts": {"baseline": base.get("host"), "defense_recognizer": recog.get("host"),
                          "attack": attack.get("host"), "measure": socket.gethostname()},
                "environment": environment(self.device),
                # per-epoch training losses of every stage the cell rests on (report.html plots
                # them; an attack still improving at its last epoch is flagged "not converged")
                "curves": {"baseline": base.get("curves", []),
                           "defense_fit": getattr(recog["defense"], "fit_curves", []),
                           "defense_recognizer": recog.get("curves", []),
                           "attack": attack.get("curves", [])},
            }
            if attack["status"] == "ok":
                leak = self.leak(cell.seed, cell.defense)
                out.update(measure_privacy(leak, attack["reconstruction"], base, self.cfg))
                # what the attack reports about itself (knowledge, channel matching, …)
                out["attack_info"] = json_scalars(attack["reconstruction"].info)
            return out

        return self.store.get_or_compute("measure", self.measure_key(cell), compute)

    def stage_keys(self, cell: Cell) -> dict[str, str]:
        """The key of every stage the cell rests on (what ``python -m bench pack`` bundles):
        ``leak`` is the plain leak (measured against), ``attack_leak`` the one the attack read
        when it is the extended leak."""
        keys = {"baseline": self.baseline_key(cell.seed),
                "defense_fit": self.fit_key(cell.seed, cell.defense),
                "defense_recognizer": self.recognizer_key(cell.seed, cell.defense),
                "leak": self.leak_key(cell.seed, cell.defense),
                "attack": self.attack_key(cell), "measure": self.measure_key(cell)}
        if self.attack_leak_key(cell) != keys["leak"]:
            keys["attack_leak"] = self.attack_leak_key(cell)
        return keys

    def cell_record(self, cell: Cell, run_id: str) -> dict[str, Any]:
        """The JSON record of one cell (ARCHITECTURE "Results are data")."""
        m = self.measure(cell)
        return {
            "schema": 1,
            "harness_version": __version__,
            "run_id": run_id,
            "dataset": self.cfg.data.name,
            "preset": self.cfg.preset,
            "seed": cell.seed,
            "fold": cell.fold,
            "folds": self.cfg.data.folds,
            "defense": cell.defense,
            "defense_options": self.defense_options(cell.defense),
            "protected": bool(getattr(DEFENSES.get(cell.defense).factory, "protected", True)),
            "domain": getattr(DEFENSES.get(cell.defense).factory, "domain", "image"),
            "attack": cell.attack,
            "attack_options": self.attack_options(cell.attack),
            # ALGORITHMS §1 v2: recorded with every cell (also inside attack_options)
            "knowledge": self.attack_options(cell.attack).get("knowledge", "white_box"),
            "bn_recalibration": self.cfg.recognizer.bn_recalibration,
            **m,
            **attack_strength(cell, m),
            "stage_keys": self.stage_keys(cell),
        }


def attack_strength(cell: Cell, measured: dict[str, Any]) -> dict[str, Any]:
    """ALGORITHMS §15 metadata of a cell's attack: its ``attack_family``, its strength
    ``attack_floor`` on ``none`` and, on a measured ``none`` cell, ``underpowered`` (a metric
    under the floor) with ``floor_shortfall`` ``{metric: [value, floor]}``; ``underpowered`` is
    None elsewhere (the floor is about the unprotected defense)."""
    factory = ATTACKS.get(cell.attack).factory
    floor = {k: float(v) for k, v in (getattr(factory, "floor", None) or {}).items()}
    out: dict[str, Any] = {"attack_family": getattr(factory, "family", "other"),
                           "attack_floor": floor, "underpowered": None}
    if cell.defense.split(".")[0] == "none" and measured.get("status") == "ok" and floor:
        check = getattr(factory, "floor_shortfall", None)
        short = check(measured.get("privacy") or {}) if check is not None else {}
        out.update(underpowered=bool(short), floor_shortfall=short)
    return out


def json_scalars(info: dict[str, Any], max_list: int = 64) -> dict[str, Any]:
    """The JSON-friendly part of a ``Reconstruction.info``: numbers, strings, booleans, None and
    short lists of them; tensors and long lists are left out (they live in the attack stage)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[str(key)] = value
        elif isinstance(value, (list, tuple)) and len(value) <= max_list and all(
                isinstance(v, (bool, int, float, str)) or v is None for v in value):
            out[str(key)] = list(value)
    return out


def not_applicable(attack: Any, defense: Any) -> str | None:
    """Why ``attack`` does not apply to ``defense`` (None when it does). Attacks derived from
    :class:`attacks.base.Attack` answer through ``not_applicable``; a duck-typed plugin with only
    ``applies_to`` (a bool, or a str reason) keeps working."""
    if hasattr(attack, "not_applicable"):
        return attack.not_applicable(defense)
    ok = attack.applies_to(defense) if hasattr(attack, "applies_to") else True
    if isinstance(ok, str):
        return ok or None
    return None if ok else f"attack {getattr(attack, 'name', '?')} does not apply to this defense"


def structural(attack: Any) -> bool:
    """Whether an attack (class or instance) ``requires`` entries of the extended leak
    (:meth:`~defenses.base.Defense.extend_leak`); F2's templates are in every leak."""
    return any(k not in TEMPLATE_EXTRA for k in getattr(attack, "requires", ()))


def public_labels(faces: torch.Tensor, aux: Any) -> torch.Tensor | None:
    """The identity of each of the attacker's public faces ``faces`` (a leak's ``train_targets``,
    rows of ``aux.images``, repeated or subset as a defense's simulation made them), found by
    exact content (ALGORITHMS §14: the attacker owns its public faces and their labels). None when
    the split has no labels or a face is not one of ``aux``'s."""
    labels = getattr(aux, "labels", None)
    images = getattr(aux, "images", None)
    if labels is None or images is None or faces is None:
        return None
    if faces.shape == images.shape and torch.equal(faces, images):
        return labels.clone()
    index = {_row_key(x): int(y) for x, y in zip(images, labels)}
    found = [index.get(_row_key(x)) for x in faces]
    return None if any(f is None for f in found) else torch.tensor(found, dtype=torch.long)


def _row_key(x: torch.Tensor) -> bytes:
    import hashlib

    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).digest()


def templates(model: torch.nn.Module, defense: Any, faces: torch.Tensor | None,
              gen: torch.Generator) -> torch.Tensor | None:
    """F2's templates of ``faces``: the defended recognizer's unit embeddings of the defense's
    test-time encoding, flip-averaged — what the deployment verifies with (§8) and stores."""
    if faces is None:
        return None
    return embed(model, faces, defense.test_encode, gen)


@functools.lru_cache(maxsize=2)
def _lpips(weights: str | None) -> Any:
    from metrics.image import Lpips

    return Lpips.load(weights)


def measure_privacy(leak: Leak, recon: Reconstruction, base: dict[str, Any],
                    cfg: RunConfig) -> dict[str, Any]:
    """S1–S4, SSIM/PSNR/MSE, SRRA and SRRA_other of one cell (ALGORITHMS §8, §14); the
    ``link_*`` scores of an identity-level attack that reconstructs no image
    (:func:`measure_linkage`)."""
    from metrics.identity import cosine, srra
    from metrics.image import mse, perceptual_distance, psnr, ssim
    from metrics.scores import raw_pp, s_identity, s_perceptual

    lp = _lpips(cfg.metrics.lpips_weights)
    if recon.images is None:
        return measure_linkage(leak, recon, perceptual_distance(leak.targets[:1], leak.targets[:1], lp)[1])
    f1 = base["model"]
    orig = leak.targets
    rec = _match_channels(recon.images.clamp(0, 1), orig)
    e_orig, e_rec = embed(f1, orig), embed(f1, rec)
    d3, perceptual_name = perceptual_distance(orig, rec, lp)
    out: dict[str, Any] = {"perceptual_metric": perceptual_name,
                           "lpips_unavailable_reason": None if lp.available else lp.reason}
    s1 = s2 = float("nan")
    if leak.views is not None:
        views = _match_channels(leak.views, orig)
        d1, _ = perceptual_distance(orig, views, lp)
        s1, s2 = s_perceptual(d1), s_identity(cosine(e_orig, embed(f1, views)))
    s3, s4 = s_perceptual(d3), s_identity(cosine(e_orig, e_rec))
    ssim_t, psnr_t, mse_t = ssim(orig, rec), psnr(orig, rec), mse(orig, rec)
    out["privacy"] = {
        "S1": s1, "S2": s2, "S3": s3, "S4": s4, "raw_pp": raw_pp(s1, s2, s3, s4),
        "SSIM": float(ssim_t.mean()), "PSNR": float(psnr_t.mean()), "MSE": float(mse_t.mean()),
        "SRRA": srra(e_rec, e_orig, base["tau"]), "SRRA_far1e-3": srra(e_rec, e_orig, base["tau_far"]),
    }
    # per target, for intervals and paired tests over targets (ALGORITHMS §12)
    cos = cosine(e_rec, e_orig)
    out["per_target"] = {
        "SSIM": ssim_t.tolist(), "PSNR": psnr_t.tolist(), "MSE": mse_t.tolist(),
        "SRRA": (cos >= base["tau"]).int().tolist(), "SRRA_far1e-3": (cos >= base["tau_far"]).int().tolist(),
    }
    out["privacy"].update(srra_other_scores(e_rec, e_orig, leak.labels, base, out["per_target"]))
    out["targets_digest"] = tensor_digest(orig)
    if cfg.metrics.evaluator == "dlib":  # independent pretrained embedder (optional extra)
        from metrics.dlib_evaluator import independent_scores

        dlib_scores = independent_scores(orig, rec)
        out["privacy"]["dlib_similarity"] = dlib_scores["similarity"]
        out["privacy"]["dlib_SRRA"] = dlib_scores["SRRA"]
    out["n_test"] = len(orig)
    shown = sample_indices(leak.labels, len(orig), N_SAMPLES)
    to8 = lambda t: (t[shown].clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    out["samples"] = {"original": to8(orig), "reconstruction": to8(rec),
                      "view": None if leak.views is None else to8(_match_channels(leak.views, orig))}
    return out


def srra_other_scores(e_rec: torch.Tensor, e_orig: torch.Tensor, labels: torch.Tensor | None,
                      base: dict[str, Any], per_target: dict[str, list]) -> dict[str, float]:
    """``SRRA_other`` / ``SRRA_other_far1e-3`` (ALGORITHMS §14): each reconstruction against the
    *other* photos of its person (:func:`metrics.identity.srra_other`), averaged over the targets
    whose person has another photo; their per-target values go into ``per_target`` when every
    target has one (a vector with holes could not be paired item by item)."""
    from metrics.identity import srra_other

    out: dict[str, float] = {}
    for name, tau in (("SRRA_other", base["tau"]), ("SRRA_other_far1e-3", base["tau_far"])):
        if labels is None:
            out[name] = float("nan")
            continue
        v = srra_other(e_rec, e_orig, labels, tau)
        ok = ~torch.isnan(v)
        out[name] = float(v[ok].mean()) if ok.any() else float("nan")
        if ok.all():
            per_target[name] = v.tolist()
    return out


#: ALGORITHMS §14: the linkage scores a cell records (with the chance levels beside them).
LINK_METRICS = ("link_verif_acc", "link_tar@far1e-3", "link_rank1", "link_rank5")
LINK_CHANCE = ("link_chance", "link_chance5")


def measure_linkage(leak: Leak, recon: Reconstruction, perceptual_name: str) -> dict[str, Any]:
    """The record of an identity-level attack that reconstructs no image (ALGORITHMS §14): its
    ``link_*`` scores (computed by its ``diagnose`` against the test identities) and chance
    levels under ``privacy``, and per-item vectors for intervals and paired tests: per probe
    ``link_rank1`` / ``link_rank5`` hits (probes whose person has another photo) and per pair
    ``link_verif_acc`` outcomes. No image metric is measured (no image was made)."""
    info = recon.info

    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    privacy = {k: num(info.get(k)) for k in LINK_METRICS + LINK_CHANCE}
    per_target: dict[str, list] = {}
    ranks = [int(r) for r in info.get("per_probe_rank") or [] if int(r) > 0]
    if ranks:
        per_target["link_rank1"] = [int(r <= 1) for r in ranks]
        per_target["link_rank5"] = [int(r <= 5) for r in ranks]
    if isinstance(info.get("per_pair_correct"), list):
        per_target["link_verif_acc"] = [int(c) for c in info["per_pair_correct"]]
    return {"perceptual_metric": perceptual_name, "lpips_unavailable_reason": None,
            "privacy": privacy, "per_target": per_target,
            "targets_digest": tensor_digest(leak.targets, torch.as_tensor(leak.labels))
            if leak.labels is not None else tensor_digest(leak.targets),
            "n_test": len(leak.targets)}


def sample_indices(labels: torch.Tensor | None, n: int, k: int) -> torch.Tensor:
    """Up to ``k`` test faces to show in figures: the first face of each identity in order, then
    the next faces, so a grid shows as many different people as the test split has."""
    if labels is None:
        return torch.arange(min(n, k))
    first: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        first.setdefault(int(y), i)
    picked = list(first.values())[:k]
    taken = set(picked)
    rest = [i for i in range(n) if i not in taken]
    return torch.tensor(picked + rest[:k - len(picked)], dtype=torch.long)


def _match_channels(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bring ``x`` to ``like``'s channel count and size (gray views of RGB faces, etc.)."""
    if x.shape[-2:] != like.shape[-2:]:
        shrink = x.shape[-1] > like.shape[-1]  # antialias when shrinking (views of upsampled maps)
        x = F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False,
                          antialias=shrink)
    if x.shape[1] == like.shape[1]:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, like.shape[1], -1, -1)
    return x.mean(1, keepdim=True)
