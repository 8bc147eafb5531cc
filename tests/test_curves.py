"""Training curves: the loops record every epoch without changing a number, the pipeline keeps
them per stage, reports plot them and flag attacks that had not converged."""
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic_run import make_run
from torch import nn

from bench.core.context import Context
from bench.core.curves import recording_curves
from bench.core.training import train_epochs, train_l1_decoder
from bench.reporting.curves import (ConvergenceRule, attack_convergence, convergence_table,
                                    judge_loop)


def _toy_training(epochs: int = 4, held_out: bool = False):
    """A linear decoder trained by the L1 loop on fixed data; returns (weights, last losses)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g), torch.randn(40, 2, generator=g)
    ctx = Context(seed=0, progress=False)
    fn = (lambda net: {"l1": float((net(x[:8]) - y[:8]).abs().mean().detach())}) if held_out else None
    net, losses = train_l1_decoder("toy", lambda: nn.Linear(3, 2), x, y, epochs=epochs,
                                   batch_size=8, lr=0.05, ctx=ctx, init_salt=("toy",),
                                   shuffle=torch.Generator().manual_seed(1), held_out=fn)
    return net.weight.detach().clone(), losses


def test_recording_changes_no_number_and_keeps_every_epoch():
    plain_w, plain_losses = _toy_training()
    with recording_curves() as log:
        w, losses = _toy_training()
    assert torch.equal(w, plain_w) and losses == plain_losses
    (curve,) = log.curves
    assert curve["name"] == "toy" and curve["loop"] == "train_epochs"
    assert len(curve["losses"]["l1"]) == 4 and curve["losses"]["l1"][-1] == losses["l1"]
    assert "held_out" not in curve


def test_a_held_out_loss_is_recorded_beside_the_training_loss_without_changing_it():
    plain_w, plain_losses = _toy_training()
    with recording_curves() as log:
        w, losses = _toy_training(held_out=True)
    assert torch.equal(w, plain_w) and losses == plain_losses
    assert len(log.curves[0]["held_out"]["l1"]) == 4
    assert judge_loop(log.curves[0])["basis"] == "held-out l1"


def test_nested_stages_keep_their_own_curves_and_outside_nothing_is_kept():
    ctx = Context(seed=0, progress=False)
    step = lambda idx: {"loss": torch.tensor(1.0)}  # noqa: E731
    train_epochs("outside", 4, 2, 2, step, torch.Generator(), ctx)  # no log: nothing kept, no error
    with recording_curves() as outer:
        train_epochs("a", 4, 2, 2, step, torch.Generator(), ctx)
        with recording_curves() as inner:
            train_epochs("b", 4, 3, 2, step, torch.Generator(), ctx)
    assert [c["name"] for c in outer.curves] == ["a"] and [c["name"] for c in inner.curves] == ["b"]


def test_sgd_epochs_records_the_recognizer_loss_per_epoch():
    from bench.config import RecognizerConfig
    from bench.recognition import sgd_epochs

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    cfg = RecognizerConfig(epochs=3, batch_size=8, lr=0.1, milestones=(), warmup_epochs=0)
    step = lambda idx, flip, _: nn.functional.cross_entropy(model(x[idx]), y[idx])  # noqa: E731
    with recording_curves() as log:
        sgd_epochs(list(model.parameters()), step, 32, cfg, torch.Generator().manual_seed(0),
                   "rec", progress=False)
    assert log.curves[0]["loop"] == "sgd_epochs" and len(log.curves[0]["losses"]["loss"]) == 3


# -- the verdict ---------------------------------------------------------------------------------
def _rec(attack_curves, defense="ppfr_fd", attack="cgan", seed=0):
    return {"defense": defense, "attack": attack, "seed": seed, "status": "ok",
            "curves": {"attack": attack_curves}}


def _loop(losses, held_out=None, name="cgan"):
    c = {"name": name, "loop": "train_epochs", "losses": losses}
    if held_out:
        c["held_out"] = held_out
    return c


@pytest.mark.parametrize("series, expected", [
    ([1.0, 0.8, 0.6, 0.5, 0.4], False),  # 0.5 → 0.4 over the last epoch: −20 %
    ([1.0, 0.5, 0.42, 0.41, 0.405], True),  # −1.2 %: flat
    ([1.0], None),  # one epoch: nothing to compare
    ([1.0, 1.1, 1.2], True),  # rising (diverging or over-fitting) is not "still improving"
])
def test_steeply_falling_means_not_converged(series, expected):
    assert attack_convergence(_rec([_loop({"l1": series})]))["converged"] is expected


def test_the_window_is_the_last_fifth_of_the_epochs():
    series = [1.0] * 10 + [0.9, 0.85]  # 12 epochs: window of 3 → 1.0 → 0.85 = −15 %
    v = attack_convergence(_rec([_loop({"l1": series})]))
    assert v["converged"] is False and v["drop"] == pytest.approx(0.15)
    loose = ConvergenceRule(window=0.2, min_drop=0.2)
    assert attack_convergence(_rec([_loop({"l1": series})]), loose)["converged"] is True


def test_held_out_is_judged_first_then_l1_then_loss():
    falling, flat = [1.0, 0.5, 0.25], [1.0, 0.5, 0.499]
    v = attack_convergence(_rec([_loop({"l1": falling}, held_out={"l1": flat})]))
    assert v["basis"] == "held-out l1" and v["converged"] is True
    v = attack_convergence(_rec([_loop({"g_gan": falling, "l1": flat, "d": falling})]))
    assert v["basis"] == "training l1" and v["converged"] is True  # GAN terms oscillate
    v = attack_convergence(_rec([_loop({"loss": falling})]))
    assert v["basis"] == "training loss" and v["converged"] is False


def test_any_unconverged_loop_marks_the_attack_and_short_loops_are_skipped():
    v = attack_convergence(_rec([_loop({"bce": [0.7]}, name="similarity"),
                                 _loop({"l1": [1.0, 0.5, 0.49]}, name="decoder"),
                                 _loop({"l1": [1.0, 0.5, 0.25]}, name="refiner")]))
    assert v["converged"] is False and v["loop"] == "refiner"
    assert attack_convergence(_rec([]))["converged"] is None  # an analytic attack trains nothing


# -- reports ---------------------------------------------------------------------------------------
def _add_curves(run_dir: Path, steep: set[str]) -> None:
    """Curves for every synthetic cell: the attacks on ``steep`` defenses still falling."""
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        n = 10
        decay = 0.7 if rec["defense"] in steep else 0.08
        l1 = [0.3 * math.exp(-e / (n * decay)) + 0.05 for e in range(n)]
        rec["curves"] = {
            "baseline": [_loop({"loss": [30 - 2 * e for e in range(n)]}, name="baseline recognizer")],
            "defense_fit": [],
            "defense_recognizer": [_loop({"loss": [28 - e for e in range(n)]}, name="recognizer")],
            "attack": [_loop({"g_gan": [1.0] * n, "l1": l1, "d": [0.6] * n}, name=rec["attack"])]}
        path.write_text(json.dumps(rec))


@pytest.fixture(scope="module")
def curved_run(tmp_path_factory):
    from bench.reporting.build import build_report

    run_dir = make_run(tmp_path_factory.mktemp("curves"), defenses=["none", "ppfr_fd", "mixup_fd"],
                       attacks=("cgan", "resrec"), seeds=(0, 1))
    _add_curves(run_dir, steep={"ppfr_fd"})
    return run_dir, build_report(run_dir)


def test_table2_and_the_convergence_table_mark_what_had_not_converged(curved_run):
    run_dir, written = curved_run
    t2 = pd.read_csv(written["table2"], dtype={"note": str}).fillna({"note": ""})
    flagged = t2[t2["note"].str.contains("not converged")]
    assert set(zip(flagged["Method"], flagged["Attack"])) == {("ppfr_fd", "cgan"), ("ppfr_fd", "resrec")}
    conv = pd.read_csv(written["convergence"])
    assert len(conv) == 12 and set(conv["judged_on"]) == {"training l1"}
    assert set(conv.loc[conv["verdict"] == "not converged", "Method"]) == {"ppfr_fd"}


def test_the_report_plots_the_curves(curved_run):
    run_dir, written = curved_run
    for name in ("fig_curves_recognizers", "fig_curves_cgan", "fig_curves_resrec"):
        assert written[name].stat().st_size > 5_000
    html = written["report_html"].read_text()
    assert html.count("<img") == sum(k.startswith("fig_") for k in written)
    assert "not converged" in html and "Training convergence" in html


def test_records_without_curves_give_no_curve_figure_or_table(tmp_path):
    from bench.reporting.build import build_report

    written = build_report(make_run(tmp_path, seeds=(0,)))
    assert not [k for k in written if "curves" in k or k == "convergence"]
    assert convergence_table([_rec([])]).empty


def test_the_curves_report_renders_in_headless_chromium(curved_run, tmp_path):
    from test_html_report import CHROMIUM, PROBE, dump_dom

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    _, written = curved_run
    page = tmp_path / "probe.html"
    page.write_text(written["report_html"].read_text().replace("</body>", PROBE + "</body>"))
    dom = dump_dom(CHROMIUM, page, tmp_path / "profile")
    n = sum(k.startswith("fig_") for k in written)
    assert f'data-decoded="{n}/{n}"' in dom and "not converged" in dom


# -- live TensorBoard -----------------------------------------------------------------------------
def test_tensorboard_missing_is_one_line_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    from bench.core.errors import ConfigError
    from bench.tensorboard import require_tensorboard

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'faceprivbench\[tensorboard\]'"):
        require_tensorboard()


def test_tensorboard_sink_writes_the_recorded_epochs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bench.tensorboard import TensorBoardSink

    with TensorBoardSink(tmp_path / "tb") as sink, recording_curves(sink) as log:
        _toy_training(epochs=3)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("toy/l1")]
    assert values == pytest.approx(log.curves[0]["losses"]["l1"])
    assert os.listdir(tmp_path / "tb")
