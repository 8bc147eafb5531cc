"""`bench claims`: every §12 claim gets a verdict from intervals of the differences it rests on."""
from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.reporting.claims import THRESHOLDS, check_claims, judge
from bench.reporting.stats import Interval
from tests.item_records import item_record, write_run


def _by_number(results):
    return {r.number: r for r in results}


@pytest.mark.parametrize("low, high, side, t, verdict", [
    (12, 20, -1, 10, "contradicted"),  # B − A in [12, 20] but the claim says B − A < −10
    (-20, -12, -1, 10, "holds"),
    (-14, -6, -1, 10, "inconclusive"),  # straddles the threshold
    (-1, 3, +1, 0, "inconclusive"),
    (1, 3, +1, 0, "holds"),
    (math.nan, math.nan, +1, 0, "inconclusive"),  # no interval, no verdict either way
])
def test_judge(low, high, side, t, verdict):
    assert judge(Interval(0.0, math.nan, low, high, 1), side, t) == verdict


def test_peep_claim_holds_is_contradicted_or_inconclusive_by_the_numbers(tmp_path):
    # one draw per pair shared by both defenses: their outcomes on a pair are correlated, as
    # two recognizers judged on the same (easy or hard) pair are
    ppfr = item_record("ppfr_fd", "cgan", 0, acc=0.80, ssim=0.4, items_seed=7)
    far = _by_number(check_claims([ppfr, item_record("dp_peep", "cgan", 0, acc=0.49, ssim=0.3,
                                                      items_seed=7)]))
    assert far[5].verdict == "holds"
    ev = far[5].evidence[0]
    assert ev.test == "paired bootstrap"  # same pairs in one run and seed
    assert ev.high < -THRESHOLDS["far_accuracy"]
    near = _by_number(check_claims([ppfr, item_record("dp_peep", "cgan", 0, acc=0.79, ssim=0.3,
                                                       items_seed=7)]))
    assert near[5].verdict == "contradicted"
    few = [item_record(d, "cgan", 0, acc=a, ssim=0.4, n_pairs=40) for d, a in
           (("ppfr_fd", 0.80), ("dp_peep", 0.70))]
    assert _by_number(check_claims(few))[5].verdict == "inconclusive"


def test_claims_without_their_cells_are_not_in_the_run():
    res = _by_number(check_claims([item_record("none", "cgan", 0, acc=0.9, ssim=0.8)]))
    assert len(res) == 10
    assert all(r.verdict == "not in this run" and not r.evidence for r in res.values())


def test_accuracy_falls_with_k_pools_the_k_groups():
    recs = [item_record(f"masking_mixup.k{k}", "cgan", 0, acc=a, ssim=0.3, items_seed=3)
            for k, a in ((2, 0.85), (3, 0.84), (4, 0.70), (5, 0.68), (6, 0.66))]
    res = _by_number(check_claims(recs))
    assert res[2].verdict == "holds", res[2].evidence
    assert "k2 " in res[2].notes[0] and "k6 " in res[2].notes[0]
    flat = [item_record(f"masking_mixup.k{k}", "cgan", 0, acc=0.8, ssim=0.3, items_seed=3)
            for k in (2, 3, 4, 5, 6)]
    assert _by_number(check_claims(flat))[2].verdict == "contradicted"  # no sharp fall


def test_hybrid_claim_uses_the_ssim_proxy_with_one_replicate():
    recs = [item_record("ppfr_fd", "cgan", 0, acc=0.8, ssim=0.45),
            item_record("masking_mixup.k3", "cgan", 0, acc=0.8, ssim=0.30),
            item_record("masking_mixup.k4", "cgan", 0, acc=0.8, ssim=0.28)]
    res = _by_number(check_claims(recs))[9]
    assert res.verdict == "holds" and all(e.metric.startswith("SSIM") for e in res.evidence)
    assert "raw_pp has no interval" in res.notes[0]


def test_xnn_claim_prefers_the_same_vit_as_its_reference():
    xnn = item_record("xnn", "resrec", 0, acc=0.79, ssim=0.3, items_seed=5)
    plain = item_record("plain_feature", "resrec", 0, acc=0.86, ssim=0.6, items_seed=5)
    vs_plain = _by_number(check_claims([xnn, plain]))[10]
    assert {e.a for e in vs_plain.evidence} == {"plain_feature"}
    assert "ResNet split" in vs_plain.notes[0]
    clean = item_record("xnn.clean", "resrec", 0, acc=0.79, ssim=0.6, items_seed=5)
    vs_clean = _by_number(check_claims([xnn, plain, clean]))[10]
    assert {e.a for e in vs_clean.evidence} == {"xnn.clean"} and not vs_clean.notes
    accuracy = next(e for e in vs_clean.evidence if e.what == "accuracy cost")
    assert accuracy.verdict == "holds"  # same accuracy, same pairs: within 3 points


def test_cli_writes_claims_json_and_strict_exits_1_on_a_contradiction(tmp_path, capsys):
    run = write_run(tmp_path, [item_record("ppfr_fd", "cgan", 0, acc=0.80, ssim=0.4, items_seed=7),
                               item_record("dp_peep", "cgan", 0, acc=0.79, ssim=0.3, items_seed=7)])
    assert main(["claims", str(run)]) == 0
    out = capsys.readouterr().out
    assert "CONTRADICTED" in out and "NOT IN THIS RUN" in out and "thresholds:" in out
    saved = json.loads((run / "claims.json").read_text())
    assert {c["number"]: c["verdict"] for c in saved["claims"]}[5] == "contradicted"
    assert main(["claims", str(run), "--strict"]) == 1
