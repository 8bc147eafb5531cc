"""`bench claims`: every §12 claim gets a verdict from replicate-level intervals (§12.1).

Synthetic cells: each seed is one trained model (a per-seed offset, the training noise) judged on
its items (per-pair Bernoulli outcomes, per-target SSIM). Each claim is tested with cells that must
hold, be contradicted and be inconclusive."""
from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from bench.cli import main
from bench.reporting.claims import THRESHOLDS, check_claims, interval_verdict, judge
from bench.reporting.stats import Interval
from tests.item_records import item_record, write_run

SEEDS = (0, 1, 2)


def _by_number(results):
    return {r.number: r for r in results}


def cells(defense, attack="cgan", *, acc, ssim, seeds=SEEDS, sd_acc=0.005, sd_ssim=0.005,
          raw_pp=None, **kw):
    """One cell per seed whose accuracy and SSIM move by a per-seed offset (training noise)."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(zlib.crc32(repr((defense, attack, s)).encode()))
        rec = item_record(defense, attack, s, acc=acc + rng.normal(0, sd_acc),
                          ssim=ssim + rng.normal(0, sd_ssim), **kw)
        if raw_pp is not None:
            rec["privacy"]["raw_pp"] = raw_pp + rng.normal(0, 0.005)
        out.append(rec)
    return out


def verdict(records, number):
    return _by_number(check_claims(records))[number]


@pytest.mark.parametrize("low, high, side, t, expected", [
    (12, 20, -1, 10, "contradicted"),  # B − A in [12, 20] but the claim says B − A < −10
    (-20, -12, -1, 10, "holds"),
    (-14, -6, -1, 10, "inconclusive"),  # straddles the threshold
    (-1, 3, +1, 0, "inconclusive"),
    (1, 3, +1, 0, "holds"),
    (math.nan, math.nan, +1, 0, "inconclusive"),  # no interval, no verdict either way
])
def test_judge_needs_three_replicates(low, high, side, t, expected):
    assert interval_verdict(Interval(0.0, math.nan, low, high, 1), side, t) == expected
    assert judge(Interval(0.0, math.nan, low, high, 300, 3), side, t) == expected
    for r, word in ((1, "replicate"), (2, "replicates")):
        few = judge(Interval(0.0, math.nan, low, high, 300, r), side, t)
        assert few == f"inconclusive ({r} {word})"


def test_claims_without_their_cells_are_not_in_the_run():
    res = _by_number(check_claims([item_record("none", "cgan", 0, acc=0.9, ssim=0.8)]))
    assert len(res) == 15
    assert all(r.verdict == "not in this run" and not r.evidence for r in res.values())


# -- claim 1 ------------------------------------------------------------------------------------------
def _families(fd_minus_rgb, families=("mixup", "instahide"), seeds=SEEDS):
    out = []
    for fam in families:
        out += cells(f"{fam}_rgb", acc=0.70, ssim=0.5, seeds=seeds, n_pairs=1000)
        out += cells(f"{fam}_fd", acc=0.70 + fd_minus_rgb, ssim=0.5, seeds=seeds, n_pairs=1000)
    return out


def test_claim1_holds_is_contradicted_or_incomplete():
    assert verdict(_families(0.15), 1).verdict == "holds"
    assert verdict(_families(-0.15), 1).verdict == "contradicted"
    one = verdict(_families(0.15, families=("mixup",)), 1)
    assert one.verdict == "inconclusive" and one.evidence[0].verdict == "holds"
    assert "instahide_rgb,instahide_fd" in one.notes[0]


def test_claim1_on_one_seed_is_inconclusive_and_names_the_command():
    res = verdict(_families(0.15, seeds=(0,)), 1)
    assert res.verdict == "inconclusive (1 replicate)"
    assert all(e.leaning == "holds" for e in res.evidence)  # the item intervals alone say holds
    assert "--seeds 0,1,2" in res.decide


# -- claim 2 ------------------------------------------------------------------------------------------
def _masking(accs, seeds=SEEDS, **kw):
    return [r for k, a in accs.items()
            for r in cells(f"masking_mixup.k{k}", acc=a, ssim=0.3, seeds=seeds, n_pairs=2000, **kw)]


def test_claim2_holds_on_a_sharp_fall_from_k4():
    res = verdict(_masking({2: 0.86, 3: 0.85, 4: 0.70, 5: 0.68, 6: 0.66}), 2)
    assert res.verdict == "holds", [e.line() for e in res.evidence]
    assert [e.what for e in res.evidence] == ["trend", "sharp step", "step beyond the others"]
    assert "k2 " in res.notes[0] and "k6 " in res.notes[0]


def test_claim2_pooling_k_groups_is_not_enough():
    # the review's counter-example: k ≥ 4 pooled is far below k ≤ 3 (only k = 6 fell), but from
    # k3 to k4 accuracy rises: not "sharply from k = 4"
    res = verdict(_masking({2: 0.860, 3: 0.847, 4: 0.847, 5: 0.873, 6: 0.523}), 2)
    assert res.verdict == "contradicted"
    step = next(e for e in res.evidence if e.what == "sharp step")
    assert step.verdict == "contradicted" and step.low > -THRESHOLDS["sharply"]


def test_claim2_flat_accuracy_is_contradicted_and_two_seeds_inconclusive():
    flat = {k: 0.8 for k in (2, 3, 4, 5, 6)}
    assert verdict(_masking(flat), 2).verdict == "contradicted"  # no sharp fall
    two = verdict(_masking({2: 0.86, 3: 0.85, 4: 0.70, 5: 0.68, 6: 0.66}, seeds=(0, 1)), 2)
    assert two.verdict == "inconclusive (2 replicates)"


def test_claim2_without_k3_or_k4_is_at_most_inconclusive():
    res = verdict(_masking({2: 0.86, 5: 0.68, 6: 0.66}), 2)
    assert res.evidence[0].verdict == "holds" and res.verdict == "inconclusive"
    assert "k3 and masking_mixup.k4" in res.notes[-1]


# -- claim 3 ------------------------------------------------------------------------------------------
def _privacy(raw_by_k, seeds=SEEDS):
    return [r for k, raw in raw_by_k.items()
            for r in cells(f"masking_mixup.k{k}", acc=0.8, ssim=0.3, raw_pp=raw, seeds=seeds)]


def test_claim3_is_a_trend_of_raw_pp_over_k():
    rising = verdict(_privacy({2: 0.50, 3: 0.55, 4: 0.62, 5: 0.66}), 3)
    assert rising.verdict == "holds" and rising.evidence[0].metric.startswith("raw_pp")
    assert len(rising.evidence) == 1  # one slope, not a verdict per step
    assert verdict(_privacy({2: 0.66, 3: 0.62, 4: 0.55, 5: 0.50}), 3).verdict == "contradicted"
    two = verdict(_privacy({2: 0.50, 3: 0.55, 4: 0.62, 5: 0.66}, seeds=(0, 1)), 3)
    assert two.verdict == "inconclusive (2 replicates)"


def test_claim3_falls_back_to_ssim_with_one_replicate():
    res = verdict(_privacy({2: 0.50, 3: 0.55, 4: 0.62}, seeds=(0,)), 3)
    assert res.evidence[0].metric.startswith("SSIM") and "raw_pp has no interval" in res.notes[0]
    assert res.verdict == "inconclusive (1 replicate)"


# -- claim 4 ------------------------------------------------------------------------------------------
def _adamixup(ada_acc, shares):
    recs = _masking({2: 0.86, 3: 0.85})
    ada = cells("adamixup.k2-6", acc=ada_acc, ssim=0.3, n_pairs=2000)
    for rec, share in zip(ada, shares):
        rest = (1 - share) / 2
        rec["record"] = {"k_share": {"2": rest, "3": rest, "4": share / 3, "5": share / 3,
                                     "6": share / 3}}
    return recs + ada


def test_claim4_holds_and_is_contradicted():
    assert verdict(_adamixup(0.85, (0.50, 0.52, 0.48)), 4).verdict == "holds"
    low_acc = verdict(_adamixup(0.70, (0.50, 0.52, 0.48)), 4)
    assert low_acc.verdict == "contradicted" and low_acc.evidence[0].verdict == "contradicted"
    assert verdict(_adamixup(0.85, (0.10, 0.12, 0.11)), 4).verdict == "contradicted"


def test_claim4_uses_every_seeds_k_shares():
    # seed 0 chose k ≥ 4 half of the time, seeds 1 and 2 rarely: the first record alone would
    # say "large share"; over the three seeds it is not established
    res = verdict(_adamixup(0.85, (0.50, 0.10, 0.11)), 4)
    share = next(e for e in res.evidence if e.metric == "k_share")
    assert share.delta == pytest.approx((0.50 + 0.10 + 0.11) / 3)
    assert share.verdict == "inconclusive" and res.verdict == "inconclusive"


# -- claim 6 ------------------------------------------------------------------------------------------
BASELINES = ("random_feature", "dp_feature", "duetface")


def _advface(adv_ssim, bases=BASELINES):
    recs = cells("advface", "resrec", acc=0.9, ssim=adv_ssim)
    for b in bases:
        recs += cells(b, "resrec", acc=0.9, ssim=0.8)
    return recs


def test_claim6_holds_contradicted_and_incomplete():
    res = verdict(_advface(0.25), 6)
    assert res.verdict == "holds" and len(res.evidence) == 9  # 3 baselines × SSIM, PSNR, SRRA
    assert all(e.metric.endswith("(resrec)") for e in res.evidence)
    assert verdict(_advface(0.78), 6).verdict == "contradicted"  # no cut at all
    part = verdict(_advface(0.25, bases=("random_feature",)), 6)
    assert part.verdict == "inconclusive" and "dp_feature,duetface" in part.notes[0]


# -- claim 7 ------------------------------------------------------------------------------------------
def _advface_cost(online, offline, plain=0.90):
    kw = dict(ssim=0.3, n_pairs=6000, sd_acc=0.002, seeds=range(5))
    return (cells("plain_feature", "resrec", acc=plain, **kw) + cells("advface", "resrec", acc=online, **kw)
            + cells("advface.offline", "resrec", acc=offline, **kw))


def test_claim7_online_cost_and_offline_recovery():
    ok = verdict(_advface_cost(online=0.87, offline=0.90), 7)
    assert ok.verdict == "holds", [e.line() for e in ok.evidence]
    # offline recovers only a quarter of online's cost: not "most of it"
    partial = verdict(_advface_cost(online=0.80, offline=0.825), 7)
    assert partial.evidence[1].verdict == "contradicted"
    assert verdict(_advface_cost(online=0.80, offline=0.90), 7).evidence[0].verdict == "contradicted"


# -- claim 8 ------------------------------------------------------------------------------------------
def _transfer(adv_ssim):
    recs = []
    for attack in ("resrec", "urec"):
        recs += cells("plain_feature", attack, acc=0.9, ssim=0.8) + cells("advface", attack,
                                                                          acc=0.9, ssim=adv_ssim)
    return recs


def test_claim8_holds_for_every_attacker_or_is_contradicted():
    res = verdict(_transfer(0.3), 8)
    assert res.verdict == "holds" and {e.metric for e in res.evidence} == {"SSIM (resrec)",
                                                                            "SSIM (urec)"}
    assert verdict(_transfer(0.79), 8).verdict == "contradicted"
    one = verdict([r for r in _transfer(0.3) if r["seed"] == 0], 8)
    assert one.verdict == "inconclusive (1 replicate)"


# -- claims 5, 9, 10 ----------------------------------------------------------------------------------
def test_peep_claim_holds_is_contradicted_or_inconclusive():
    ppfr = cells("ppfr_fd", acc=0.80, ssim=0.4, n_pairs=2000)
    assert verdict(ppfr + cells("dp_peep", acc=0.49, ssim=0.3, n_pairs=2000), 5).verdict == "holds"
    res = verdict(ppfr + cells("dp_peep", acc=0.79, ssim=0.3, n_pairs=2000), 5)
    assert res.verdict == "contradicted" and res.evidence[0].test == "paired t over 3 replicates"
    one = verdict([item_record("ppfr_fd", "cgan", 0, acc=0.80, ssim=0.4, items_seed=7),
                   item_record("dp_peep", "cgan", 0, acc=0.49, ssim=0.3, items_seed=7)], 5)
    assert one.verdict == "inconclusive (1 replicate)" and one.evidence[0].leaning == "holds"
    assert one.evidence[0].test.startswith("paired bootstrap")  # same pairs: paired over items


def test_hybrid_claim_uses_the_ssim_proxy_with_one_replicate():
    recs = [item_record("ppfr_fd", "cgan", 0, acc=0.8, ssim=0.45),
            item_record("masking_mixup.k3", "cgan", 0, acc=0.8, ssim=0.30),
            item_record("masking_mixup.k4", "cgan", 0, acc=0.8, ssim=0.28)]
    res = verdict(recs, 9)
    assert res.verdict == "inconclusive (1 replicate)"
    assert all(e.metric.startswith("SSIM") and e.leaning == "holds" for e in res.evidence)
    assert "raw_pp has no interval" in res.notes[0]


def _xnn(defense, restore_acc, acc=0.8, attack="xnn_expected"):
    recs = cells(defense, attack, acc=acc, ssim=0.3, n_pairs=6000, seeds=range(5))
    for i, rec in enumerate(recs):
        rec["attack_info"] = {"expected_recognition_acc": restore_acc + 0.01 * i, "n_query": 200}
    return recs


def test_xnn_claim_uses_restore_identification_accuracy():
    res = verdict(_xnn("xnn", 0.05) + _xnn("xnn.clean", 0.60), 10)
    leak = next(e for e in res.evidence if e.what == "identity leakage")
    assert leak.metric == "restore_id_acc (xnn_expected)" and leak.delta == pytest.approx(-0.55)
    assert res.verdict == "holds" and not res.notes
    assert verdict(_xnn("xnn", 0.60) + _xnn("xnn.clean", 0.05), 10).verdict == "contradicted"


def test_xnn_claim_prefers_the_same_vit_and_falls_back_to_srra():
    xnn = item_record("xnn", "resrec", 0, acc=0.79, ssim=0.3, items_seed=5)
    plain = item_record("plain_feature", "resrec", 0, acc=0.86, ssim=0.6, items_seed=5)
    vs_plain = verdict([xnn, plain], 10)
    assert {e.a for e in vs_plain.evidence} == {"plain_feature"}
    assert "ResNet split" in vs_plain.notes[0] and "SRRA instead" in vs_plain.notes[1]
    clean = item_record("xnn.clean", "resrec", 0, acc=0.79, ssim=0.6, items_seed=5)
    vs_clean = verdict([xnn, plain, clean], 10)
    assert {e.a for e in vs_clean.evidence} == {"xnn.clean"}
    accuracy = next(e for e in vs_clean.evidence if e.what == "accuracy cost")
    assert accuracy.leaning == "holds" and accuracy.verdict == "inconclusive (1 replicate)"


def test_cli_writes_claims_json_and_strict_exits_1_on_a_contradiction(tmp_path, capsys):
    run = write_run(tmp_path, cells("ppfr_fd", acc=0.80, ssim=0.4, n_pairs=2000)
                    + cells("dp_peep", acc=0.79, ssim=0.3, n_pairs=2000))
    assert main(["claims", str(run)]) == 0
    out = capsys.readouterr().out
    assert "CONTRADICTED" in out and "NOT IN THIS RUN" in out and "Thresholds:" in out
    saved = json.loads((run / "claims.json").read_text())
    assert {c["number"]: c["verdict"] for c in saved["claims"]}[5] == "contradicted"
    assert saved["min_replicates"] == 3
    assert main(["claims", str(run), "--strict"]) == 1


def test_cli_names_the_command_that_would_decide(tmp_path, capsys):
    config = {"preset": "quick", "seeds": [0], "data": {"folds": 1, "num_pairs": 100}}
    run = write_run(tmp_path, [item_record("ppfr_fd", "cgan", 0, acc=0.80, ssim=0.4),
                               item_record("dp_peep", "cgan", 0, acc=0.50, ssim=0.3)],
                    config=config)
    (run / "config.json").write_text(json.dumps({"run_id": "synth", "defenses": ["ppfr_fd", "dp_peep"],
                                                 "attacks": ["cgan"], "config": config}))
    assert main(["claims", str(run)]) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE (1 REPLICATE)" in out
    assert ("python -m bench run --defenses ppfr_fd,dp_peep --attacks cgan --seeds 0,1,2 "
            "--set data.num_pairs=100") in out


def test_more_seeds_reach_three_replicates_with_the_run_folds():
    from bench.rerun import more_seeds

    assert more_seeds([0], folds=1) == [0, 1, 2]
    assert more_seeds([5], folds=1) == [5, 0, 1]  # the run's own seeds first: they are stored
    assert more_seeds([0], folds=2) == [0, 1]  # 2 seeds × 2 folds = 4 replicates
    assert more_seeds([0, 1, 2, 3], folds=1) == [0, 1, 2, 3]


def test_claim7_is_inconclusive_on_one_seed_or_without_offline():
    one = verdict([r for r in _advface_cost(online=0.87, offline=0.90) if r["seed"] == 0], 7)
    assert one.verdict == "inconclusive (1 replicate)" and one.decide
    online_only = verdict([r for r in _advface_cost(online=0.87, offline=0.90)
                           if r["defense"] != "advface.offline"], 7)
    assert online_only.evidence[0].verdict == "holds" and online_only.verdict == "inconclusive"


# -- claims 11–15: the frequency-domain papers and FaceLinkGen's finding ------------------------
def linkage_cells(defense, rank1, seeds=SEEDS, chance=0.1, n_probes=100):
    """Linkage cells: per-probe rank-1 hits, no image metric."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(zlib.crc32(repr((defense, "linkage", s)).encode()))
        rec = item_record(defense, "linkage", s, acc=0.8, ssim=0.5)
        hits = (rng.random(n_probes) < rank1 + rng.normal(0, 0.02)).astype(int).tolist()
        rec["privacy"] = {"link_rank1": float(np.mean(hits)), "link_chance": chance}
        rec["per_target"] = {"link_rank1": hits}
        out.append(rec)
    return out


def frequency_run(*, acc, ssim, rank1, defense="partialface", seeds=SEEDS):
    """none and ``defense`` under resrec (3,000 verification pairs: a small item noise) and
    ``defense`` under linkage."""
    return (cells("none", "resrec", acc=0.85, ssim=0.9, seeds=seeds, n_pairs=3000)
            + cells(defense, "resrec", acc=acc, ssim=ssim, seeds=seeds, n_pairs=3000)
            + linkage_cells(defense, rank1, seeds=seeds))


@pytest.mark.parametrize("acc, ssim, expected", [
    (0.85, 0.3, "holds"),  # no accuracy lost, reconstructions far worse
    (0.70, 0.3, "contradicted"),  # fifteen points lost
    (0.84, 0.88, "contradicted"),  # reconstructions as good as on none
    (0.835, 0.3, "inconclusive"),  # the accuracy cost straddles the 3-point threshold
])
def test_a_frequency_papers_claim_needs_accuracy_and_resisted_recovery(acc, ssim, expected):
    rec = frequency_run(acc=acc, ssim=ssim, rank1=0.5)
    if expected == "inconclusive":  # noisier training: the interval straddles −3 points
        rec = (cells("none", "resrec", acc=0.85, ssim=0.9, n_pairs=3000)
               + cells("partialface", "resrec", acc=0.82, ssim=0.3, sd_acc=0.02, n_pairs=3000))
    res = verdict(rec, 12)
    assert res.source.startswith("[PartialFace]") and res.verdict == expected, res
    assert verdict(rec, 11).verdict == "not in this run"  # no dctdp in the run


def test_a_frequency_papers_claim_with_one_seed_is_inconclusive():
    res = verdict(frequency_run(acc=0.85, ssim=0.3, rank1=0.5, seeds=(0,)), 12)
    assert res.verdict == "inconclusive (1 replicate)" and res.decide


@pytest.mark.parametrize("ssim, rank1, expected", [
    (0.3, 0.6, "holds"),  # pixels resisted, identities linked well above chance (.1)
    (0.3, 0.1, "inconclusive"),  # pixels resisted, linkage at chance: never shown above it
    (0.3, 0.02, "contradicted"),  # pixels resisted, linkage clearly below chance
    (0.88, 0.6, "contradicted"),  # pixels not resisted: not a case of the claim
])
def test_identity_leaks_where_pixels_do_not(ssim, rank1, expected):
    res = verdict(frequency_run(acc=0.84, ssim=ssim, rank1=rank1), 15)
    assert res.verdict == expected, [e.line() for e in res.evidence]
    assert res.cases == [[0, 1, 2]]  # SSIM, SRRA under resrec, then linkage rank-1


def test_identity_leak_holds_when_one_defense_shows_it():
    rec = (frequency_run(acc=0.84, ssim=0.3, rank1=0.6)
           + cells("dctdp", "resrec", acc=0.84, ssim=0.3) + linkage_cells("dctdp", 0.02))
    res = verdict(rec, 15)
    assert len(res.cases) == 2 and res.verdict == "holds"
    assert verdict(linkage_cells("dctdp", 0.6), 15).verdict == "not in this run"


def test_recovery_ssim_is_judged_only_where_the_attack_recovers_pixels_of_none():
    """Template inversion reconstructs unprotected faces at SSIM ~.32: its SSIM cannot fall 0.1
    further, so only its SRRA is judged; a decoder's SSIM (.9 on none) is judged too."""
    rec = (frequency_run(acc=0.85, ssim=0.3, rank1=0.5)
           + cells("none", "template_inversion", acc=0.85, ssim=0.32, n_pairs=3000)
           + cells("partialface", "template_inversion", acc=0.85, ssim=0.30, n_pairs=3000))
    res = verdict(rec, 12)
    judged = [(e.metric) for e in res.evidence]
    assert "SSIM (resrec)" in judged and "SSIM (template_inversion)" not in judged
    assert "SRRA (template_inversion)" in judged
