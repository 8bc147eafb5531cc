"""``bench claims RUN``: the papers' directional claims (ALGORITHMS §12) checked against a run.

Every claim reduces to one or more *differences* between cells of the run, each with a stated
threshold ``t`` on the side the paper claims (t = 0 for a bare direction; the words "far",
"sharply", "about", "nearly" get the thresholds in :data:`THRESHOLDS`, our `[ASSUMP]`). A
difference is judged from its 95 % bootstrap interval (:func:`bench.reporting.stats.difference`:
paired over verification pairs / reconstruction targets when both cells used the same ones):

- **holds** when the whole interval lies beyond ``t`` on the claimed side;
- **contradicted** when the whole interval lies on the other side of ``t``;
- **inconclusive** otherwise (the interval straddles ``t``, or a metric has no interval: e.g.
  raw_pp with a single replicate).

A claim holds when all its differences hold, is contradicted when any is, and is *not in this run*
when the run lacks the cells it needs. Verdicts never change the exit code unless ``--strict``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.reporting.cells import (DIGEST, ITEMS, acc_columns, base_name, cells_frame, load_cells,
                                   primary_acc_column)
from bench.reporting.stats import Interval, difference
from bench.store import atomic_write_text

#: the thresholds the claims' words stand for ([ASSUMP]; printed with every verdict)
THRESHOLDS = {
    "sharply": 5.0,  # accuracy points lost from k ≤ 3 to k ≥ 4
    "far_accuracy": 10.0,  # accuracy points (PEEP vs PPFR-FD)
    "near": 3.0,  # accuracy points (AdaMixUp vs fixed k = 2–3; XNN vs the clean split)
    "large_share": 0.30,  # share of batches AdaMixUp mixes with k ≥ 4
    "about_cost": 5.0,  # AdvFace online costs at most this many points ("about 2")
    "far_ssim": 0.10, "far_psnr": 1.0, "far_srra": 0.10,  # AdvFace vs its baselines
    "transfer_ssim": 0.05,  # AdvFace below the unprotected split, per attacker decoder
}
PREFERRED_ATTACKS = ("cgan", "resrec")  # the attack a privacy claim reads when the run has several


@dataclass
class Evidence:
    """One difference B − A with its threshold and verdict."""

    what: str
    a: str
    b: str
    metric: str
    side: int  # +1: the claim says B − A > t; −1: B − A < −t
    threshold: float
    delta: float
    low: float
    high: float
    test: str
    verdict: str

    def line(self) -> str:
        rel = ">" if self.side > 0 else "<"
        t = self.threshold * self.side + 0.0  # + 0.0: no "-0" for a zero threshold
        value = (f"{self.metric} of {self.b}" if self.a == "-"
                 else f"{self.b} − {self.a} on {self.metric}")
        interval = ("" if math.isnan(self.low) or math.isnan(self.high)
                    else f" [{_f(self.low)}, {_f(self.high)}]")
        return (f"{self.what}: {value} = {_f(self.delta)}{interval} ({self.test}); "
                f"claim: {rel} {_f(t)} → {self.verdict}")


@dataclass
class ClaimResult:
    number: int
    source: str
    text: str
    verdict: str
    evidence: list[Evidence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _f(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def judge(iv: Interval, side: int, threshold: float) -> str:
    """The verdict of one difference (see the module docstring)."""
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "inconclusive"
    lo, hi = (iv.low, iv.high) if side > 0 else (-iv.high, -iv.low)
    if lo > threshold:
        return "holds"
    if hi < threshold:
        return "contradicted"
    return "inconclusive"


def combine(verdicts: list[str]) -> str:
    if not verdicts:
        return "not in this run"
    if "contradicted" in verdicts:
        return "contradicted"
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "inconclusive"


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

    def attack_for(self, *defenses: str) -> str | None:
        """The attack privacy claims read: cgan, else resrec, else the first the cells share."""
        shared = None
        for d in defenses:
            atts = set(self.df.loc[self.df["defense"] == d, "attack"])
            shared = atts if shared is None else shared & atts
        if not shared:
            return None
        for a in PREFERRED_ATTACKS:
            if a in shared:
                return a
        return sorted(shared)[0]

    def items(self, defense: str, metric: str, attack: str | None = None) -> dict:
        """``{(seed, fold): (digest, vector)}``; a metric without per-item vectors becomes one
        value per replicate (paired over replicates, and no interval under two)."""
        frame = self.all if metric.startswith("acc_") else self.df
        sub = frame[frame["defense"] == defense]
        if attack is not None and not metric.startswith("acc_"):
            sub = sub[sub["attack"] == attack]
        out: dict = {}
        for _, r in sub.iterrows():
            key = (r["seed"], r["fold"] if r["fold"] == r["fold"] else None)
            if key in out:
                continue  # accuracy repeats in every attack's cell
            vec = r.get(f"{ITEMS}{metric}")
            if isinstance(vec, list):
                out[key] = (r.get(f"{DIGEST}{metric}"), vec)
            elif r.get(metric) == r.get(metric) and r.get(metric) is not None:
                out[key] = ("replicate", [float(r[metric])])
        if out and all(d == "replicate" for d, _ in out.values()) and len(out) < 2:
            return {key: (None, v) for key, (_, v) in out.items()}  # one value: no interval
        return out

    def record_of(self, defense: str) -> dict[str, Any]:
        for r in self.records:
            if r["defense"] == defense:
                return r.get("record") or {}
        return {}


def _diff(cells: RunCells, what: str, a: str, b: str, metric: str, side: int, threshold: float,
          attack: str | None = None, items_a: dict | None = None,
          items_b: dict | None = None) -> Evidence:
    ia = items_a if items_a is not None else cells.items(a, metric, attack)
    ib = items_b if items_b is not None else cells.items(b, metric, attack)
    iv, how = difference(ia, ib)
    return Evidence(what, a, b, metric + (f" ({attack})" if attack and not metric.startswith("acc_") else ""),
                    side, threshold, iv.mean, iv.low, iv.high, how, judge(iv, side, threshold))


def _pooled(cells: RunCells, defenses: list[str], metric: str, attack: str | None = None) -> dict:
    """The per-item vectors of several defenses averaged item by item (same items required), so
    "k ≥ 4" can be compared with "k ≤ 3" as one group each."""
    parts = [cells.items(d, metric, attack) for d in defenses]
    keys = set.intersection(*(set(p) for p in parts)) if parts else set()
    out = {}
    for k in keys:
        vecs = [p[k] for p in parts]
        if len({len(v) for _, v in vecs}) != 1 or len({d for d, _ in vecs}) != 1:
            continue
        out[k] = (vecs[0][0], [sum(x) / len(x) for x in zip(*(v for _, v in vecs))])
    return out


# -- the claims -------------------------------------------------------------------------------------
def claim_fd_beats_rgb(c: RunCells) -> ClaimResult:
    r = ClaimResult(1, "[H] Table 1", "the frequency domain beats RGB in accuracy for MixUp and for "
                    "InstaHide", "not in this run")
    for fam in ("mixup", "instahide"):
        if c.has(f"{fam}_rgb", f"{fam}_fd") and c.acc:
            r.evidence.append(_diff(c, fam, f"{fam}_rgb", f"{fam}_fd", c.acc, +1, 0.0))
    if len(r.evidence) == 1:
        r.notes.append("only one of the two families is in the run")
    return r


def _masking_ks(c: RunCells) -> dict[int, str]:
    return {int(d.split(".k")[1]): d for d in c.defenses
            if base_name(d) == "masking_mixup" and d.split(".k")[-1].isdigit()}


def claim_accuracy_falls_with_k(c: RunCells) -> ClaimResult:
    t = THRESHOLDS["sharply"]
    r = ClaimResult(2, "[H] Table 2", f"Masking+MixUp accuracy falls as k grows, sharply from k = 4 "
                    f"(k ≥ 4 at least {t:g} points below k ≤ 3)", "not in this run")
    ks = _masking_ks(c)
    low, high = [ks[k] for k in sorted(ks) if k <= 3], [ks[k] for k in sorted(ks) if k >= 4]
    if low and high and c.acc:
        r.evidence.append(_diff(c, "k ≥ 4 vs k ≤ 3", "+".join(low), "+".join(high), c.acc, -1, t,
                                items_a=_pooled(c, low, c.acc), items_b=_pooled(c, high, c.acc)))
        accs = {k: c.all.loc[c.all["defense"] == ks[k], c.acc].mean() for k in sorted(ks)}
        r.notes.append("accuracy by k: " + ", ".join(f"k{k} {v:.1f}" for k, v in accs.items()))
    return r


def _privacy_metric(c: RunCells, defenses: list[str], attack: str) -> tuple[str, int]:
    """raw_pp (higher = more private) when it has an interval (≥ 2 replicates), else SSIM of the
    reconstruction as the privacy proxy (lower = more private)."""
    raw = [c.items(d, "raw_pp", attack) for d in defenses]
    if all(len(x) >= 2 for x in raw):
        return "raw_pp", +1
    return "SSIM", -1


def claim_privacy_rises_with_k(c: RunCells) -> ClaimResult:
    r = ClaimResult(3, "[H] Table 2", "Masking+MixUp privacy (Score_pp) rises with k",
                    "not in this run")
    ks = _masking_ks(c)
    if len(ks) >= 2:
        names = [ks[k] for k in sorted(ks)]
        attack = c.attack_for(*names)
        if attack:
            metric, sign = _privacy_metric(c, names, attack)
            if metric == "SSIM":
                r.notes.append("raw_pp has no interval with one replicate: judged on the "
                               "reconstruction SSIM (lower = more private) instead")
            for lo_k, hi_k in zip(sorted(ks), sorted(ks)[1:]):
                r.evidence.append(_diff(c, f"k{lo_k} → k{hi_k}", ks[lo_k], ks[hi_k], metric, sign,
                                        0.0, attack))
            r.evidence.append(_diff(c, f"k{min(ks)} → k{max(ks)}", ks[min(ks)], ks[max(ks)], metric,
                                    sign, 0.0, attack))
    return r


def claim_adamixup(c: RunCells) -> ClaimResult:
    near, share_t = THRESHOLDS["near"], THRESHOLDS["large_share"]
    r = ClaimResult(4, "[H] Tables 2–3", f"AdaMixUp keeps accuracy near fixed k = 2–3 (within "
                    f"{near:g} points) while choosing k ≥ 4 for a large share (≥ {share_t:.0%})",
                    "not in this run")
    ks = _masking_ks(c)
    ref = [ks[k] for k in (2, 3) if k in ks]
    adas = sorted(d for d in c.defenses if base_name(d) == "adamixup")
    if not ref or not adas or not c.acc:
        return r
    pooled = _pooled(c, ref, c.acc)
    for ada in adas:
        # near: the accuracy lost against fixed k = 2–3 is below `near` points
        r.evidence.append(_diff(c, f"{ada} accuracy vs k2–3", "+".join(ref), ada, c.acc, +1, -near,
                                items_a=pooled))
        shares = c.record_of(ada).get("k_share") or {}
        big = sum(float(v) for k, v in shares.items() if int(k) >= 4)
        verdict = "holds" if big >= share_t else "contradicted"
        r.evidence.append(Evidence(f"{ada} share of k ≥ 4", "-", ada, "k_share", +1, share_t, big,
                                   math.nan, math.nan, "count over training batches", verdict))
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
    for base in ("random_feature", "dp_feature", "duetface"):
        if base not in c.defenses:
            continue
        attack = c.attack_for("advface", base)
        if attack is None:
            continue
        for metric, key in (("SSIM", "far_ssim"), ("PSNR", "far_psnr"), ("SRRA", "far_srra")):
            r.evidence.append(_diff(c, f"advface vs {base}", base, "advface", metric, -1,
                                    THRESHOLDS[key], attack))
    return r


def claim_advface_cost(c: RunCells) -> ClaimResult:
    t = THRESHOLDS["about_cost"]
    r = ClaimResult(7, "[A] Table 2", f"AdvFace online costs about 2 points of accuracy (at most "
                    f"{t:g}); offline recovers most of it (offline above online)", "not in this run")
    if c.has("advface", "plain_feature") and c.acc:
        r.evidence.append(_diff(c, "online cost", "plain_feature", "advface", c.acc, +1, -t))
        if "advface.offline" in c.defenses:
            r.evidence.append(_diff(c, "offline vs online", "advface", "advface.offline", c.acc,
                                    +1, 0.0))
        else:
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
        r.notes.append("raw_pp has no interval with one replicate: judged on the reconstruction "
                       "SSIM (lower = more private) instead")
    for h in hybrids:
        r.evidence.append(_diff(c, f"{h} vs ppfr_fd", "ppfr_fd", h, metric, sign, 0.0, attack))
    return r


def claim_xnn(c: RunCells) -> ClaimResult:
    """Against ``xnn.clean`` (the same split ViT, no obfuscation, a retrained tail) when the run
    has it; else against ``plain_feature`` (a ResNet split: the accuracy gap then also holds the
    architecture difference, said in a note)."""
    near = THRESHOLDS["near"]
    r = ClaimResult(10, "[X] abstract", f"XNN lowers identity leakage (SRRA) at nearly unchanged "
                    f"accuracy (within {near:g} points)", "not in this run")
    ref = next((d for d in ("xnn.clean", "plain_feature") if c.has("xnn", d)), None)
    if ref is None:
        return r
    if ref == "plain_feature":
        r.notes.append("reference is plain_feature (ResNet split): add xnn.clean for the same ViT")
    attack = c.attack_for("xnn", ref)
    if attack:
        r.evidence.append(_diff(c, "identity leakage", ref, "xnn", "SRRA", -1, 0.0, attack))
    if c.acc:
        r.evidence.append(_diff(c, "accuracy cost", ref, "xnn", c.acc, +1, -near))
    return r


CLAIMS: list[Callable[[RunCells], ClaimResult]] = [
    claim_fd_beats_rgb, claim_accuracy_falls_with_k, claim_privacy_rises_with_k, claim_adamixup,
    claim_peep_costs_more, claim_advface_cuts_reconstruction, claim_advface_cost,
    claim_advface_transfers, claim_hybrid_leaks_less, claim_xnn,
]


def check_claims(records: list[dict[str, Any]]) -> list[ClaimResult]:
    cells = RunCells(records)
    out = []
    for fn in CLAIMS:
        res = fn(cells)
        if res.evidence:
            res.verdict = combine([e.verdict for e in res.evidence])
        out.append(res)
    return out


def format_claims(results: list[ClaimResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.number:>2}. {r.source} {r.text}\n    verdict: {r.verdict.upper()}")
        lines += [f"    - {e.line()}" for e in r.evidence]
        lines += [f"    note: {n}" for n in r.notes]
    counts = pd.Series([r.verdict for r in results]).value_counts()
    lines.append("\n" + ", ".join(f"{v}: {n}" for v, n in counts.items()))
    lines.append("differences are B − A with 95 % bootstrap intervals (paired over pairs/targets "
                 "when both cells used the same); thresholds: " +
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


def run_claims(run_dir: Path) -> list[ClaimResult]:
    """Check every claim against a run folder and write ``claims.json`` beside its tables."""
    results = check_claims(load_cells(run_dir))
    payload = [asdict(r) for r in results]
    atomic_write_text(Path(run_dir) / "claims.json",
                      json.dumps(_no_nan({"thresholds": THRESHOLDS, "claims": payload}), indent=2))
    return results
