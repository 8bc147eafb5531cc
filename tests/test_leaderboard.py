"""results/leaderboard.csv: one row per comparable (dataset, defense, attack), mean ± std.

Every test builds its leaderboard from synthetic run folders in a temporary directory
(:mod:`synthetic_run`); none reads the committed results/."""
import json
import math
import os
import statistics

import pandas as pd
import pytest
from synthetic_run import make_run
from test_compare import cli

from bench.reporting.cells import load_cells
from bench.reporting.leaderboard import KEY, build_leaderboard


def _row(board: pd.DataFrame, **key) -> pd.DataFrame:
    mask = pd.Series(True, index=board.index)
    for k, v in key.items():
        mask &= board[k] == v
    return board[mask]


def test_seeds_of_comparable_runs_are_pooled_once(tmp_path):
    make_run(tmp_path, "a", seeds=(0, 1))
    make_run(tmp_path, "b", seeds=(2, 3))
    make_run(tmp_path, "a_again", seeds=(0, 1))  # a re-run: the same seeds must not count twice
    board = build_leaderboard(tmp_path)
    assert len(board) == 2  # none × cgan, ppfr_fd × cgan
    row = _row(board, defense="ppfr_fd").iloc[0]
    assert row["n_seeds"] == 4 and row["seeds"] == "0;1;2;3"
    assert set(row["runs"].split(";")) <= {"a", "a_again", "b"} and "b" in row["runs"]
    assert row["harness_version"] == "0.1.0"
    ssim = [r["privacy"]["SSIM"] for run in ("a", "b") for r in load_cells(tmp_path / "runs" / run)
            if r["defense"] == "ppfr_fd"]
    assert row["SSIM"] == pytest.approx(pd.Series(ssim).mean())
    assert row["SSIM_std"] == pytest.approx(pd.Series(ssim).std(ddof=1))


def test_incomparable_settings_are_never_mixed(tmp_path):
    make_run(tmp_path, "base", seeds=(0, 1))
    make_run(tmp_path, "lpips", seeds=(0, 1), perceptual_metric="lpips")
    make_run(tmp_path, "paper", seeds=(0, 1), preset="paper")
    make_run(tmp_path, "opt", seeds=(0, 1), option_overrides={"ppfr_fd": {"perm_mode": "fixed_key"}})
    make_run(tmp_path, "epochs", seeds=(0, 1), config_extra={"recognizer": {"epochs": 9}})
    make_run(tmp_path, "lfw", seeds=(0, 1), dataset="casia")
    board = build_leaderboard(tmp_path)
    assert not board.duplicated(subset=KEY).any()
    ppfr = _row(board, defense="ppfr_fd")
    assert len(ppfr) == 6 and (ppfr["n_seeds"] == 2).all()
    assert all(";" not in runs for runs in ppfr["runs"])  # each row from exactly one run
    assert len(_row(board, defense="none")) == 5  # the ppfr_fd option does not split `none`
    assert set(ppfr["perceptual_metric"]) == {"dssim", "lpips"}


def test_leaderboard_cli(tmp_path, capsys):
    make_run(tmp_path, "a", seeds=(0,))
    rc, out, err = cli(capsys, "leaderboard", "--results", str(tmp_path))
    assert rc == 0, err
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns[:len(KEY)]) == KEY and len(board) == 2
    assert "2 rows" in out
    rc, _, err = cli(capsys, "leaderboard", "--results", str(tmp_path / "empty"))
    assert rc == 2 and err.startswith("error: ") and "runs" in err and err.count("\n") == 1


def _cell(results, run, defense, seed):
    path = results / "runs" / run / "cells" / f"{defense}__cgan__s{seed}.json"
    return path, json.loads(path.read_text())


def _touch(results, run, ns):
    for path in (results / "runs" / run / "cells").glob("*.json"):
        os.utime(path, ns=(ns, ns))


@pytest.mark.parametrize("newest", ["rerun", "first"])
def test_a_re_measured_seed_counts_once_with_its_most_recent_numbers(tmp_path, newest):
    """The same (row key, seed) in two runs: the most recently written cell wins (not the first
    run, not the mean of both), and the mean/std are over the remaining distinct seeds only."""
    make_run(tmp_path, "first", seeds=(0, 1, 2))
    make_run(tmp_path, "rerun", seeds=(0,), shift={"ppfr_fd": 0.05})  # other numbers, same settings
    _touch(tmp_path, "first", 1_000_000_000_000_000_000 if newest == "first" else 10**18 - 10**12)
    _touch(tmp_path, "rerun", 1_000_000_000_000_000_000 if newest == "rerun" else 10**18 - 10**12)
    board = build_leaderboard(tmp_path)
    row = _row(board, defense="ppfr_fd")
    assert len(row) == 1  # the shift changes numbers, not settings: one row
    row = row.iloc[0]
    cells = [_cell(tmp_path, newest, "ppfr_fd", 0)[1]] + [_cell(tmp_path, "first", "ppfr_fd", s)[1]
                                                           for s in (1, 2)]
    ssim = [c["privacy"]["SSIM"] for c in cells]
    acc = [100 * c["accuracy"]["orl"]["accuracy_mean"] for c in cells]  # tables print percent
    assert row["n_seeds"] == 3 and row["seeds"] == "0;1;2"
    assert row["SSIM"] == pytest.approx(sum(ssim) / 3, abs=1e-12)
    assert row["SSIM_std"] == pytest.approx(statistics.stdev(ssim), abs=1e-12)
    assert row["acc_orl"] == pytest.approx(sum(acc) / 3, abs=1e-9)
    assert row["acc_orl_std"] == pytest.approx(statistics.stdev(acc), abs=1e-9)
    # the two candidate numbers for seed 0 really differ: picking the other would be caught
    assert _cell(tmp_path, "first", "ppfr_fd", 0)[1]["privacy"]["SSIM"] != \
        _cell(tmp_path, "rerun", "ppfr_fd", 0)[1]["privacy"]["SSIM"]


def test_folds_of_one_seed_are_replicates_not_duplicates(tmp_path):
    """Identity folds (ALGORITHMS §12) of the same seed are distinct replicates: both count."""
    run = make_run(tmp_path, "folds", seeds=(0,), defenses=["ppfr_fd"])
    path, rec = _cell(tmp_path, "folds", "ppfr_fd", 0)
    rec["fold"], rec["folds"] = 0, 2
    path.write_text(json.dumps(rec))
    other = dict(rec, fold=1, privacy={**rec["privacy"], "SSIM": rec["privacy"]["SSIM"] + 0.1})
    (run / "cells" / "ppfr_fd__cgan__s0__f1.json").write_text(json.dumps(other))
    row = build_leaderboard(tmp_path).iloc[0]
    assert row["n_seeds"] == 1 and row["n_folds"] == 2
    assert row["SSIM"] == pytest.approx(rec["privacy"]["SSIM"] + 0.05, abs=1e-12)
    assert row["SSIM_std"] == pytest.approx(0.1 / math.sqrt(2), abs=1e-12)


def test_a_single_replicate_has_no_spread(tmp_path):
    make_run(tmp_path, "one", seeds=(3,))
    row = _row(build_leaderboard(tmp_path), defense="ppfr_fd").iloc[0]
    assert row["n_seeds"] == 1 and math.isnan(row["SSIM_std"])  # never a made-up 0


def test_rows_are_ordered_by_defense_then_attack(tmp_path):
    make_run(tmp_path, "b", defenses=("ppfr_fd", "none"), attacks=("resrec", "cgan"))
    table = build_leaderboard(tmp_path)
    pairs = list(zip(table["defense"], table["attack"]))
    assert pairs == sorted(pairs)
