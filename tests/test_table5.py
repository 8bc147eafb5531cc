"""Table 5 and n/a cells in the tables (issue "attacks that exploit a defense's structure")."""
from __future__ import annotations

import pandas as pd

from bench.reporting.build import build_report
from bench.reporting.tables import table2, table5
from tests.item_records import item_record, write_run


def _na(rec, reason):
    rec.update(status="n/a", na_reason=reason, privacy={}, per_target={})
    return rec


def _records():
    return [
        item_record("mixup_fd", "cgan", 0, acc=0.8, ssim=0.5),
        item_record("mixup_fd", "carlini", 0, acc=0.8, ssim=0.7),
        item_record("mixup_fd", "carlini.oracle", 0, acc=0.8, ssim=0.9),
        _na(item_record("mixup_fd", "ppfr_whitebox", 0, acc=0.8, ssim=0.5), "not a PPFR-FD mask"),
        item_record("ppfr_fd", "cgan", 0, acc=0.8, ssim=0.4),
        _na(item_record("ppfr_fd", "carlini", 0, acc=0.8, ssim=0.5), "not a mixture"),
        _na(item_record("ppfr_fd", "carlini.oracle", 0, acc=0.8, ssim=0.5), "not a mixture"),
        item_record("ppfr_fd", "ppfr_whitebox", 0, acc=0.8, ssim=0.6),
    ]


def test_table5_has_every_kind_of_attacker_and_na_cells():
    t5 = table5(_records()).set_index("Method")
    assert t5.loc["ppfr_fd", "Carlini learned SSIM"] == "n/a"
    assert t5.loc["mixup_fd", "white-box SRRA"] == "n/a"
    assert abs(t5.loc["mixup_fd", "Carlini oracle (upper bound) SSIM"] - 0.9) < 0.05
    assert abs(t5.loc["ppfr_fd", "white-box SSIM"] - 0.6) < 0.05
    assert pd.isna(t5.loc["ppfr_fd", "decoder SSIM"])  # not run: empty, not n/a
    assert table5([r for r in _records() if r["attack"] == "cgan"]).empty  # only with such attacks


def test_na_cells_keep_their_row_with_the_reason(tmp_path):
    t2 = table2(_records())
    row = t2[(t2["Method"] == "ppfr_fd") & (t2["Attack"] == "carlini")].iloc[0]
    assert row["note"] == "n/a: not a mixture" and pd.isna(row["SSIM"])
    ok = t2[(t2["Method"] == "ppfr_fd") & (t2["Attack"] == "cgan")].iloc[0]
    assert ok["note"] == "" and ok["SSIM"] > 0
    out = build_report(write_run(tmp_path, _records()), figures=False)
    assert "table5" in out and "n/a: not a mixture" in out["report_html"].read_text()


def test_dp_budget_is_in_every_row_of_the_defense():
    dp = item_record("dpsgd", "resrec", 0, acc=0.6, ssim=0.3)
    dp["record"] = {"epsilon": 7.9, "delta": 0.005}
    dp["domain"] = "feature"
    plain = item_record("plain_feature", "resrec", 0, acc=0.8, ssim=0.6)
    plain["domain"] = "feature"
    t2 = table2([dp, plain]).set_index("Method")
    assert t2.loc["dpsgd", "epsilon"] == 7.9 and t2.loc["dpsgd", "delta"] == 0.005
    assert pd.isna(t2.loc["plain_feature", "epsilon"])
    from bench.reporting.tables import advface_table1, advface_table2
    assert advface_table1([dp, plain]).set_index("Method").loc["dpsgd", "epsilon"] == 7.9
    assert advface_table2([dp, plain]).set_index("Method").loc["dpsgd", "epsilon"] == 7.9
    assert "epsilon" not in table2([plain]).columns  # only when the run has a DP budget


def test_table2_shows_the_attackers_knowledge():
    from bench.reporting.tables import table2
    from tests.item_records import item_record

    white = item_record("ppfr_fd", "resrec", 0, acc=0.8, ssim=0.5)
    white["attack_options"] = {"knowledge": "white_box"}
    black = item_record("ppfr_fd", "ppfr_whitebox", 0, acc=0.8, ssim=0.3)
    black["attack_options"] = {"knowledge": "black_box"}
    t2 = table2([white, black]).set_index("Attack")
    assert list(t2.columns[:2]) == ["Method", "Knowledge"]
    assert t2.loc["resrec", "Knowledge"] == "white_box"
    assert t2.loc["ppfr_whitebox", "Knowledge"] == "black_box"
