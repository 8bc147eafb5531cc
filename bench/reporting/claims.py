"""``bench claims RUN``: the papers' directional claims (ALGORITHMS §12) checked against a run.

Every claim reduces to one or more *contrasts* between cells of the run — a difference B − A, a
least-squares slope over k, the k3→k4 step — each with a stated threshold ``t`` on the side the
paper claims (t = 0 for a bare direction; the words "far", "sharply", "about", "nearly", "most"
get the thresholds in :data:`THRESHOLDS`, our `[ASSUMP]`, printed with every verdict). A contrast
is judged from its 95 % interval (:func:`bench.reporting.stats.contrast`, §12.1: a paired t over
matched replicates, Welch t over unmatched ones, items only with one replicate):

- **holds** when the whole interval lies beyond ``t`` on the claimed side;
- **contradicted** when the whole interval lies on the other side of ``t``;
- **inconclusive** otherwise (the interval straddles ``t``, or there is no interval);
- **inconclusive (r replicates)** whenever the contrast rests on fewer than
  :data:`~bench.reporting.stats.MIN_REPLICATES` replicates (seeds × folds) per side: the evidence
  and what its interval alone would say are shown, with the command that would decide it.

A claim holds when all its contrasts hold and the run has every cell the claim names (a claim
about MixUp *and* InstaHide with one family missing is at most inconclusive); it is contradicted
when any contrast is, and *not in this run* when the run lacks the cells it needs. Verdicts never
change the exit code unless ``--strict``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bench.reporting.cells import (DIGEST, ITEMS, acc_columns, base_name, cells_frame, load_cells,
                                   primary_acc_column)
from bench.reporting.stats import MIN_REPLICATES, Interval, contrast
from bench.store import atomic_write_text

#: the thresholds the claims' words stand for ([ASSUMP]; printed with every verdict)
THRESHOLDS = {
    "sharply": 5.0,  # accuracy points lost from k = 3 to k = 4
    "far_accuracy": 10.0,  # accuracy points (PEEP vs PPFR-FD)
    "near": 3.0,  # accuracy points (AdaMixUp vs fixed k = 2–3; XNN vs the clean split)
    "large_share": 0.30,  # share of batches AdaMixUp mixes with k ≥ 4
    "about_cost": 5.0,  # AdvFace online costs at most this many points ("about 2")
    "most": 0.5,  # "recovers most of it": offline recovers more than this share of online's cost
    "far_ssim": 0.10, "far_psnr": 1.0, "far_srra": 0.10,  # AdvFace vs its baselines
    "transfer_ssim": 0.05,  # AdvFace below the unprotected split, per attacker decoder
    "resist_ssim": 0.10, "resist_srra": 0.10,  # "resists recovery": below `none` by this much
}
PREFERRED_ATTACKS = ("cgan", "resrec")  # the attack a privacy claim reads when the run has several
DECODER_ATTACKS = ("resrec", "urec", "transrec")  # [A]'s decoder reconstructions
RESTORE_ID = "restore_id_acc"  # §9's restore-identification accuracy (xnn_expected)
#: §13's defenses with the abstract claim each paper makes (claims 11–14)
FREQUENCY_PAPERS = (("dctdp", "[DCTDP] ECCV'22 abstract"), ("partialface", "[PartialFace] ICCV'23 abstract"),
                    ("minusface", "[MinusFace] CVPR'24 abstract"), ("slerpface", "[SlerpFace] AAAI'25 abstract"))
#: the frequency-domain defenses claim 15 (FaceLinkGen's finding) is checked on
FREQUENCY_DEFENSES = ("dctdp", "partialface", "minusface", "slerpface", "duetface", "ppfr_fd")
LINKAGE = "linkage"
INCONCLUSIVE = "inconclusive"
#: named when the caller gives no command (``bench claims`` gives the run's own: bench.rerun)
GENERIC_COMMAND = "python -m bench run <this run's arguments> --seeds 0,1,2"


def replicate_limited(verdict: str) -> bool:
    """An ``inconclusive (r replicates)`` verdict: too few replicates, whatever the interval."""
    return verdict.startswith(f"{INCONCLUSIVE} (")


def _few(r: int) -> str:
    return f"{INCONCLUSIVE} ({r} replicate{'s' if r != 1 else ''})"


@dataclass
class Evidence:
    """One contrast (B − A for a difference) with its threshold and verdict."""

    what: str
    a: str
    b: str
    metric: str
    side: int  # +1: the claim says the contrast > t; −1: the contrast < −t
    threshold: float
    delta: float
    low: float
    high: float
    test: str
    verdict: str
    replicates: int = 0  # replicates per side the interval rests on
    leaning: str = ""  # what the interval alone says (shown when the replicates are too few)
    expr: str = ""  # the contrast in words when it is not B − A

    def line(self) -> str:
        rel = ">" if self.side > 0 else "<"
        t = self.threshold * self.side + 0.0  # + 0.0: no "-0" for a zero threshold
        if self.expr:
            value = f"{self.expr} on {self.metric}"
        elif self.a == "-":
            value = f"{self.metric} of {self.b}"
        else:
            value = f"{self.b} − {self.a} on {self.metric}"
        interval = ("" if math.isnan(self.low) or math.isnan(self.high)
                    else f" [{_f(self.low)}, {_f(self.high)}]")
        lean = (f"; the interval alone: {self.leaning}" if replicate_limited(self.verdict)
                and self.leaning else "")
        return (f"{self.what}: {value} = {_f(self.delta)}{interval} ({self.test}); "
                f"claim: {rel} {_f(t)} → {self.verdict}{lean}")


@dataclass
class ClaimResult:
    number: int
    source: str
    text: str
    verdict: str
    evidence: list[Evidence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incomplete: bool = False  # the run lacks a cell the claim names: at most inconclusive
    #: evidence indices of alternative cases: the claim holds when one case holds entirely and is
    #: contradicted when every case is (claim 15: any one defense showing it is the finding)
    cases: list[list[int]] = field(default_factory=list)
    decide: str | None = None  # the command that would decide an inconclusive (r replicates)


def _f(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def interval_verdict(iv: Interval, side: int, threshold: float) -> str:
    """What the interval alone says (see the module docstring)."""
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return INCONCLUSIVE
    lo, hi = (iv.low, iv.high) if side > 0 else (-iv.high, -iv.low)
    if lo > threshold:
        return "holds"
    if hi < threshold:
        return "contradicted"
    return INCONCLUSIVE


def judge(iv: Interval, side: int, threshold: float) -> str:
    """The verdict of one contrast: :func:`interval_verdict`, but never holds / contradicted on
    fewer than MIN_REPLICATES replicates per side (§12.1)."""
    verdict = interval_verdict(iv, side, threshold)
    if iv.n_replicates < MIN_REPLICATES and math.isfinite(iv.mean):
        return _few(iv.n_replicates)
    return verdict


def combine(verdicts: list[str], incomplete: bool = False) -> str:
    """A claim's verdict from its contrasts' (``incomplete``: a named cell is missing)."""
    if not verdicts:
        return "not in this run"
    if "contradicted" in verdicts:
        return "contradicted"
    if all(v == "holds" for v in verdicts) and not incomplete:
        return "holds"
    few = [v for v in verdicts if replicate_limited(v)]
    if few:  # the fewest replicates decide what is missing
        return min(few, key=lambda v: int(v.split("(")[1].split()[0]))
    return INCONCLUSIVE


class RunCells:
    """Per-item vectors of a run's cells, by defense (and attack for privacy metrics)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        df = cells_frame(records)
        if "fold" not in df:
            df["fold"] = None
        self.df = df[df["status"].fillna("ok") == "ok"] if not df.empty else df
        self.all = df
        acc = acc_columns(df) if not df.empty else []
        self.acc = primary_acc_column(acc)
        self.defenses = set(df["defense"]) if not df.empty else set()

    def has(self, *defenses: str) -> bool:
        return all(d in self.defenses for d in defenses)

    def attack_for(self, *defenses: str, prefer: Sequence[str] = PREFERRED_ATTACKS) -> str | None:
        """The attack privacy claims read: the first of ``prefer`` the cells share, else the
        first in name order."""
        shared = None
        for d in defenses:
            atts = set(self.df.loc[self.df["defense"] == d, "attack"])
            shared = atts if shared is None else shared & atts
        if not shared:
            return None
        for a in prefer:
            if a in shared:
                return a
        return sorted(shared)[0]

    @staticmethod
    def _key(rec: dict[str, Any]) -> tuple:
        fold = rec.get("fold")
        return rec.get("seed"), fold if fold == fold else None  # NaN → None

    def items(self, defense: str, metric: str, attack: str | None = None) -> dict:
        """``{(seed, fold): (digest, vector)}``; a metric without per-item vectors becomes one
        value per replicate (``digest`` None: never paired over items)."""
        if metric == RESTORE_ID:
            return self._restore_items(defense, attack)
        frame = self.all if metric.startswith("acc_") else self.df
        sub = frame[frame["defense"] == defense]
        if attack is not None and not metric.startswith("acc_"):
            sub = sub[sub["attack"] == attack]
        out: dict = {}
        for _, r in sub.iterrows():
            key = self._key(r)
            if key in out:
                continue  # accuracy repeats in every attack's cell
            vec = r.get(f"{ITEMS}{metric}")
            if isinstance(vec, list):
                out[key] = (r.get(f"{DIGEST}{metric}"), vec)
            elif r.get(metric) == r.get(metric) and r.get(metric) is not None:
                out[key] = (None, [float(r[metric])])
        return out

    def _restore_items(self, defense: str, attack: str | None) -> dict:
        """§9's restore-identification accuracy of the expected recognition attack, per replicate
        as the 0/1 outcomes of its ``n_query`` queries (``attack_info``; per-query order is not
        recorded, so never paired over items)."""
        out: dict = {}
        for rec in self.records:
            info = rec.get("attack_info") or {}
            acc, n = info.get("expected_recognition_acc"), info.get("n_query")
            if (rec["defense"] != defense or (attack and rec["attack"] != attack)
                    or rec.get("status", "ok") != "ok" or acc is None):
                continue
            n = int(n) if isinstance(n, (int, float)) and n > 0 else 0
            hits = int(round(float(acc) * n))
            out[self._key(rec)] = (None, [1.0] * hits + [0.0] * (n - hits) if n else [float(acc)])
        return out

    def k_shares(self, defense: str) -> dict:
        """Per replicate, the share of training batches AdaMixUp mixed with k ≥ 4 (its
        ``record.k_share``; every seed's, once per replicate)."""
        out: dict = {}
        for rec in self.records:
            shares = (rec.get("record") or {}).get("k_share")
            if rec["defense"] != defense or not isinstance(shares, dict) or not shares:
                continue
            out.setdefault(self._key(rec), (None, [sum(float(v) for k, v in shares.items()
                                                       if int(k) >= 4)]))
        return out


def _evidence(what: str, a: str, b: str, metric: str, side: int, threshold: float,
              groups: list[dict], weights: Sequence[float], expr: str = "") -> Evidence:
    """Judge ``Σ w_g · μ_g`` of ``groups`` (items of each cell) against ``side``/``threshold``."""
    iv = contrast(groups, weights)
    return Evidence(what, a, b, metric, side, threshold, iv.mean, iv.low, iv.high, iv.method,
                    judge(iv, side, threshold), iv.n_replicates,
                    interval_verdict(iv, side, threshold), expr)


def _diff(cells: RunCells, what: str, a: str, b: str, metric: str, side: int, threshold: float,
          attack: str | None = None) -> Evidence:
    """B − A on ``metric`` (accuracy once per defense; privacy under ``attack``)."""
    label = metric + (f" ({attack})" if attack and not metric.startswith("acc_") else "")
    return _evidence(what, a, b, label, side, threshold,
                     [cells.items(a, metric, attack), cells.items(b, metric, attack)], [-1, 1])


def _slope_weights(xs: list[int]) -> np.ndarray:
    """Least-squares slope over ``xs`` as weights on the per-x means: Σ w·m is the slope."""
    x = np.asarray(xs, dtype=float)
    return (x - x.mean()) / float(np.sum((x - x.mean()) ** 2))


def _missing(cells: RunCells, names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in cells.defenses]


# -- the claims -------------------------------------------------------------------------------------
def claim_fd_beats_rgb(c: RunCells) -> ClaimResult:
    r = ClaimResult(1, "[H] Table 1", "the frequency domain beats RGB in accuracy for MixUp and for "
                    "InstaHide", "not in this run")
    absent = []
    for fam in ("mixup", "instahide"):
        if c.has(f"{fam}_rgb", f"{fam}_fd") and c.acc:
            r.evidence.append(_diff(c, fam, f"{fam}_rgb", f"{fam}_fd", c.acc, +1, 0.0))
        else:
            absent += _missing(c, (f"{fam}_rgb", f"{fam}_fd"))
    if r.evidence and absent:
        r.incomplete = True
        r.notes.append(f"the claim names both families: add {','.join(absent)} to --defenses "
                       "(at most inconclusive without them)")
    return r


def _masking_ks(c: RunCells) -> dict[int, str]:
    return {int(d.split(".k")[1]): d for d in c.defenses
            if base_name(d) == "masking_mixup" and d.split(".k")[-1].isdigit()}


def claim_accuracy_falls_with_k(c: RunCells) -> ClaimResult:
    """§12.1's trend claim: the least-squares slope of accuracy over k is negative, and the
    k3→k4 step drops more than ``sharply`` points and more than the mean of the other steps."""
    t = THRESHOLDS["sharply"]
    r = ClaimResult(2, "[H] Table 2", f"Masking+MixUp accuracy falls as k grows (slope over k < 0), "
                    f"sharply from k = 4 (k3 → k4 drops more than {t:g} points and more than the "
                    "mean of the other steps)", "not in this run")
    ks = _masking_ks(c)
    order = sorted(ks)
    if len(order) < 2 or not c.acc:
        return r
    items = {k: c.items(ks[k], c.acc) for k in order}
    names = [ks[k] for k in order]
    span = f"k = {order[0]}..{order[-1]}"
    r.evidence.append(_evidence("trend", "+".join(names), "slope", c.acc, -1, 0.0,
                                [items[k] for k in order], _slope_weights(order),
                                f"least-squares slope per unit k over {span}"))
    if 3 in ks and 4 in ks:
        r.evidence.append(_evidence("sharp step", ks[3], ks[4], c.acc, -1, t,
                                    [items[3], items[4]], [-1, 1]))
        # other consecutive steps (k → k+1) present in the run, as drops m_k − m_{k+1}
        others = [k for k in order if k != 3 and k + 1 in ks]
        if others:
            w = {k: 0.0 for k in order}
            w[3] += 1.0
            w[4] -= 1.0  # the k3→k4 drop m3 − m4 …
            for k in others:  # … minus the mean of the other drops
                w[k] -= 1.0 / len(others)
                w[k + 1] += 1.0 / len(others)
            r.evidence.append(_evidence(
                "step beyond the others", "+".join(names), "step", c.acc, +1, 0.0,
                [items[k] for k in order], [w[k] for k in order],
                "k3→k4 drop − mean drop of " + ", ".join(f"k{k}→k{k + 1}" for k in others)))
        else:
            r.incomplete = True
            r.notes.append("no other step to compare the k3 → k4 step with: add "
                           "masking_mixup.k2 or .k5")
    else:
        r.incomplete = True
        r.notes.append("the k3 → k4 step needs masking_mixup.k3 and masking_mixup.k4")
    accs = {k: c.all.loc[c.all["defense"] == ks[k], c.acc].mean() for k in order}
    r.notes.insert(0, "accuracy by k: " + ", ".join(f"k{k} {v:.1f}" for k, v in accs.items()))
    return r


def _privacy_metric(c: RunCells, defenses: list[str], attack: str) -> tuple[str, int]:
    """raw_pp (higher = more private) when it has an interval (≥ 2 replicates), else SSIM of the
    reconstruction as the privacy proxy (lower = more private)."""
    raw = [c.items(d, "raw_pp", attack) for d in defenses]
    if all(len(x) >= 2 for x in raw):
        return "raw_pp", +1
    return "SSIM", -1


PROXY_NOTE = ("raw_pp has no interval with one replicate: judged on the reconstruction SSIM "
              "(lower = more private) instead")


def claim_privacy_rises_with_k(c: RunCells) -> ClaimResult:
    r = ClaimResult(3, "[H] Table 2", "Masking+MixUp privacy (Score_pp) rises with k (slope of "
                    "raw_pp over k > 0; Score_pp is raw_pp min-max scaled)", "not in this run")
    ks = _masking_ks(c)
    if len(ks) < 2:
        return r
    order = sorted(ks)
    attack = c.attack_for(*(ks[k] for k in order))
    if not attack:
        return r
    metric, sign = _privacy_metric(c, [ks[k] for k in order], attack)
    if metric == "SSIM":
        r.notes.append(PROXY_NOTE)
    r.evidence.append(_evidence("trend", "+".join(ks[k] for k in order), "slope",
                                f"{metric} ({attack})", sign, 0.0,
                                [c.items(ks[k], metric, attack) for k in order],
                                _slope_weights(order), "least-squares slope per unit k over "
                                f"k = {order[0]}..{order[-1]}"))
    return r


def claim_adamixup(c: RunCells) -> ClaimResult:
    near, share_t = THRESHOLDS["near"], THRESHOLDS["large_share"]
    r = ClaimResult(4, "[H] Tables 2–3", f"AdaMixUp keeps accuracy near fixed k = 2–3 (at most "
                    f"{near:g} points below their mean) while choosing k ≥ 4 for a large share "
                    f"(≥ {share_t:.0%} of training batches)", "not in this run")
    ks = _masking_ks(c)
    ref = [ks[k] for k in (2, 3) if k in ks]
    adas = sorted(d for d in c.defenses if base_name(d) == "adamixup")
    if not ref or not adas or not c.acc:
        return r
    if len(ref) == 1:
        r.incomplete = True
        r.notes.append(f"only {ref[0]} of fixed k = 2–3 is in the run: add "
                       f"{','.join(_missing(c, ('masking_mixup.k2', 'masking_mixup.k3')))}")
    ref_items = [c.items(d, c.acc) for d in ref]
    for ada in adas:
        # near: AdaMixUp minus the mean of fixed k = 2 and 3 is above −near
        r.evidence.append(_evidence(f"{ada} accuracy vs k2–3", "+".join(ref), ada, c.acc, +1,
                                    -near, ref_items + [c.items(ada, c.acc)],
                                    [-1.0 / len(ref)] * len(ref) + [1.0]))
        shares = c.k_shares(ada)
        if shares:
            r.evidence.append(_evidence(f"{ada} share of k ≥ 4", "-", ada, "k_share", +1, share_t,
                                        [shares], [1.0]))
        else:
            r.incomplete = True
            r.notes.append(f"{ada} recorded no k_share")
    return r


def claim_peep_costs_more(c: RunCells) -> ClaimResult:
    t = THRESHOLDS["far_accuracy"]
    r = ClaimResult(5, "[H] Table 2", f"DP (PEEP) costs far more accuracy than PPFR-FD "
                    f"(at least {t:g} points)", "not in this run")
    if c.has("dp_peep", "ppfr_fd") and c.acc:
        r.evidence.append(_diff(c, "PEEP vs PPFR-FD", "ppfr_fd", "dp_peep", c.acc, -1, t))
    return r


def claim_advface_cuts_reconstruction(c: RunCells) -> ClaimResult:
    r = ClaimResult(6, "[A] Table 1", "AdvFace cuts SSIM/PSNR/SRRA of decoder reconstructions far "
                    f"below Random/DP/DuetFace (by ≥ {THRESHOLDS['far_ssim']:g} SSIM, "
                    f"{THRESHOLDS['far_psnr']:g} dB, {THRESHOLDS['far_srra']:g} SRRA)",
                    "not in this run")
    if "advface" not in c.defenses:
        return r
    bases = ("random_feature", "dp_feature", "duetface")
    for base in bases:
        if base not in c.defenses:
            continue
        attack = c.attack_for("advface", base, prefer=DECODER_ATTACKS)
        if attack is None:
            continue
        for metric, key in (("SSIM", "far_ssim"), ("PSNR", "far_psnr"), ("SRRA", "far_srra")):
            r.evidence.append(_diff(c, f"advface vs {base}", base, "advface", metric, -1,
                                    THRESHOLDS[key], attack))
    absent = _missing(c, bases)
    if r.evidence and absent:
        r.incomplete = True
        r.notes.append(f"the claim names Random, DP and DuetFace: add {','.join(absent)}")
    return r


def claim_advface_cost(c: RunCells) -> ClaimResult:
    t, most = THRESHOLDS["about_cost"], THRESHOLDS["most"]
    r = ClaimResult(7, "[A] Table 2", f"AdvFace online costs about 2 points of accuracy (at most "
                    f"{t:g}); offline recovers most of it (more than {most:.0%} of online's cost)",
                    "not in this run")
    if not (c.has("advface", "plain_feature") and c.acc):
        return r
    r.evidence.append(_diff(c, "online cost", "plain_feature", "advface", c.acc, +1, -t))
    if "advface.offline" in c.defenses:
        # offline − online > most · (plain − online)  ⇔  offline − (1 − most)·online − most·plain > 0
        r.evidence.append(_evidence(
            "offline recovers most", "advface", "advface.offline", c.acc, +1, 0.0,
            [c.items(d, c.acc) for d in ("plain_feature", "advface", "advface.offline")],
            [-most, -(1 - most), 1.0],
            f"(offline − online) − {most:g}·(plain_feature − online)"))
    else:
        r.incomplete = True
        r.notes.append("advface.offline is not in the run: only the online cost is judged")
    return r


def claim_advface_transfers(c: RunCells) -> ClaimResult:
    t = THRESHOLDS["transfer_ssim"]
    r = ClaimResult(8, "[A] Table 4", "AdvFace's protection transfers across shadow/attacker "
                    f"decoder architectures (SSIM ≥ {t:g} below the unprotected split for every "
                    "attacker)", "not in this run")
    advs = sorted(d for d in c.defenses if base_name(d) == "advface" and "eps" not in d
                  and d != "advface.offline")
    if "plain_feature" not in c.defenses or not advs:
        return r
    attacks = sorted(set(c.df.loc[c.df["defense"].isin(advs), "attack"]))
    if len(attacks) < 2 and len(advs) < 2:
        r.notes.append("needs two attacker decoders or two shadow decoders")
        return r
    for adv in advs:
        for attack in attacks:
            if c.items(adv, "SSIM", attack) and c.items("plain_feature", "SSIM", attack):
                r.evidence.append(_diff(c, f"{adv} under {attack}", "plain_feature", adv, "SSIM",
                                        -1, t, attack))
    return r


def claim_hybrid_leaks_less(c: RunCells) -> ClaimResult:
    r = ClaimResult(9, "[H] text", "PPFR-FD alone leaks more than the hybrid (Score_pp PPFR-FD < "
                    "Masking+MixUp with k ≥ 3)", "not in this run")
    ks = _masking_ks(c)
    hybrids = [ks[k] for k in sorted(ks) if k >= 3]
    if "ppfr_fd" not in c.defenses or not hybrids:
        return r
    attack = c.attack_for("ppfr_fd", *hybrids)
    if attack is None:
        return r
    metric, sign = _privacy_metric(c, ["ppfr_fd"] + hybrids, attack)
    if metric == "SSIM":
        r.notes.append(PROXY_NOTE)
    for h in hybrids:
        r.evidence.append(_diff(c, f"{h} vs ppfr_fd", "ppfr_fd", h, metric, sign, 0.0, attack))
    return r


def claim_xnn(c: RunCells) -> ClaimResult:
    """Identity leakage is §9's restore-identification accuracy of the expected recognition
    attack (``xnn_expected``) against ``xnn.clean`` (the same split ViT, no obfuscation); without
    it, the SRRA of a shared attack (said in a note). The reference is ``xnn.clean`` when the run
    has it, else ``plain_feature`` (a ResNet split: the accuracy gap then also holds the
    architecture difference, said in a note)."""
    near = THRESHOLDS["near"]
    r = ClaimResult(10, "[X] abstract", f"XNN lowers identity leakage (restore-identification "
                    f"accuracy, §9) at nearly unchanged accuracy (within {near:g} points)",
                    "not in this run")
    ref = next((d for d in ("xnn.clean", "plain_feature") if c.has("xnn", d)), None)
    if ref is None:
        return r
    if ref == "plain_feature":
        r.notes.append("reference is plain_feature (ResNet split): add xnn.clean for the same ViT")
    if c.items("xnn", RESTORE_ID, "xnn_expected") and c.items(ref, RESTORE_ID, "xnn_expected"):
        r.evidence.append(_diff(c, "identity leakage", ref, "xnn", RESTORE_ID, -1, 0.0,
                                "xnn_expected"))
    else:
        attack = c.attack_for("xnn", ref)
        if attack:
            r.notes.append("no restore-identification accuracy (run xnn_expected on xnn and "
                           "xnn.clean): leakage judged on SRRA instead")
            r.evidence.append(_diff(c, "identity leakage", ref, "xnn", "SRRA", -1, 0.0, attack))
    if c.acc:
        r.evidence.append(_diff(c, "accuracy cost", ref, "xnn", c.acc, +1, -near))
    return r


def _pixel_attacks(c: RunCells, defense: str) -> list[str]:
    """The image-reconstruction attacks the run has on both ``defense`` and ``none``."""
    def atts(d: str) -> set[str]:
        sub = c.df[c.df["defense"] == d]
        return set(sub.loc[sub["SSIM"].notna(), "attack"]) if "SSIM" in sub else set()
    return sorted(atts(defense) & atts("none"))


#: an attack whose reconstructions of unprotected faces stay under this SSIM does not recover
#: the pixel layout (template inversion from 16–512-d embeddings: ~.32 on none), so "resists
#: recovery" is judged on its SRRA only — a defense cannot push SSIM 0.1 below a floor it is at
PIXEL_RECOVERY_SSIM = 0.5


def _resists(c: RunCells, defense: str, attack: str) -> list[Evidence]:
    """"Resists recovery" under one attack: SRRA (and SSIM, where the attack recovers the pixel
    layout of unprotected faces: :data:`PIXEL_RECOVERY_SSIM`) of its reconstructions below the
    unprotected model's by the thresholds."""
    none_ssim = [np.mean(v) for _, v in c.items("none", "SSIM", attack).values()]
    metrics = [("SRRA", "resist_srra")]
    if none_ssim and float(np.mean(none_ssim)) >= PIXEL_RECOVERY_SSIM:
        metrics.insert(0, ("SSIM", "resist_ssim"))
    return [_diff(c, f"{defense} vs none under {attack}", "none", defense, metric, -1,
                  THRESHOLDS[key], attack) for metric, key in metrics]


def _frequency_paper_claim(number: int, defense: str, source: str) -> Callable[[RunCells], ClaimResult]:
    def claim(c: RunCells) -> ClaimResult:
        near = THRESHOLDS["near"]
        r = ClaimResult(number, source, f"{defense} keeps accuracy near the unprotected model "
                        f"(within {near:g} points) and resists recovery (SRRA ≥ "
                        f"{THRESHOLDS['resist_srra']:g} below none under every reconstruction "
                        f"attack of the run; SSIM ≥ {THRESHOLDS['resist_ssim']:g} below under "
                        f"those whose SSIM on none reaches {PIXEL_RECOVERY_SSIM:g})",
                        "not in this run")
        if not c.has(defense, "none"):
            return r
        if c.acc:
            r.evidence.append(_diff(c, "accuracy cost", "none", defense, c.acc, +1, -near))
        attacks = _pixel_attacks(c, defense)
        for attack in attacks:
            r.evidence += _resists(c, defense, attack)
        if not attacks:
            r.incomplete = True
            r.notes.append(f"no reconstruction attack ran on both {defense} and none: add one "
                           "(--attacks strongest)")
        return r
    claim.__name__ = f"claim_{defense}"
    return claim


def claim_identity_leaks_where_pixels_do_not(c: RunCells) -> ClaimResult:
    """FaceLinkGen's finding (ALGORITHMS §14), not a paper of the matrix: a frequency defense
    whose reconstructions are resisted still links protected records to identities above chance.
    One case per defense (resisted under its reconstruction attacks, and linkage rank-1 above its
    chance level); the claim holds when one defense shows it and is contradicted when every
    defense of the run contradicts it."""
    r = ClaimResult(15, "[FaceLinkGen] arXiv 2602.02914", "identity leaks where pixels do not: "
                    "a frequency defense that resists reconstruction (as claims 11–14) still "
                    "links its protected records to identities above chance (linkage rank-1)",
                    "not in this run")
    for defense in FREQUENCY_DEFENSES:
        if not c.has(defense, "none") or not c.items(defense, "link_rank1", LINKAGE):
            continue
        attacks = _pixel_attacks(c, defense)
        if not attacks:
            continue
        start = len(r.evidence)
        for attack in attacks:
            r.evidence += _resists(c, defense, attack)
        chance = c.df.loc[(c.df["defense"] == defense) & (c.df["attack"] == LINKAGE),
                          "link_chance"].dropna() if "link_chance" in c.df else pd.Series(dtype=float)
        t = float(chance.max()) if len(chance) else 0.0
        r.evidence.append(_evidence(f"{defense} linked", "-", defense, f"link_rank1 ({LINKAGE})",
                                    +1, t, [c.items(defense, "link_rank1", LINKAGE)], [1.0],
                                    f"link_rank1 of {defense} (chance {t:.3g})"))
        r.cases.append(list(range(start, len(r.evidence))))
    if not r.cases:
        r.notes.append("needs none, linkage and a reconstruction attack on a frequency defense "
                       f"({', '.join(FREQUENCY_DEFENSES)})")
    return r


def combine_cases(verdicts: list[str], cases: list[list[int]]) -> str:
    """The verdict of a claim of alternative cases (see :attr:`ClaimResult.cases`)."""
    per_case = [combine([verdicts[i] for i in case]) for case in cases]
    if "holds" in per_case:
        return "holds"
    if per_case and all(v == "contradicted" for v in per_case):
        return "contradicted"
    few = [v for v in per_case if replicate_limited(v)]
    return min(few, key=lambda v: int(v.split("(")[1].split()[0])) if few else INCONCLUSIVE


CLAIMS: list[Callable[[RunCells], ClaimResult]] = [
    claim_fd_beats_rgb, claim_accuracy_falls_with_k, claim_privacy_rises_with_k, claim_adamixup,
    claim_peep_costs_more, claim_advface_cuts_reconstruction, claim_advface_cost,
    claim_advface_transfers, claim_hybrid_leaks_less, claim_xnn,
    *(_frequency_paper_claim(11 + i, d, src) for i, (d, src) in enumerate(FREQUENCY_PAPERS)),
    claim_identity_leaks_where_pixels_do_not,
]


def check_claims(records: list[dict[str, Any]], command: str | None = None) -> list[ClaimResult]:
    """Every claim's verdict; ``command`` (the run's own, with enough seeds) is named under each
    claim that is inconclusive for want of replicates."""
    cells = RunCells(records)
    decide = command or GENERIC_COMMAND
    out = []
    for fn in CLAIMS:
        res = fn(cells)
        if res.evidence:
            verdicts = [e.verdict for e in res.evidence]
            res.verdict = (combine_cases(verdicts, res.cases) if res.cases
                           else combine(verdicts, res.incomplete))
            if any(replicate_limited(e.verdict) for e in res.evidence):
                res.decide = decide
        out.append(res)
    return out


def format_claims(results: list[ClaimResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.number:>2}. {r.source} {r.text}\n    verdict: {r.verdict.upper()}")
        lines += [f"    - {e.line()}" for e in r.evidence]
        lines += [f"    note: {n}" for n in r.notes]
        if r.decide:
            lines.append(f"    decide it with ≥ {MIN_REPLICATES} replicates: {r.decide}")
    counts = pd.Series([r.verdict for r in results]).value_counts()
    lines.append("\n" + ", ".join(f"{v}: {n}" for v, n in counts.items()))
    lines.append("contrasts (B − A for a difference) with 95 % intervals: a paired t over "
                 "replicates (seeds × folds) when both sides have the same ones, else Welch's t; "
                 "with one replicate, a bootstrap over the items of those trained models, which "
                 f"cannot see training noise. Holds / contradicted need ≥ {MIN_REPLICATES} "
                 "replicates per side. Thresholds: " +
                 ", ".join(f"{k}={v:g}" for k, v in THRESHOLDS.items()))
    return "\n".join(lines)


def _no_nan(obj: Any) -> Any:
    """NaN → None: strict JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def run_claims(run_dir: Path, command: str | None = None) -> list[ClaimResult]:
    """Check every claim against a run folder and write ``claims.json`` beside its tables;
    ``command`` is the run command that would decide what is inconclusive for want of
    replicates (:func:`bench.rerun.deciding_command`)."""
    results = check_claims(load_cells(run_dir), command)
    payload = [asdict(r) for r in results]
    atomic_write_text(Path(run_dir) / "claims.json",
                      json.dumps(_no_nan({"thresholds": THRESHOLDS,
                                          "min_replicates": MIN_REPLICATES, "claims": payload}),
                                 indent=2))
    return results
