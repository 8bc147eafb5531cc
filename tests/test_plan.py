"""`python -m bench run … --dry-run` (bench/plan.py): what is stored, what each stage trains, and
the FLOPs it costs, without training or writing anything."""
import shutil
from pathlib import Path

import pytest
import torch
from conftest import context_with_random_baseline
from torch import nn

from bench.cli import main
from bench.config import DataConfig, RecognizerConfig, resolve
from bench.core.errors import TrainingError
from bench.core.registry import ATTACKS, DEFENSES
from bench.data.orl import load_orl
from bench.pipeline import Cell, Pipeline
from bench.plan import DEFAULT_TFLOPS, forward_flops, plan_matrix, sgd_samples
from bench.plugins import load_plugins
from bench.recognition import Recognizer
from bench.store import ArtifactStore

load_plugins()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def run_args(results: Path, settings: list[str], *extra: str) -> list[str]:
    args = ["run", "--results", str(results), "--no-progress"]
    for s in settings:
        args += ["--set", s]
    return args + list(extra)


def table_rows(out: str) -> dict[tuple[str, str, str, str], str]:
    """``(seed, defense, attack, stage) → stored`` from the printed plan (the first five
    columns never contain spaces)."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:5] == ["seed", "defense", "attack",
                                                                       "stage", "stored"])
    rows = {}
    for ln in lines[start + 1:]:
        if ln.startswith("work left"):
            break
        seed, defense, attack, stage, stored = ln.split()[:5]
        rows[(seed, defense, attack, stage)] = stored
    return rows


def expected_keys(seeds, defenses, attacks) -> set[tuple[str, str, str, str]]:
    keys = set()
    for s in seeds:
        keys.add((str(s), "*", "*", "baseline"))
        for d in defenses:
            keys.add((str(s), d, "*", "defense"))
            for a in attacks:
                keys |= {(str(s), d, a, "attack"), (str(s), d, a, "measure")}
    return keys


def test_dry_run_lists_every_stage_as_missing_and_writes_nothing(tmp_path, tiny_settings, capsys):
    args = run_args(tmp_path, tiny_settings, "--defenses", "none,ppfr_fd", "--attacks", "cgan,resrec",
                    "--seeds", "0,1", "--dry-run")
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == expected_keys([0, 1], ["none", "ppfr_fd"], ["cgan", "resrec"])
    assert set(rows.values()) == {"no"}
    assert "8 cells, 22 stages" in out and "stages: 0 stored, 22 to compute" in out
    assert f"at {DEFAULT_TFLOPS:g} TFLOP/s sustained" in out
    assert "work left: 0 " not in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no cache


def test_bad_input_still_fails_first_with_one_line(tmp_path, tiny_settings, capsys):
    assert main(run_args(tmp_path, tiny_settings, "--defenses", "ppfr_df", "--dry-run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "ppfr_fd" in err[0]
    assert main(run_args(tmp_path, tiny_settings, "--throughput-tflops", "0", "--dry-run")) == 2
    assert "--throughput-tflops" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_torch_thread):
    """A real tiny run of none,ppfr_fd × cgan (seed 0): every stage is in the store."""
    from conftest import TINY_SETTINGS

    results = tmp_path_factory.mktemp("finished")
    assert main(run_args(results, TINY_SETTINGS)) == 0
    return results


def test_after_a_run_every_stage_is_stored_and_no_work_is_left(finished, tiny_settings, capsys):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    capsys.readouterr()
    assert main(run_args(finished, tiny_settings, "--dry-run")) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == expected_keys([0], ["none", "ppfr_fd"], ["cgan"])
    assert set(rows.values()) == {"yes"}
    assert "work left: 0 FLOP = 0 h " in out and "stages: 7 stored, 0 to compute" in out
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before  # nothing touched


def test_a_missing_artifact_is_the_only_work_left(finished, tiny_settings, tmp_path):
    results = tmp_path / "copy"
    shutil.copytree(finished, results)
    cfg = resolve("quick", tiny_settings, {"data": {}})
    pipe = Pipeline(cfg, ArtifactStore(results / "cache"), progress=False)
    pipe.store.path("measure", pipe.measure_key(Cell(0, "ppfr_fd", "cgan"))).unlink()
    pipe.store.path("leak", pipe.leak_key(0, "none")).unlink()  # one of the chain's three parts

    rows = {(r.defense, r.attack, r.stage): r
            for r in plan_matrix(cfg, ["none", "ppfr_fd"], ["cgan"], results)}
    measure, chain = rows["ppfr_fd", "cgan", "measure"], rows["none", "*", "defense"]
    assert measure.stored == "no" and measure.flops_left == measure.flops > 0
    assert chain.stored == "partial" and 0 <= chain.flops_left < chain.flops
    changed = {("ppfr_fd", "cgan", "measure"), ("none", "*", "defense")}
    others = [r for k, r in rows.items() if k not in changed]
    assert all(r.stored == "yes" and r.flops_left == 0 for r in others)


def test_plan_params_are_those_of_the_models_the_stages_trained(finished, tiny_settings):
    cfg = resolve("quick", tiny_settings, {"data": {}})
    rows = {(r.defense, r.stage): r for r in plan_matrix(cfg, ["none", "ppfr_fd"], ["cgan"], finished)}
    pipe = Pipeline(cfg, ArtifactStore(finished / "cache"), progress=False)
    f1 = pipe.store.load("baseline", pipe.baseline_key(0))["model"]
    f2 = pipe.store.load("defense_recognizer", pipe.recognizer_key(0, "ppfr_fd"))["model"]
    assert rows["*", "baseline"].params == sum(p.numel() for p in f1.parameters())
    assert rows["ppfr_fd", "defense"].params == sum(p.numel() for p in f2.parameters())
    assert rows["none", "defense"].params == 0  # `none` reuses F1: it trains nothing


def test_forward_flops_of_known_layers():
    assert forward_flops(nn.Linear(10, 20), (10,)) == 2 * 10 * 20  # per sample, bias not counted
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert forward_flops(conv, (3, 16, 16)) == 2 * 3 * 8 * 9 * 16 * 16
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).train()
    assert forward_flops(net, (4,)) == 2 * 4 * 6 + 2 * 6 * 2  # one sample through BatchNorm too
    assert net.training and net[1].training  # modes restored


def test_recognizer_training_flops_are_three_forwards_per_image_and_epoch(tiny_settings):
    """Two more epochs add exactly 3 × one-sample forward × the images of two epochs."""
    cfg2 = resolve("quick", tiny_settings, {"data": {}})
    cfg4 = resolve("quick", tiny_settings + ["recognizer.epochs=4"], {"data": {}})
    data = Pipeline(cfg2, ArtifactStore("unused"), progress=False).data(0)
    base2, base4 = (plan_matrix(c, ["none"], ["cgan"], Path("unused"))[0] for c in (cfg2, cfg4))
    model = Recognizer(cfg2.recognizer, data.train.shape, data.train.num_identities)
    fwd = forward_flops(model, data.train.shape, lambda r: model.head.cosine(model(r)))
    images = sgd_samples(len(data.train), cfg2.recognizer.batch_size, 2)
    assert base4.flops - base2.flops == pytest.approx(3 * fwd * images)


TINY = RecognizerConfig(widths=(8, 8, 16, 16), embedding_dim=16, epochs=1, batch_size=16)
CHEAP = {"advface": {"shadow_epochs": 1, "shadow_width": 4, "iterations": 2},
         "adamixup": {"policy_widths": (4, 4, 8, 8)}, "duetface": {"client_width": 4},
         "minusface": {"generator_width": 4}}


@pytest.fixture(scope="module")
def faces():
    return load_orl(DataConfig(image_size=32, limit_identities=12, num_pairs=60), 0)


ONE_PER_CLASS = list({DEFENSES.get(n).factory: n for n in reversed(DEFENSES.names())}.values())


#: Defenses whose leak is the trained recognizer's own features (DP-SGD, ALGORITHMS §4.4): the
#: leak exists only after training.
LEAKS_AFTER_TRAINING = {"dpsgd"}


@pytest.mark.filterwarnings("ignore:duetface leak\\(\\) before train_recognizer")
@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_shapes_known_before_fit_match_the_fitted_defense(name, faces):
    """What the plan sizes models from equals what the fitted defense really produces."""
    defense = DEFENSES.create(name, **CHEAP.get(name.split(".")[0], {}))
    shape = tuple(faces.train.shape)
    rep, leak = defense.representation_shape(shape, TINY), defense.leak_shape(shape, TINY)
    ctx = context_with_random_baseline(faces, TINY)
    defense.fit(faces, ctx)
    if name in LEAKS_AFTER_TRAINING:
        with pytest.raises(TrainingError, match="must be trained"):
            defense.leak(faces, ctx)
        defense.train_recognizer(faces, ctx)
    with torch.no_grad():
        assert tuple(defense.test_encode(faces.test.images[:2], torch.Generator()).shape[1:]) == rep
        assert tuple(defense.leak(faces, ctx).inputs.shape[1:]) == leak


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_training_models_run_on_their_stated_inputs(name):
    attack = ATTACKS.create(name, epochs=3)
    assert attack.epochs == 3
    specs = attack.training_models((63, 8, 8), (1, 32, 32))
    assert specs and any(s.inference for s in specs.values())
    for spec in specs.values():
        assert forward_flops(spec.module, spec.input_shape) > 0 and spec.passes >= 3
