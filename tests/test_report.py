"""Tables and figures of `bench report`, on synthetic run folders (no training)."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic_run import ADAMIXUP, FULL_DEFENSES, make_run

from bench.reporting.build import build_report
from bench.reporting.cells import load_cells, load_cells_checked
from bench.reporting.tables import table2

ATTACKS = ("cgan", "resrec")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Every defense family the report knows, three attacks, three seeds: every table and figure."""
    run_dir = make_run(tmp_path_factory.mktemp("full"), defenses=FULL_DEFENSES, attacks=ATTACKS,
                       seeds=(0, 1, 2))
    return run_dir, build_report(run_dir)


def _cells(run_dir: Path) -> pd.DataFrame:
    rows = []
    for rec in load_cells(run_dir):
        rows.append({"defense": rec["defense"], "attack": rec["attack"], "seed": rec["seed"],
                     "acc": 100 * rec["accuracy"]["orl"]["accuracy_mean"], **rec["privacy"]})
    return pd.DataFrame(rows)


def test_every_table_and_figure_is_written(full_run):
    run_dir, written = full_run
    tables = {"table2", "table1", "table3", "advface_table1", "advface_table2", "table4",
              "worst_case"}  # ALGORITHMS §15: written for every run
    figures = {"fig_reconstructions_cgan", "fig_reconstructions_resrec", "fig_privacy_utility",
               "fig_advface_eps", "fig_k_share"}  # a reconstruction grid per attack
    assert set(written) == tables | figures | {"report_html"}
    for name in tables:
        assert written[name] == run_dir / f"{name}.csv" and not pd.read_csv(written[name]).empty
    for name in figures:
        path = written[name]
        assert path.suffix == ".png" and path.stat().st_size > 5_000
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 200


def test_table2_reports_mean_and_std_over_seeds(full_run):
    run_dir, written = full_run
    t2 = pd.read_csv(written["table2"])
    cells = _cells(run_dir)
    sub = cells[(cells["defense"] == "ppfr_fd") & (cells["attack"] == "cgan")]
    row = t2[(t2["Method"] == "ppfr_fd") & (t2["Attack"] == "cgan")].iloc[0]
    assert row["n_seeds"] == 3
    assert row["SSIM"] == pytest.approx(sub["SSIM"].mean(), abs=1e-4)
    assert row["SSIM_std"] == pytest.approx(sub["SSIM"].std(ddof=1), abs=1e-4)
    assert row["acc_orl_std"] == pytest.approx(sub["acc"].std(ddof=1), abs=1e-4)
    for col in ("Score", "Score_pp", "Score_cls", "acc_orl", "S1", "S4", "PSNR", "SRRA"):
        assert col in t2.columns
    assert math.isnan(t2[t2["Method"] == "none"]["Score"].iloc[0])  # unprotected: no score


def test_single_seed_has_empty_std(tmp_path):
    run_dir = make_run(tmp_path, seeds=(0,))
    t2 = table2(load_cells(run_dir))
    assert t2["SSIM_std"].isna().all() and (t2["n_seeds"] == 1).all()


def test_hybrid_paper_tables(full_run):
    run_dir, written = full_run
    cells = _cells(run_dir)
    t1 = pd.read_csv(written["table1"]).set_index("Method")
    assert set(t1.index) == {"MixUp", "InstaHide"}
    rgb = cells[(cells["defense"] == "mixup_rgb") & (cells["attack"] == "cgan")]["acc"]
    assert t1.at["MixUp", "RGB"] == pytest.approx(rgb.mean(), abs=1e-4)
    assert t1.at["MixUp", "RGB_std"] == pytest.approx(rgb.std(ddof=1), abs=1e-4)
    assert t1.at["InstaHide", "FD"] > t1.at["InstaHide", "RGB"]

    t3 = pd.read_csv(written["table3"]).set_index("Method")
    assert set(t3.index) == set(ADAMIXUP)  # fixed-k mixing records a k_share too: not a policy
    ks = [f"k={k}" for k in range(2, 7)]
    assert t3.loc["adamixup.k2-6", ks].sum() == pytest.approx(1.0, abs=1e-3)
    assert t3.loc["adamixup.k2-4", ["k=2", "k=3", "k=4"]].sum() == pytest.approx(1.0, abs=1e-3)
    assert t3.loc["adamixup.k2-4", ["k=5", "k=6"]].isna().all()  # outside its k set: not 0
    # seed 0 never drew k = 4: a share of 0 in the mean, not a missing value
    shares = [r["record"]["k_share"].get("4", 0.0) for r in load_cells(run_dir)
              if r["defense"] == "adamixup.k2-4" and r["attack"] == "cgan"]
    assert t3.at["adamixup.k2-4", "k=4"] == pytest.approx(np.mean(shares), abs=1e-4)


def test_advface_tables(full_run):
    _, written = full_run
    # duetface publishes frequency channels (domain "image") but is one of [A]'s baselines
    feature = {"plain_feature", "random_feature", "dp_feature", "duetface", "advface",
               "advface.offline", "advface.eps0.1", "advface.eps0.3", "advface.shadow_unet"}
    a1 = pd.read_csv(written["advface_table1"])
    assert set(a1["Method"]) == feature and set(a1["Attack"]) == {"resrec"}  # resrec when present
    assert {"orl_SSIM", "orl_PSNR", "orl_MSE", "orl_SRRA", "orl_SSIM_std"} <= set(a1.columns)
    a2 = pd.read_csv(written["advface_table2"])
    assert set(a2["Method"]) == feature and "acc_orl_std" in a2.columns
    t4 = pd.read_csv(written["table4"])
    assert set(t4["shadow"]) == {"resrec", "unet"} and {"cgan", "resrec"} <= set(t4.columns)
    unet = t4[t4["shadow"] == "unet"]
    assert list(unet["defense"]) == ["advface.shadow_unet"] and unet["resrec"].notna().all()


def test_tables_and_figures_only_when_the_run_has_their_cells(tmp_path):
    run_dir = make_run(tmp_path, defenses=["none", "ppfr_fd", "advface"], attacks=("cgan",))
    written = build_report(run_dir)
    assert "table1" not in written and "table3" not in written and "fig_k_share" not in written
    assert "fig_advface_eps" not in written  # one ε is not a sweep
    assert "advface_table1" in written and "table4" in written
    # the same folder reported again with fewer cells: stale outputs are removed
    for f in (run_dir / "cells").glob("advface__*"):
        f.unlink()
    written = build_report(run_dir)
    assert not (run_dir / "advface_table1.csv").exists() and not (run_dir / "table4.csv").exists()
    assert set(written) == {"table2", "worst_case", "fig_reconstructions_cgan", "fig_privacy_utility",
                            "report_html"}


def test_damaged_cell_files_are_named_and_skipped(tmp_path):
    run_dir = make_run(tmp_path, seeds=(0,))
    good = (run_dir / "cells" / "ppfr_fd__cgan__s0.json").read_text()
    (run_dir / "cells" / "ppfr_fd__resrec__s0.json").write_text(good[: len(good) // 2])  # half-written
    (run_dir / "cells" / "junk__cgan__s0.json").write_text(json.dumps([1, 2, 3]))
    bad_acc = json.loads(good)
    bad_acc["accuracy"] = {"orl": 0.9}
    (run_dir / "cells" / "badacc__cgan__s0.json").write_text(json.dumps(bad_acc))
    (run_dir / "cells" / "none__cgan__s0.npz").write_bytes(b"PK\x03\x04 truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records, skipped = load_cells_checked(run_dir)
        written = build_report(run_dir)
    assert sorted(skipped) == ["badacc__cgan__s0.json", "junk__cgan__s0.json",
                               "ppfr_fd__resrec__s0.json"]
    assert len(records) == 2
    messages = " ".join(str(w.message) for w in caught)
    for name in skipped + ["none__cgan__s0.npz"]:
        assert name in messages
    assert list(pd.read_csv(written["table2"])["Method"]) == ["none", "ppfr_fd"]
    assert "fig_reconstructions_cgan" in written  # the one readable sample file still draws
    html = written["report_html"].read_text()
    assert all(name in html for name in skipped)


def test_grid_rows_follow_the_samples(full_run, tmp_path):
    """The grid's mosaic is built from the npz arrays: originals first, in order."""
    from bench.reporting.figures import _mosaic

    run_dir, _ = full_run
    with np.load(run_dir / "cells" / "none__cgan__s0.npz") as z:
        orig, rec = z["original"], z["reconstruction"]
    m = _mosaic([orig[:3], rec[:3]], pad=2)
    h, w = orig.shape[2:]
    assert m.shape == (2 * (h + 2), 3 * (w + 2), 3)
    assert np.array_equal(m[:h, :w, 0], orig[0, 0]) and np.array_equal(m[h + 2:2 * h + 2, :w, 1], rec[0, 0])


def test_report_cli_prints_what_it_wrote(tmp_path, capsys):
    from test_compare import cli

    run_dir = make_run(tmp_path, seeds=(0,), defenses=["none", "ppfr_fd", "mixup_fd"])
    (run_dir / "cells" / "ppfr_fd__cgan__s0.json").write_text("{ half")
    with pytest.warns(UserWarning, match="ppfr_fd__cgan__s0.json"):
        rc, out, err = cli(capsys, "report", str(run_dir))
    assert rc == 0, err
    assert "report.html" in out and "table2.csv" in out and "reconstructions_cgan.png" in out
    assert "mixup_fd" in out and "ppfr_fd" not in out


def test_a_failing_figure_does_not_fail_the_report(tmp_path, monkeypatch):
    import bench.reporting.figures as figures

    def broken(*args, **kwargs):
        raise RuntimeError("plotting bug")

    monkeypatch.setattr(figures, "privacy_utility", broken)
    run_dir = make_run(tmp_path, seeds=(0,))
    with pytest.warns(UserWarning, match="privacy_utility.png could not be drawn"):
        written = build_report(run_dir)
    assert "fig_privacy_utility" not in written and "fig_reconstructions_cgan" in written
    assert written["report_html"].exists()


def test_one_sided_table1_is_named_with_the_defenses_that_complete_it():
    from bench.reporting.tables import report_notes, table1_gaps

    recs = lambda *names: [{"defense": n, "perceptual_metric": "lpips"} for n in names]  # noqa: E731
    assert table1_gaps(recs("mixup_fd", "instahide_fd", "none")) == ["instahide_rgb", "mixup_rgb"]
    assert table1_gaps(recs("mixup_fd", "mixup_rgb", "instahide_rgb.k3")) == ["instahide_fd.k3"]
    assert table1_gaps(recs("mixup_fd", "mixup_rgb", "ppfr_fd")) == []
    assert report_notes(recs("none")) == []
    notes = report_notes([{"defense": "mixup_fd", "perceptual_metric": "dssim (LPIPS unavailable)"}])
    assert len(notes) == 2 and "dssim" in notes[0] and "mixup_rgb" in notes[1]


def test_report_html_names_the_defenses_a_one_sided_table1_lacks(tmp_path):
    run_dir = make_run(tmp_path, defenses=["none", "mixup_fd"], attacks=("cgan",), seeds=(0,))
    html = build_report(run_dir, figures=False)["report_html"].read_text()
    assert "Table 1 is one-sided" in html and "<code>mixup_rgb</code>" in html


def test_independent_evaluator_scores_reach_the_tables_only_when_measured(tmp_path):
    from bench.reporting.tables import advface_table1

    run_dir = make_run(tmp_path, defenses=["none", "advface"], attacks=("resrec",), seeds=(0,))
    assert "dlib_SRRA" not in table2(load_cells(run_dir)).columns
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["privacy"].update(dlib_similarity=0.9, dlib_SRRA=0.25)
        path.write_text(json.dumps(rec))
    records = load_cells(run_dir)
    t2 = table2(records).set_index("Method")
    assert t2.loc["advface", "dlib_SRRA"] == 0.25 and t2.loc["none", "dlib_similarity"] == 0.9
    assert advface_table1(records).iloc[0]["orl_dlib_SRRA"] == 0.25


def test_score_cls_normalises_lfw_accuracy_when_the_run_has_it(tmp_path):
    """[H] Table 2 scores LFW: with an LFW column present, Score_cls must follow it, not the
    first (test-split) column, even when the two rank the defenses in opposite orders."""
    from bench.reporting.cells import primary_acc_column

    run_dir = make_run(tmp_path, defenses=["none", "ppfr_fd", "mixup_fd"], attacks=ATTACKS, seeds=(0,))
    lfw = {"ppfr_fd": 0.60, "mixup_fd": 0.90, "none": 0.95}
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["accuracy"]["lfw"] = {**rec["accuracy"]["orl"], "accuracy_mean": lfw[rec["defense"]]}
        path.write_text(json.dumps(rec))
    t2 = table2(load_cells(run_dir)).set_index(["Method", "Attack"])
    for attack in ATTACKS:
        assert t2.loc[("mixup_fd", attack), "Score_cls"] == pytest.approx(1.0)
        assert t2.loc[("ppfr_fd", attack), "Score_cls"] == pytest.approx(0.5)
    assert primary_acc_column(["acc_orl", "acc_LFW", "acc_cfp_fp"]) == "acc_LFW"
    assert primary_acc_column(["acc_orl", "acc_cfp_fp"]) == "acc_orl"
    assert primary_acc_column([]) is None


def test_console_table_drops_columns_no_row_measures_and_says_so():
    import math

    import pandas as pd

    from bench.reporting.tables import format_table

    df = pd.DataFrame({"Method": ["none", "ppfr_fd"], "SSIM": [0.9, 0.5],
                       "link_rank1": [math.nan, math.nan], "SRRA_other": [0.8, math.nan]})
    out = format_table(df)
    header = out.splitlines()[0]
    assert "link_rank1" not in header and "SRRA_other" in header
    assert "not shown (no attack of the run measures them): link_rank1" in out
    assert "– in SRRA_other: not measured for that row" in out
