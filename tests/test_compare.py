"""`bench compare`: setting and metric differences between two runs, and the CI gate."""
import math

import pytest
from synthetic_run import make_run
from test_cli import bench

from bench.reporting.cells import PRIVACY_COLUMNS
from bench.reporting.compare import SPREAD_FACTOR, _flag, compare_runs, direction, format_comparison


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m bench ...` in-process (a subprocess re-imports torch: seconds per call)."""
    from bench.cli import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_identical_runs_report_no_difference(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0, 1))
    b = make_run(tmp_path, "b", seeds=(0, 1))
    comp = compare_runs(a, b)
    assert comp.identical and comp.changed.empty and comp.regressions.empty
    assert "no differences" in format_comparison(comp)
    proc = bench("compare", str(a), str(b), "--fail-on-regression")  # the real entry point, once
    assert proc.returncode == 0 and "no differences" in proc.stdout


def test_one_defense_option_changed_is_reported(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0, 1))
    b = make_run(tmp_path, "b", seeds=(0, 1), option_overrides={"ppfr_fd": {"perm_mode": "fixed_key"}})
    comp = compare_runs(a, b)
    assert not comp.identical
    keys = {k: (va, vb) for k, va, vb in comp.settings}
    assert keys["defense_options[ppfr_fd].perm_mode"] == ("per_sample", "fixed_key")
    assert all("ppfr_fd" in k for k in keys)  # nothing else is claimed to differ
    assert comp.changed.empty  # the synthetic numbers did not move
    out = format_comparison(comp)
    assert "perm_mode" in out and "'per_sample' → 'fixed_key'" in out


def test_regression_gate(tmp_path, capsys):
    # records without per-item data: a paired t over the five seeds' values, Holm over every row
    seeds = (0, 1, 2, 3, 4)
    a = make_run(tmp_path, "a", seeds=seeds)
    worse = make_run(tmp_path, "worse", seeds=seeds, shift={"ppfr_fd": -0.1},
                     option_overrides={"ppfr_fd": {"perm_mode": "fixed_key"}})
    better = make_run(tmp_path, "better", seeds=seeds, shift={"ppfr_fd": 0.02})
    comp = compare_runs(a, worse)
    reg = comp.regressions
    assert set(reg["defense"]) == {"ppfr_fd"}
    assert {"acc_orl", "SSIM", "PSNR", "S3", "raw_pp"} <= set(reg["metric"])
    measured = comp.metrics[comp.metrics["mean_a"].notna()]
    assert set(measured["test"]) == {"paired t over 5 replicates"}  # same seeds: same splits
    acc = comp.metrics[(comp.metrics["metric"] == "acc_orl") & (comp.metrics["defense"] == "ppfr_fd")]
    assert list(acc["attack"]) == ["*"]  # accuracy is compared once per defense
    assert comp.metrics["flagged"].iloc[0]  # flagged rows first
    rel = comp.metrics[comp.metrics["flagged"]]["rel"].tolist()
    assert rel == sorted(rel, reverse=True)

    assert cli(capsys, "compare", str(a), str(worse))[0] == 0  # no gate asked
    rc, out, _ = cli(capsys, "compare", "a", "worse", "--results", str(tmp_path), "--fail-on-regression")
    assert rc == 1 and "regression" in out and "perm_mode" in out
    # better accuracy and privacy: changes, none of them a regression
    comp = compare_runs(a, better)
    assert not comp.changed.empty and comp.regressions.empty
    assert cli(capsys, "compare", str(a), str(better), "--fail-on-regression")[0] == 0


def test_a_stronger_attack_on_the_unprotected_baseline_is_no_regression(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0, 1, 2))
    b = make_run(tmp_path, "b", seeds=(0, 1, 2), attack_gain={"none": 0.05, "ppfr_fd": 0.05})
    comp = compare_runs(a, b)
    none = comp.metrics[comp.metrics["defense"] == "none"]
    ssim = none[none["metric"] == "SSIM"].iloc[0]
    assert ssim["flagged"] and ssim["worse"] and not ssim["regression"]
    # the same change on a protected defense is a regression
    assert set(comp.regressions["defense"]) == {"ppfr_fd"}


def test_cells_in_one_run_only_are_listed(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0,))
    b = make_run(tmp_path, "b", seeds=(0,), defenses=["none", "ppfr_fd", "advface"])
    comp = compare_runs(a, b)
    assert comp.only_b == ["advface × cgan"] and not comp.only_a
    assert "only in B" in format_comparison(comp)


def test_flag_rule():
    # two seeds on each side: only changes beyond 2x the larger std are flagged
    assert _flag(1.0, 1.0 + 1.9 * 0.1, 0.1, 0.05)[1] is False
    assert _flag(1.0, 1.0 + 2.1 * 0.1, 0.1, 0.05)[1] is True
    assert SPREAD_FACTOR == 2.0
    # a single seed on both sides: any change beyond float noise
    nan = math.nan
    assert _flag(0.5, 0.5001, nan, nan)[:2] == (True, True)
    assert _flag(0.5, 0.5 + 1e-12, nan, nan)[:2] == (False, False)
    # the spread of the run that has one is used
    assert _flag(0.5, 0.52, 0.02, nan)[1] is False
    # a metric that appears or vanishes is flagged
    assert _flag(nan, 0.5, nan, nan)[1] is True and _flag(nan, nan, nan, nan)[0] is False


def test_every_metric_has_a_direction():
    assert direction("acc_lfw") == ("utility", 1)
    for m in PRIVACY_COLUMNS + ["raw_pp"]:
        kind, sign = direction(m)
        assert kind == "privacy" and sign in (1, -1)
    assert direction("SSIM")[1] == -1 and direction("S3")[1] == 1 and direction("MSE")[1] == 1
    with pytest.raises(KeyError):
        direction("Score")


def test_unknown_run_is_a_one_line_error(tmp_path, capsys):
    a = make_run(tmp_path, "a", seeds=(0,))
    rc, _, err = cli(capsys, "compare", str(a), str(tmp_path / "nope"))
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "nope" in err
