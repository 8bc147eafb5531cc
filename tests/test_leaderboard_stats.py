"""Leaderboard intervals, ranks with ties, environments never pooled, and leaderboard.html."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as t_dist

from bench.cli import main
from bench.reporting.leaderboard import build_leaderboard, tie_ranks
from tests.item_records import item_record, write_run
from tests.test_html_report import CHROMIUM, chromium, dump_dom, tags  # noqa: F401 (fixture)

ENV = {"harness": "0.2.0", "torch": "2.14.1", "numpy": "2.4.6", "timm": "1.0.31",
       "scikit-image": "0.26", "scipy": "1.16", "device_model": "cpu: x", "torch_threads": 2}


def test_tie_ranks_share_a_rank_where_intervals_overlap():
    # A [80, 90] and B [78, 88] overlap: tied; C [50, 60] is below both
    r = tie_ranks([85, 83, 55], [80, 78, 50], [90, 88, 60], higher_is_better=True)
    assert r == [1.0, 1.0, 3.0]
    r = tie_ranks([0.1, 0.5, math.nan], [0.05, 0.4, math.nan], [0.15, 0.6, math.nan], False)
    assert r[:2] == [1.0, 2.0] and math.isnan(r[2])
    assert tie_ranks([1, 2], [math.nan] * 2, [math.nan] * 2, True) == [1.0, 1.0]  # no intervals


def _runs(tmp_path, env_b=None, seeds=(0,)):
    recs = [item_record(d, "cgan", seed, acc=a + 0.005 * seed, ssim=s, items_seed=5 + seed,
                        run_id="r1")
            for seed in seeds
            for d, a, s in (("none", 0.86, 0.85), ("ppfr_fd", 0.84, 0.40), ("dp_peep", 0.55, 0.30))]
    for r in recs:
        r["environment"] = ENV
    write_run(tmp_path, recs, "r1")
    if env_b is not None:
        other = [item_record("ppfr_fd", "cgan", 1, acc=0.84, ssim=0.40, run_id="r2")]
        other[0]["environment"] = env_b
        write_run(tmp_path, other, "r2")


def test_tie_ranks_need_three_replicates_on_both_rows():
    low, high = [80, 50], [90, 60]
    assert tie_ranks([85, 55], low, high, True, replicates=[3, 3]) == [1.0, 2.0]
    assert tie_ranks([85, 55], low, high, True, replicates=[3, 1]) == [1.0, 1.0]
    assert tie_ranks([85, 55], low, high, True, replicates=[2, 2]) == [1.0, 1.0]


def test_one_seed_ranks_no_defense_apart(tmp_path):
    # one trained model per row: its item interval cannot see training noise (§12.1)
    _runs(tmp_path)
    lb = build_leaderboard(tmp_path).set_index("defense")
    assert (lb["n_replicates"] == 1).all()
    assert (lb["rank_utility"] == 1).all() and lb["tied_utility"].all()
    assert (lb["rank_privacy"] == 1).all()


def test_leaderboard_has_intervals_ranks_and_ties(tmp_path):
    _runs(tmp_path, seeds=(0, 1, 2))
    lb = build_leaderboard(tmp_path).set_index("defense")
    for col in ("acc_orl_ci_low", "acc_orl_ci_high", "SSIM_ci_low", "SSIM_ci_high"):
        assert lb[col].notna().all()
    assert (lb["acc_orl_ci_low"] < lb["acc_orl"]).all() and (lb["acc_orl"] < lb["acc_orl_ci_high"]).all()
    assert (lb["n_replicates"] == 3).all()
    # Student-t over the three seeds' means (df = 2)
    accs = [100 * np.mean(r["accuracy"]["orl"]["correct"]) for r in
            (item_record("none", "cgan", s, acc=0.86 + 0.005 * s, ssim=0.85, items_seed=5 + s)
             for s in (0, 1, 2))]
    half = t_dist.ppf(0.975, 2) * np.std(accs, ddof=1) / math.sqrt(3)
    assert lb.loc["none", "acc_orl_ci_high"] == pytest.approx(np.mean(accs) + half)
    # none and ppfr_fd are two points apart: tied; dp_peep is far below
    assert lb.loc["none", "rank_utility"] == lb.loc["ppfr_fd", "rank_utility"] == 1
    assert lb.loc["none", "tied_utility"] and lb.loc["dp_peep", "rank_utility"] == 3
    # privacy: none's reconstructions are re-identified far more often → ranked last
    assert lb.loc["none", "rank_privacy"] == 3


def test_records_from_different_environments_are_never_pooled(tmp_path):
    _runs(tmp_path, env_b={**ENV, "torch": "2.13.0"})
    lb = build_leaderboard(tmp_path)
    ppfr = lb[lb["defense"] == "ppfr_fd"]
    assert len(ppfr) == 2 and ppfr["environment"].nunique() == 2 and (ppfr["n_seeds"] == 1).all()
    _runs(tmp_path / "same", env_b=dict(ENV))
    ppfr = build_leaderboard(tmp_path / "same").query("defense == 'ppfr_fd'")
    assert len(ppfr) == 1 and int(ppfr["n_seeds"].iloc[0]) == 2


SORT_PROBE = ("<script>window.addEventListener('load',()=>{const th=[...document.querySelectorAll"
              "('table.lb th')].find(h=>h.textContent==='acc_orl');th.click();"
              "document.body.setAttribute('data-first',document.querySelector('table.lb tbody tr')"
              ".cells[0].textContent);});</script>")


def test_leaderboard_html_renders_and_sorts_in_headless_chromium(tmp_path, chromium):  # noqa: F811
    _runs(tmp_path)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    page = tmp_path / "leaderboard.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<link" not in html  # self-contained
    assert "environment" in html and "settings" in html and "=1" in html  # key visible, ties marked
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", SORT_PROBE + "</body>"))
    dom = dump_dom(chromium, probe, tmp_path / "profile")
    assert len([t for t, _ in tags(dom) if t == "tr"]) == 4  # header + 3 rows
    assert 'data-first="dp_peep"' in dom  # one click on acc_orl sorts ascending: worst first
    assert "[" in dom and "]" in dom  # intervals shown
