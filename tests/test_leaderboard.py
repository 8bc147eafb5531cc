"""results/leaderboard.csv: one row per comparable (dataset, defense, attack), mean ± std."""
from pathlib import Path

import pandas as pd
import pytest

from bench.leaderboard import KEY, build_leaderboard
from bench.report import load_cells
from synthetic_run import make_run
from test_compare import cli

ROOT = Path(__file__).resolve().parents[1]


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


def test_committed_leaderboard_has_the_schema():
    path = ROOT / "results" / "leaderboard.csv"
    if not path.exists():
        pytest.skip("results/leaderboard.csv not generated yet (python -m bench leaderboard)")
    board = pd.read_csv(path)
    for col in KEY + ["n_seeds", "seeds", "runs", "harness_version", "SSIM", "SSIM_std"]:
        assert col in board.columns
    assert not board.duplicated(subset=KEY).any()


def test_rows_are_ordered_by_defense_then_attack(tmp_path):
    make_run(tmp_path, "b", defenses=("ppfr_fd", "none"), attacks=("resrec", "cgan"))
    table = build_leaderboard(tmp_path)
    pairs = list(zip(table["defense"], table["attack"]))
    assert pairs == sorted(pairs)
