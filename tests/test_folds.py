"""Identity folds (`--folds N`, ALGORITHMS §12): each identity is tested once, stages per fold."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_SETTINGS

from bench.cli import main
from bench.config import resolve
from bench.core.errors import DatasetError
from bench.data.facedata import identity_groups
from bench.matrix import fold_configs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("n_ids, folds", [(40, 4), (12, 3), (13, 2)])
def test_every_identity_is_tested_exactly_once_and_splits_are_disjoint(n_ids, folds):
    labels = torch.arange(n_ids).repeat_interleave(3)
    tested = []
    for f in range(folds):
        train, aux, test = identity_groups(labels, (0.5, 0.25, 0.25), seed=3, folds=folds, fold=f)
        parts = [set(train.tolist()), set(aux.tolist()), set(test.tolist())]
        assert all(parts) and sum(map(len, parts)) == n_ids
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert abs(len(train) - 2 * len(aux)) <= 1  # the usual 0.5 : 0.25 proportion of the rest
        tested += test.tolist()
    assert sorted(tested) == list(range(n_ids))


def test_too_many_folds_is_a_clear_error():
    with pytest.raises(DatasetError, match="fewer --folds"):
        identity_groups(torch.arange(8), (0.5, 0.25, 0.25), 0, folds=4, fold=0)


def test_fold_configs_differ_only_in_the_fold():
    cfg = resolve("quick", ["data.folds=3"])
    confs = fold_configs(cfg)
    assert [f for f, _ in confs] == [0, 1, 2]
    assert {c.data.fold for _, c in confs} == {0, 1, 2}
    assert fold_configs(resolve("quick"))[0][0] is None


def test_bad_fold_settings_exit_2(capsys):
    assert main(["run", "--folds", "0", "--dry-run"]) == 2
    assert "data.folds must be >= 1" in capsys.readouterr().err


def test_folds_end_to_end_cells_per_fold_and_intervals(tmp_path):
    args = ["run", "--defenses", "none", "--attacks", "cgan", "--folds", "2", "--no-progress",
            "--results", str(tmp_path)]
    for s in TINY_SETTINGS:
        args += ["--set", s]
    assert main(args) == 0
    run = next((tmp_path / "runs").iterdir())
    cells = sorted(p.name for p in (run / "cells").glob("*.json"))
    assert cells == ["none__cgan__s0__f0.json", "none__cgan__s0__f1.json"]
    recs = [json.loads((run / "cells" / c).read_text()) for c in cells]
    assert [r["fold"] for r in recs] == [0, 1] and all(r["folds"] == 2 for r in recs)
    # the two folds trained different recognizers on different test identities
    assert recs[0]["stage_keys"]["baseline"] != recs[1]["stage_keys"]["baseline"]
    assert recs[0]["targets_digest"] != recs[1]["targets_digest"]
    t2 = pd.read_csv(run / "table2.csv")
    assert int(t2["n_folds"].iloc[0]) == 2
    acc = [100 * r["accuracy"]["orl"]["accuracy_mean"] for r in recs]
    assert t2["acc_orl"].iloc[0] == pytest.approx(sum(acc) / 2, abs=1e-3)
    # ALGORITHMS §12.1: between replicates (here the 2 folds) the interval is a Student-t interval
    # on the replicate means, df = r − 1 = 1 — not a bootstrap over two values (≈ [min, max]),
    # nor an item-level interval that cannot see the folds differ
    from scipy import stats

    ssim = [r["privacy"]["SSIM"] for r in recs]
    for col, values in (("acc_orl", acc), ("SSIM", ssim)):
        mean, sd = sum(values) / 2, abs(values[0] - values[1]) / 2 ** 0.5
        half = float(stats.t.ppf(0.975, 1)) * sd / 2 ** 0.5
        assert sd > 0, values  # the folds differ: a zero-width interval would be wrong
        # the CSV keeps 4 decimals
        assert t2[f"{col}_ci_low"].iloc[0] == pytest.approx(mean - half, abs=1e-4), col
        assert t2[f"{col}_ci_high"].iloc[0] == pytest.approx(mean + half, abs=1e-4), col


# -- one schedule for every fold (bench/matrix.py run_waves): planning only, nothing trains -------
class _Keys:
    """A pipeline's stage keys as readable strings (fold, seed, defense, attack)."""

    def __init__(self, fold: int) -> None:
        self.fold = fold

    def baseline_key(self, seed: int) -> str:
        return f"f{self.fold}/s{seed}"

    def leak_key(self, seed: int, defense: str) -> str:
        return f"{self.baseline_key(seed)}/{defense}"

    def measure_key(self, cell) -> str:
        return f"{self.leak_key(cell.seed, cell.defense)}/{cell.attack}"


def _plan(stored: set[tuple[str, str]], folds: int = 4, seeds=(0, 1), defenses=("none", "ppfr_fd")):
    """Run the schedule of a ``folds``-fold matrix with a fake runner that records each wave and
    "computes" its tasks by marking their outputs stored; returns the waves."""
    from bench.matrix import FoldRun, run_waves
    from bench.pipeline import Cell

    cfg = resolve("quick", [f"data.folds={folds}", f"seeds={list(seeds)}"])
    plan = []
    for fold, cfg_f in fold_configs(cfg):
        keys = _Keys(fold)
        cells = [Cell(s, d, "resrec", fold) for s in seeds for d in defenses]
        todo = [c for c in cells if ("measure", keys.measure_key(c)) not in stored]
        plan.append(FoldRun(fold, cfg_f, keys, cells, todo))
    waves = []

    def runner(label, stage, tasks):
        waves.append((label, stage, tasks))
        for cfg_f, args in tasks:
            keys = _Keys(cfg_f.data.fold)
            if stage == "baseline":
                stored.add(("baseline", keys.baseline_key(*args)))
            elif stage == "defense":
                stored.add(("leak", keys.leak_key(*args)))
            else:
                (cell,) = args
                assert ("leak", keys.leak_key(cell.seed, cell.defense)) in stored  # waves in order
                stored.add(("measure", keys.measure_key(cell)))

    run_waves(plan, lambda stage, key: (stage, key) in stored, runner)
    return waves


def test_every_fold_and_seed_shares_one_wave_per_stage():
    stored = {("baseline", "f2/s1")}  # left by an earlier, interrupted run: not trained again
    waves = _plan(stored)
    assert [(label, stage) for label, stage, _ in waves] == [
        ("baselines", "baseline"), ("defenses", "defense"), ("attacks", "measure")]
    (_, _, baselines), (_, _, chains), (_, _, attacks) = waves
    # one wave holds the baselines of all four folds (each task runs with its own fold's config)
    assert sorted((cfg.data.fold, args) for cfg, args in baselines) == [
        (f, (s,)) for f in range(4) for s in (0, 1) if (f, s) != (2, 1)]
    assert sorted((cfg.data.fold, args) for cfg, args in chains) == [
        (f, (s, d)) for f in range(4) for s in (0, 1) for d in ("none", "ppfr_fd")]
    assert {cfg.data.fold for cfg, _ in attacks} == {0, 1, 2, 3} and len(attacks) == 16
    assert all(cfg.data.fold == cell.fold for cfg, (cell,) in attacks)
    assert all(cfg.data.folds == 4 for _, _, tasks in waves for cfg, _ in tasks)


def test_a_finished_fold_adds_nothing_and_a_finished_matrix_schedules_nothing():
    stored: set[tuple[str, str]] = set()
    _plan(stored, folds=3, seeds=(0,), defenses=("none",))
    again = _plan(stored, folds=3, seeds=(0,), defenses=("none",))
    assert [tasks for _, _, tasks in again] == [[], [], []]
    # fold 1 measured, folds 0 and 2 lost their measurements: only they are scheduled
    stored -= {("measure", "f0/s0/none/resrec"), ("measure", "f2/s0/none/resrec")}
    partial = _plan(stored, folds=3, seeds=(0,), defenses=("none",))
    assert [[(cfg.data.fold, args[0].fold) for cfg, args in tasks] for _, _, tasks in partial] == [
        [], [], [(0, 0), (2, 2)]]


class _StopAfterAttacks(Exception):
    pass


def test_run_matrix_schedules_every_fold_in_each_of_its_three_waves(monkeypatch, tmp_path):
    """run_matrix itself, its waves replaced by a recorder (nothing trains): one wave per stage
    kind, each holding every fold's tasks with that fold's config."""
    import bench.matrix
    from bench.matrix import run_matrix

    waves = []

    def record(label, tasks, *rest):
        waves.append((label, [(cfg.data.fold, args) for cfg, args in tasks]))
        if label == "attacks":  # the records need the stages; stop before writing them
            raise _StopAfterAttacks

    monkeypatch.setattr(bench.matrix, "_wave", record)
    cfg = resolve("quick", [*TINY_SETTINGS, "data.folds=3", "seeds=[0,1]"])
    with pytest.raises(_StopAfterAttacks):
        run_matrix(cfg, ["none"], ["resrec"], tmp_path, run_id="r", progress=False,
                   log=lambda _: None, wave_log=lambda _: None)
    assert [label for label, _ in waves] == ["baselines", "defenses", "attacks"]
    (_, baselines), (_, chains), (_, attacks) = waves
    assert baselines == [(f, (s,)) for f in range(3) for s in (0, 1)]
    assert chains == [(f, (s, "none")) for f in range(3) for s in (0, 1)]
    assert [(f, cell.fold, cell.seed) for f, (cell,) in attacks] == [
        (f, f, s) for f in range(3) for s in (0, 1)]
