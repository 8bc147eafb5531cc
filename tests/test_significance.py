"""`bench compare` decides significance on replicate-level t-tests (ALGORITHMS §12.1).

Synthetic runs move like retrained models: every (run, seed) model is off by its own training
noise (a model-level shift of its mean), on top of the sampling of pairs and targets. A test that
only sees the items of one model per side cannot tell that shift from an effect."""
from __future__ import annotations

import zlib

import numpy as np

from bench.cli import main
from bench.reporting.compare import REPRODUCTION, UNTESTABLE_UNPAIRED, compare_runs
from tests.item_records import item_record, write_run

DEFENSES = {"none": (0.85, 0.80), "ppfr_fd": (0.75, 0.40), "mixup_fd": (0.80, 0.50)}
TRAIN_SD_ACC, TRAIN_SD_SSIM = 0.02, 0.04  # model-level shifts of a retrained model


def _records(run_id, seed, shift=0.0, ssim_shift=0.0, same_items_as=None):
    out = []
    for d, (acc, ssim) in DEFENSES.items():
        delta = shift if d == "ppfr_fd" else 0.0
        s_delta = ssim_shift if d == "ppfr_fd" else 0.0
        out.append(item_record(d, "resrec", seed, acc=acc + delta, ssim=ssim + s_delta, run_id=run_id,
                               items_seed=None if same_items_as is None
                               else zlib.crc32(repr((d, same_items_as)).encode())))
    return out


def _trained(run_id, seeds, shift=0.0, options=None):
    """One retrained model per (run, seed, defense): its own model-level shift of accuracy and
    SSIM, then its own draws on the seed's pairs/targets (same seed → same items, same digest).
    ``shift`` moves ppfr_fd's accuracy and SSIM (a real effect: worse on both)."""
    out = []
    for seed in seeds:
        for d, (acc, ssim) in DEFENSES.items():
            rng = np.random.default_rng(zlib.crc32(repr((run_id, seed, d, "model")).encode()))
            delta = shift if d == "ppfr_fd" else 0.0
            rec = item_record(d, "resrec", seed, run_id=run_id, n_pairs=1000,
                              acc=acc + delta + rng.normal(0, TRAIN_SD_ACC),
                              ssim=ssim - delta + rng.normal(0, TRAIN_SD_SSIM),
                              items_seed=zlib.crc32(repr((run_id, seed, d, "items")).encode()))
            if options:
                rec["defense_options"] = {**rec["defense_options"], **options}
            out.append(rec)
    return out


def _rows(comp, metrics=("acc_orl", "SSIM", "SRRA")):
    return comp.metrics[comp.metrics["metric"].isin(metrics)]


def test_runs_that_differ_only_by_seed_show_no_significant_change(tmp_path):
    # one seed per side, other splits: untestable (training noise unknown), never flagged
    a = write_run(tmp_path, _trained("a", [0]), "a")
    b = write_run(tmp_path, _trained("b", [1]), "b")
    comp = compare_runs(a, b)
    tested = _rows(comp)
    assert len(tested) == 9 and set(tested["test"]) == {UNTESTABLE_UNPAIRED}
    assert tested["changed"].sum() >= 6  # the numbers did move between seeds
    assert not comp.metrics["flagged"].any()
    # three seeds per side, other seeds: Welch's t on the replicate means tests every row
    a = write_run(tmp_path, _trained("a3", [0, 1, 2]), "a3")
    b = write_run(tmp_path, _trained("b3", [3, 4, 5]), "b3")
    comp = compare_runs(a, b)
    tested = _rows(comp)
    assert len(tested) == 9 and set(tested["test"]) == {"Welch t over 3 replicates"}
    assert tested["delta_low"].notna().all() and (tested["delta_low"] <= tested["delta_high"]).all()
    assert not comp.metrics["flagged"].any(), comp.metrics[["defense", "metric", "p", "p_holm"]]


def test_a_real_effect_across_seeds_is_significant_with_replicates(tmp_path):
    # five seeds a side: Holm over the ~30 compared metrics needs p below ~0.002
    a = write_run(tmp_path, _trained("a", range(5)), "a")
    b = write_run(tmp_path, _trained("b", range(5, 10), shift=-0.2), "b")
    comp = compare_runs(a, b)
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert row["test"] == "Welch t over 5 replicates" and row["p_holm"] < 0.05 and row["regression"]
    assert row["delta_high"] < 0  # the whole interval of B − A is a loss
    others = comp.metrics[(comp.metrics["defense"] != "ppfr_fd") & comp.metrics["flagged"]]
    assert others.empty, others[["defense", "metric", "p_holm"]]


def test_retraining_noise_on_the_same_items_is_not_flagged_but_a_regression_is(tmp_path):
    """Run B changes an option that does nothing: every model is retrained and moves by its
    training noise, on the same pairs/targets. With one seed the paired item bootstrap would call
    those shifts significant; compare calls them inconclusive. With five seeds on the same
    splits the paired t over replicates leaves the noise alone and flags a real regression."""
    harmless = {"note": "an option that changes nothing but retrains"}
    a = write_run(tmp_path, _trained("a", [0]), "a")
    b = write_run(tmp_path, _trained("b", [0], options=harmless), "b")
    comp = compare_runs(a, b)
    rows = _rows(comp, ("acc_orl", "SSIM"))
    assert rows["changed"].all() and not comp.metrics["flagged"].any()
    assert rows["test"].str.contains(r"inconclusive \(1 replicate; add --seeds 0,1,2\)").all()
    assert (rows["p"] < 0.05).any()  # the item bootstrap alone would have flagged some of them
    seeds = range(5)
    a = write_run(tmp_path, _trained("a5", seeds), "a5")
    noise = compare_runs(a, write_run(tmp_path, _trained("b5", seeds, options=harmless), "b5"))
    assert set(_rows(noise)["test"]) == {"paired t over 5 replicates"}
    assert not noise.metrics["flagged"].any(), noise.metrics[["defense", "metric", "p", "p_holm"]]
    worse = compare_runs(a, write_run(tmp_path, _trained("w5", seeds, shift=-0.3,
                                                         options=harmless), "w5"))
    reg = worse.regressions
    assert {"acc_orl", "SSIM"} <= set(reg.loc[reg["defense"] == "ppfr_fd", "metric"])
    assert set(reg["defense"]) == {"ppfr_fd"}


def test_two_seeds_are_inconclusive(tmp_path):
    a = write_run(tmp_path, _trained("a", [0, 1]), "a")
    b = write_run(tmp_path, _trained("b", [0, 1], shift=-0.2, options={"x": 1}), "b")
    comp = compare_runs(a, b)
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert row["test"].startswith("paired t over 2 replicates: inconclusive (2 replicates")
    assert not row["flagged"] and row["p"] == row["p"]  # p shown, never a verdict


def test_a_reproduction_on_the_same_pairs_is_a_paired_check(tmp_path, capsys):
    # same settings, same seed: B should re-create A; a real loss on the same pairs is flagged
    a = write_run(tmp_path, _records("a", seed=0), "a")
    b = write_run(tmp_path, _records("b", seed=0, shift=-0.15), "b")
    comp = compare_runs(a, b)
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert row["test"] == REPRODUCTION
    assert row["p_holm"] < 0.05 and row["flagged"] and row["regression"]
    # the untouched defenses are identical: no change, nothing flagged
    others = comp.metrics[comp.metrics["defense"] != "ppfr_fd"]
    assert not others["flagged"].any()
    rc = main(["compare", str(a), str(b), "--fail-on-regression"])
    out = capsys.readouterr().out
    assert rc == 1 and "reproduction check" in out and "p (Holm)" in out and "95 %" in out


def test_a_reproduction_in_another_environment_cannot_decide(tmp_path):
    """The same loss re-created with another thread count: the floats may differ for that alone,
    so one replicate's paired items give no verdict, and the comparison names the difference."""
    a = write_run(tmp_path, _records("a", seed=0), "a")
    recs = _records("b", seed=0, shift=-0.15)
    for r in recs:
        r["environment"] = {**(r.get("environment") or {}), "torch_threads": 99}
    comp = compare_runs(a, write_run(tmp_path, recs, "b"))
    row = comp.metrics[(comp.metrics["defense"] == "ppfr_fd") & (comp.metrics["metric"] == "acc_orl")].iloc[0]
    assert "inconclusive (1 replicate" in row["test"] and not row["flagged"]
    assert comp.regressions.empty and comp.environment


def test_metrics_without_items_and_one_replicate_are_untestable(tmp_path):
    a = write_run(tmp_path, _records("a", seed=0), "a")
    b = write_run(tmp_path, _records("b", seed=0, same_items_as="retrained"), "b")
    comp = compare_runs(a, b)
    untestable = comp.metrics[comp.metrics["metric"] == "S3"]
    assert untestable["test"].str.startswith("untestable").all() and not untestable["flagged"].any()
