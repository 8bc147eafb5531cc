"""Attack strength floors (ALGORITHMS §15): every attack states its family and what it must reach
on ``none``; a cell on ``none`` under the floor is recorded ``underpowered``; ``bench compare``
fails when an attack's strength on an unprotected defense drops."""
from __future__ import annotations

import pytest

from bench import pipeline as pl
from bench.cli import main
from bench.core.registry import ATTACKS
from bench.plugins import load_plugins
from bench.reporting.cells import PRIVACY_COLUMNS
from bench.reporting.compare import compare_runs
from bench.reporting.worst_case import FAMILIES
from tests.item_records import item_record, write_run

load_plugins()
BASE_ATTACKS = [n for n in ATTACKS.names() if not ATTACKS.get(n).options]


@pytest.mark.parametrize("name", BASE_ATTACKS)
def test_every_attack_states_its_family_and_floor(name: str) -> None:
    cls = ATTACKS.get(name).factory
    assert cls.family in FAMILIES, f"{name}: family {cls.family!r}"
    assert cls.floor or cls.floor_note, f"{name}: no floor on none and no reason why"
    assert set(cls.floor) <= set(PRIVACY_COLUMNS), cls.floor
    assert all(0 < v <= 1 for v in cls.floor.values())


@pytest.mark.parametrize("name", [n for n in BASE_ATTACKS if ATTACKS.get(n).factory.floor])
def test_attacks_with_a_floor_apply_to_none(name: str) -> None:
    from bench.core.registry import DEFENSES

    assert ATTACKS.create(name).not_applicable(DEFENSES.create("none")) is None


def test_a_none_cell_under_its_floor_is_underpowered() -> None:
    ok = {"status": "ok", "privacy": {"SSIM": 0.95, "SRRA": 1.0}}
    out = pl.attack_strength(pl.Cell(0, "none", "resrec"), ok)
    assert out["underpowered"] is False and out["attack_family"] == "decoder"
    assert out["attack_floor"] == ATTACKS.get("resrec").factory.floor
    weak = {"status": "ok", "privacy": {"SSIM": 0.2, "SRRA": float("nan")}}
    out = pl.attack_strength(pl.Cell(0, "none", "resrec"), weak)
    assert out["underpowered"] is True
    assert out["floor_shortfall"]["SSIM"][0] == 0.2 and "SRRA" in out["floor_shortfall"]
    # the floor is about the unprotected defense: elsewhere nothing is judged
    assert pl.attack_strength(pl.Cell(0, "ppfr_fd", "resrec"), weak)["underpowered"] is None
    assert pl.attack_strength(pl.Cell(0, "none", "carlini"), {"status": "n/a"})["underpowered"] is None


def _runs(tmp_path, ssim_b: float, defense: str = "none"):
    a = write_run(tmp_path / "a", [item_record(defense, "resrec", 0, acc=0.9, ssim=0.9, items_seed=1)], "a")
    b = write_run(tmp_path / "b", [item_record(defense, "resrec", 0, acc=0.9, ssim=ssim_b, items_seed=1)], "b")
    return a, b


def test_a_weaker_attack_on_none_is_a_regression(tmp_path, capsys) -> None:
    a, b = _runs(tmp_path, 0.3)
    comp = compare_runs(a, b)
    reg = comp.regressions
    assert set(reg["metric"]) >= {"SSIM", "SRRA"}
    assert (reg["kind"] == "attack strength").all()
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert "(attack strength)" in capsys.readouterr().out
    # a stronger attack on none is the attack's business, not a regression
    assert compare_runs(b, a).regressions.empty


def test_better_privacy_of_a_protected_defense_is_not_an_attack_regression(tmp_path) -> None:
    a, b = _runs(tmp_path, 0.3, defense="ppfr_fd")
    comp = compare_runs(a, b)
    assert comp.regressions.empty and comp.metrics["flagged"].any()
