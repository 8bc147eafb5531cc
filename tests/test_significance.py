"""`bench compare` decides significance with bootstrap tests over pairs/targets (ALGORITHMS §12)."""
from __future__ import annotations

import zlib

import numpy as np

from bench.cli import main
from bench.reporting.compare import UNTESTABLE_UNPAIRED, compare_runs
from tests.item_records import item_record, write_run

DEFENSES = {"none": (0.85, 0.80), "ppfr_fd": (0.75, 0.40), "mixup_fd": (0.80, 0.50)}


def _records(run_id, seed, shift=0.0, ssim_shift=0.0, same_items_as=None):
    out = []
    for d, (acc, ssim) in DEFENSES.items():
        delta = shift if d == "ppfr_fd" else 0.0
        s_delta = ssim_shift if d == "ppfr_fd" else 0.0
        out.append(item_record(d, "resrec", seed, acc=acc + delta, ssim=ssim + s_delta, run_id=run_id,
                               items_seed=None if same_items_as is None
                               else zlib.crc32(repr((d, same_items_as)).encode())))
    return out


def _seed_noise_records(run_id, seeds, shift=0.0):
    """Cells whose per-seed means move like retrained models do (a per-seed offset on top of the
    per-item sampling): the training noise a bootstrap over one replicate's items cannot see."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed + 100)
        for d, (acc, ssim) in DEFENSES.items():
            delta = shift if d == "ppfr_fd" else 0.0
            out.append(item_record(d, "resrec", seed, acc=acc + delta + rng.normal(0, 0.02),
                                   ssim=ssim + rng.normal(0, 0.03), run_id=run_id))
    return out


def test_runs_that_differ_only_by_seed_show_no_significant_change(tmp_path):
    # one seed per side, other splits: untestable (training noise unknown), never flagged
    a = write_run(tmp_path, _seed_noise_records("a", [0]), "a")
    b = write_run(tmp_path, _seed_noise_records("b", [1]), "b")
    comp = compare_runs(a, b)
    tested = comp.metrics[comp.metrics["metric"].isin(["acc_orl", "SSIM", "SRRA"])]
    assert len(tested) == 9 and set(tested["test"]) == {UNTESTABLE_UNPAIRED}
    assert tested["changed"].sum() >= 6  # the numbers did move between seeds
    assert not comp.metrics["flagged"].any()
    # three seeds per side: a hierarchical bootstrap over seeds and items tests every row
    a = write_run(tmp_path, _seed_noise_records("a3", [0, 1, 2]), "a3")
    b = write_run(tmp_path, _seed_noise_records("b3", [3, 4, 5]), "b3")
    comp = compare_runs(a, b)
    tested = comp.metrics[comp.metrics["metric"].isin(["acc_orl", "SSIM", "SRRA"])]
    assert len(tested) == 9 and set(tested["test"]) == {"bootstrap"}
    assert not comp.metrics["flagged"].any(), comp.metrics[["defense", "metric", "p", "p_holm"]]


def test_a_real_effect_across_seeds_is_significant_with_replicates(tmp_path):
    a = write_run(tmp_path, _seed_noise_records("a", [0, 1, 2]), "a")
    b = write_run(tmp_path, _seed_noise_records("b", [3, 4, 5], shift=-0.2), "b")
    comp = compare_runs(a, b)
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert row["test"] == "bootstrap" and row["p_holm"] < 0.05 and row["regression"]
    others = comp.metrics[(comp.metrics["defense"] != "ppfr_fd") & comp.metrics["flagged"]]
    assert others.empty, others[["defense", "metric", "p_holm"]]


def test_a_real_effect_on_the_same_pairs_is_significant_and_paired(tmp_path, capsys):
    a = write_run(tmp_path, _records("a", seed=0), "a")
    b = write_run(tmp_path, _records("b", seed=0, shift=-0.15), "b")  # same pairs, worse defense
    comp = compare_runs(a, b)
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert row["test"] == "paired bootstrap"
    assert row["p_holm"] < 0.05 and row["flagged"] and row["regression"]
    # the untouched defenses are identical: no change, nothing flagged
    others = comp.metrics[comp.metrics["defense"] != "ppfr_fd"]
    assert not others["flagged"].any()
    rc = main(["compare", str(a), str(b), "--fail-on-regression"])
    out = capsys.readouterr().out
    assert rc == 1 and "paired bootstrap" in out and "p (Holm)" in out


def test_retraining_noise_on_the_same_targets_is_not_flagged(tmp_path):
    a = write_run(tmp_path, _records("a", seed=0), "a")
    b = write_run(tmp_path, _records("b", seed=0, same_items_as="retrained"), "b")  # same items, new draws
    comp = compare_runs(a, b)
    rows = comp.metrics[comp.metrics["metric"].isin(["SSIM", "acc_orl"])]
    assert (rows["test"] == "paired bootstrap").all() and rows["changed"].all()
    assert not rows["flagged"].any(), rows[["defense", "metric", "delta", "p", "p_holm"]]
    untestable = comp.metrics[comp.metrics["metric"] == "S3"]
    assert untestable["test"].str.startswith("untestable").all() and not untestable["flagged"].any()
