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
    assert t2["acc_orl_ci_low"].iloc[0] <= min(acc) + 1e-6 or t2["acc_orl_ci_low"].iloc[0] < t2["acc_orl"].iloc[0]
    assert t2["SSIM_ci_low"].iloc[0] < t2["SSIM"].iloc[0] < t2["SSIM_ci_high"].iloc[0]
