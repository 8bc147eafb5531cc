"""Worst case per defense (ALGORITHMS §15): the table, its block in report.html, the leaderboard's
privacy rank, and ``--attacks strongest``."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from bench.reporting.worst_case import FAMILIES, underpowered_notes, worst_case
from tests.item_records import item_record, write_run
from tests.synthetic_run import cell_record

FAMILY = {"resrec": "decoder", "cgan": "cgan", "linkage": "linkage", "carlini": "decoupling",
          "template_inversion": "template", "ppfr_whitebox": "analytic"}


def rec(defense: str, attack: str, seed: int = 0, knowledge: str = "white_box",
        **privacy: float) -> dict[str, Any]:
    r = cell_record(defense, attack, seed, "run")
    r["attack_family"] = FAMILY[attack]
    r["attack_options"] = {"knowledge": knowledge}
    r["privacy"].update(privacy)
    return r


def na(defense: str, attack: str) -> dict[str, Any]:
    r = rec(defense, attack)
    r.update(status="n/a", na_reason="does not apply", privacy={})
    return r


def test_the_worst_case_is_the_maximum_over_attacks_with_the_attack_that_reached_it() -> None:
    records = [rec("ppfr_fd", "resrec", SSIM=0.5, SRRA=0.4, SRRA_other=0.3),
               rec("ppfr_fd", "cgan", SSIM=0.6, SRRA=0.2, SRRA_other=0.35),
               rec("ppfr_fd", "linkage", SSIM=None, SRRA=None, link_rank1=0.9, link_chance=0.1,
                   **{"link_tar@far1e-3": 0.4}),
               na("ppfr_fd", "carlini"),
               rec("none", "resrec", SSIM=0.95, SRRA=1.0)]
    table = worst_case(records).set_index("defense")
    row = table.loc["ppfr_fd"]
    assert (row["SSIM"], row["SSIM_attack"]) == (0.6, "cgan")
    assert (row["SRRA"], row["SRRA_attack"]) == (0.4, "resrec")
    assert (row["SRRA_other"], row["SRRA_other_attack"]) == (0.35, "cgan")
    assert (row["link_rank1"], row["link_rank1_attack"], row["link_chance"]) == (0.9, "linkage", 0.1)
    assert row["link_tar@far1e-3_attack"] == "linkage"
    assert row["families"] == "cgan;decoder;linkage" and row["n_families"] == 3
    assert row["families_na"] == "decoupling"
    assert row["families_missing"] == "analytic;template"
    assert "attacked by 3 of 6 families" in row["note"]
    assert math.isnan(table.loc["none", "link_rank1"]) and table.loc["none", "SRRA"] == 1.0
    assert list(FAMILIES) == ["decoder", "cgan", "decoupling", "analytic", "linkage", "template"]


def test_worst_case_is_per_knowledge_level_and_averages_seeds_first() -> None:
    records = [rec("ppfr_fd", "resrec", 0, SRRA=0.2), rec("ppfr_fd", "resrec", 1, SRRA=0.6),
               rec("ppfr_fd", "cgan", 0, SRRA=0.5),
               rec("ppfr_fd", "resrec", 0, knowledge="black_box", SRRA=0.1)]
    table = worst_case(records).set_index(["defense", "knowledge"])
    assert table.loc[("ppfr_fd", "white_box"), "SRRA"] == pytest.approx(0.5)  # cgan .5 > resrec .4
    assert table.loc[("ppfr_fd", "white_box"), "SRRA_attack"] == "cgan"
    assert table.loc[("ppfr_fd", "black_box"), "SRRA"] == pytest.approx(0.1)


def test_underpowered_attacks_are_flagged_in_notes_tables_and_worst_case() -> None:
    from bench.reporting.tables import table2

    weak = rec("none", "resrec", SSIM=0.3, SRRA=0.2)
    weak.update(underpowered=True, floor_shortfall={"SSIM": [0.3, 0.8], "SRRA": [0.2, 0.9]})
    records = [weak, rec("ppfr_fd", "resrec", SSIM=0.2, SRRA=0.1)]
    notes = underpowered_notes(records)
    assert len(notes) == 1 and "resrec is underpowered on none" in notes[0]
    assert "SSIM 0.300 < floor 0.800" in notes[0]
    row = worst_case(records).set_index("defense").loc["ppfr_fd"]
    assert row["underpowered"] == "resrec" and "lower bound" in row["note"]
    t2 = table2(records)
    assert t2["note"].str.contains("underpowered on none").all()


def test_report_writes_worst_case_csv_and_an_html_block(tmp_path) -> None:
    from bench.reporting.build import build_report

    run = write_run(tmp_path, [item_record(d, "resrec", 0, acc=0.9, ssim=s)
                               for d, s in (("none", 0.9), ("ppfr_fd", 0.4))], "r")
    written = build_report(run, figures=False)
    assert written["worst_case"].name == "worst_case.csv"
    csv = pd.read_csv(written["worst_case"])
    assert set(csv["defense"]) == {"none", "ppfr_fd"} and "families_missing" in csv
    html = (run / "report.html").read_text()
    assert "id='worst_case'" in html and "Worst case per defense" in html


def test_leaderboard_ranks_privacy_by_the_worst_case(tmp_path) -> None:
    from bench.reporting.leaderboard import build_leaderboard

    # ppfr_fd looks private to resrec (SSIM .2) but cgan re-identifies it (SSIM .95 → SRRA high):
    # by its worst case it ranks below dp_peep, which no attack breaks
    recs = [item_record("ppfr_fd", "resrec", s, acc=0.9, ssim=0.2, items_seed=s) for s in range(3)]
    recs += [item_record("ppfr_fd", "cgan", s, acc=0.9, ssim=0.95, items_seed=10 + s) for s in range(3)]
    recs += [item_record("dp_peep", a, s, acc=0.6, ssim=0.35, items_seed=20 + s + 3 * i)
             for i, a in enumerate(("resrec", "cgan")) for s in range(3)]
    for r in recs:
        r["attack_family"] = FAMILY[r["attack"]]
    write_run(tmp_path, recs, "r1")
    lb = build_leaderboard(tmp_path)
    by = {(d, a): row for d, a, row in zip(lb["defense"], lb["attack"], lb.to_dict("records"))}
    assert by[("ppfr_fd", "resrec")]["worst_SRRA_attack"] == "cgan"
    assert by[("ppfr_fd", "resrec")]["rank_privacy"] == 2 == by[("ppfr_fd", "cgan")]["rank_privacy"]
    assert by[("dp_peep", "resrec")]["rank_privacy"] == 1
    assert by[("ppfr_fd", "resrec")]["rank_privacy_attack"] == 1  # per attack, resrec alone
    assert by[("dp_peep", "cgan")]["families"] == "cgan;decoder"
    assert "attacked by 2 of 6 families" in by[("dp_peep", "cgan")]["families_note"]


def test_strongest_picks_one_applicable_representative_per_family() -> None:
    from bench.cli import strongest_attacks
    from bench.config import resolve
    from bench.plugins import load_plugins

    load_plugins()
    cfg = resolve("quick", [], {})
    union, picks = strongest_attacks(["none", "ppfr_fd", "mixup_fd", "xnn"], cfg)
    assert picks["none"] == ["resrec", "cgan", "linkage", "template_inversion"]
    assert picks["ppfr_fd"] == ["resrec", "cgan", "ppfr_whitebox", "linkage", "template_inversion"]
    assert picks["mixup_fd"] == ["resrec", "cgan", "carlini", "linkage", "template_inversion"]
    assert picks["xnn"] == ["resrec", "cgan", "xnn_reorder", "linkage", "template_inversion"]
    assert union == ["resrec", "cgan", "carlini", "ppfr_whitebox", "xnn_reorder", "linkage",
                     "template_inversion"]
    assert "carlini.oracle" not in union  # an upper bound with ground truth is not an attacker


def test_attacks_option_expands_strongest_and_prints_the_picks(capsys) -> None:
    from bench.cli import _expand_attacks
    from bench.config import resolve
    from bench.plugins import load_plugins

    load_plugins()
    got = _expand_attacks("strongest,urec", ["none"], resolve("quick", [], {}))
    assert got == ["resrec", "cgan", "linkage", "template_inversion", "urec"]
    assert "strongest: none → resrec, cgan, linkage, template_inversion" in capsys.readouterr().out
