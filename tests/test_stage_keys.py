"""No stale stages: stage keys hash effective options (defaults included) and a fingerprint of the
code that computes each stage, so an edited default or plugin recomputes exactly what it changes."""
import dataclasses
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS

import bench.fingerprint as fingerprint
from attacks.cgan import CganAttack
from bench.config import resolve
from bench.core.registry import ATTACKS, DEFENSES
from bench.pipeline import Cell, Pipeline
from bench.plugins import load_plugins
from bench.store import ArtifactStore
from defenses.ppfr_fd import PpfrFd, PpfrOptions

load_plugins()


@pytest.fixture(autouse=True)
def isolated_registries_and_fingerprints():
    """Temporary plugins and edited modules leave no trace in the registries or the caches."""
    saved = {reg: dict(reg._entries) for reg in (DEFENSES, ATTACKS)}
    fingerprint.clear_cache()
    yield
    for reg, entries in saved.items():
        reg._entries.clear()
        reg._entries.update(entries)
    fingerprint.clear_cache()


def all_keys(pipe: Pipeline, defenses: list[str], attacks: list[str], seed: int = 0) -> dict:
    """Every stage key of a one-seed matrix, labelled by stage and what it belongs to."""
    keys = {("data",): pipe.data_key(seed), ("baseline",): pipe.baseline_key(seed)}
    for d in defenses:
        keys[("defense_fit", d)] = pipe.fit_key(seed, d)
        keys[("defense_recognizer", d)] = pipe.recognizer_key(seed, d)
        keys[("leak", d)] = pipe.leak_key(seed, d)
        for a in attacks:
            keys[("attack", d, a)] = pipe.attack_key(Cell(seed, d, a))
            keys[("measure", d, a)] = pipe.measure_key(Cell(seed, d, a))
    return keys


def changed(before: dict, after: dict) -> set:
    assert before.keys() == after.keys()
    return {label for label in before if before[label] != after[label]}


def defense_chain(d: str, attacks: list[str]) -> set:
    return ({("defense_fit", d), ("defense_recognizer", d), ("leak", d)}
            | {(stage, d, a) for stage in ("attack", "measure") for a in attacks})


def attack_cells(a: str, defenses: list[str]) -> set:
    return {(stage, d, a) for stage in ("attack", "measure") for d in defenses}


def pipeline(tmp_path: Path, *overrides: str) -> Pipeline:
    return Pipeline(resolve("quick", [*TINY_SETTINGS, *overrides]), ArtifactStore(tmp_path / "cache"),
                    progress=False)


# -- (1) an edited default -------------------------------------------------------------------------
@dataclass
class EditedPpfrOptions(PpfrOptions):  # module level: fitted defenses are pickled with their options
    perm_mode: str = "fixed_key"  # the default, edited (per_sample)


DEFENSES_ = ["none", "ppfr_fd", "masking_mixup.k2"]
ATTACKS_ = ["cgan", "resrec"]


def test_an_edited_defense_default_changes_exactly_that_defenses_stages(tmp_path, monkeypatch):
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, DEFENSES_, ATTACKS_)
    monkeypatch.setattr(PpfrFd, "Options", EditedPpfrOptions)
    after = all_keys(pipe, DEFENSES_, ATTACKS_)
    assert changed(before, after) == defense_chain("ppfr_fd", ATTACKS_)
    assert pipe.defense_options("ppfr_fd")["perm_mode"] == "fixed_key"


def test_an_edited_attack_default_changes_exactly_that_attacks_stages(tmp_path, monkeypatch):
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, DEFENSES_, ATTACKS_)

    @dataclass
    class Edited(CganAttack.Options):
        lambda_l1: float = 10.0  # the default, edited (100 before)

    monkeypatch.setattr(CganAttack, "Options", Edited)
    after = all_keys(pipe, DEFENSES_, ATTACKS_)
    assert changed(before, after) == attack_cells("cgan", DEFENSES_)
    assert pipe.attack_options("cgan")["lambda_l1"] == 10.0


def test_effective_options_fill_in_every_default(tmp_path):
    pipe = pipeline(tmp_path)
    fields = {f.name for f in dataclasses.fields(PpfrOptions)}
    assert pipe.defense_options("ppfr_fd").keys() == fields
    assert pipe.defense_options("masking_mixup.k2")["k"] == 2  # the variant's own option
    cgan = pipe.attack_options("cgan")
    assert cgan["epochs"] == 1 and cgan["lr"] == CganAttack.Options().lr  # override, default
    # stating a default explicitly is the same stage as leaving it out
    same = pipeline(tmp_path, "defenses.ppfr_fd.perm_mode=per_sample", f"attacks.cgan.lr={cgan['lr']}")
    assert all_keys(same, DEFENSES_, ATTACKS_) == all_keys(pipe, DEFENSES_, ATTACKS_)


# -- (2) an edited source file ------------------------------------------------------------------------
DEFENSE_SOURCE = '''
from dataclasses import dataclass

from bench.core.registry import DEFENSES
from defenses.base import Defense
from defenses.bdct import to_gray


@DEFENSES.register("tmp_defense")
class TmpDefense(Defense):


    @dataclass
    class Options:
        scale: float = 1.0

    def encode(self, x, gen):
        return to_gray(x) * self.options.scale
'''

ATTACK_SOURCE = '''
from attacks.base import Attack
from bench.core.contract import Reconstruction
from bench.core.registry import ATTACKS


@ATTACKS.register("tmp_attack")
class TmpAttack(Attack):


    def run(self, leak, ctx):
        return Reconstruction(leak.train_targets[:len(leak.inputs)])
'''


def _import(path: Path, monkeypatch) -> None:
    name = f"_faceprivbench_test_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)


@pytest.fixture
def tmp_plugins(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A tiny defense and a tiny attack, each in its own module file under ``tmp_path``."""
    files = tmp_path / "tmp_defense_mod.py", tmp_path / "tmp_attack_mod.py"
    for file, source in zip(files, (DEFENSE_SOURCE, ATTACK_SOURCE)):
        file.write_text(source)
        _import(file, monkeypatch)
    return files


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    fingerprint.clear_cache()


PLUGIN_DEFENSES = ["none", "ppfr_fd", "tmp_defense"]
PLUGIN_ATTACKS = ["cgan", "tmp_attack"]


def test_an_edited_defense_module_changes_exactly_that_defenses_stages(tmp_path, tmp_plugins):
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)
    assert all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS) == before  # stable while nothing changes
    _edit(tmp_plugins[0], "to_gray(x) * self.options.scale", "to_gray(x) * self.options.scale * 0.5")
    assert changed(before, all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)) == \
        defense_chain("tmp_defense", PLUGIN_ATTACKS)


def test_an_edited_attack_module_changes_exactly_that_attacks_stages(tmp_path, tmp_plugins):
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)
    _edit(tmp_plugins[1], "[:len(leak.inputs)]", "[-len(leak.inputs):]")
    assert changed(before, all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)) == \
        attack_cells("tmp_attack", PLUGIN_DEFENSES)


def _all_but_data(keys: dict) -> set:
    return set(keys) - {("data",)}


def _measures(keys: dict) -> set:
    return {label for label in keys if label[0] == "measure"}


# a project module, edited in a temporary copy → the stages whose code imports it (directly or not)
PROJECT_EDITS = {
    # ppfr_fd and tmp_defense import it; `none`, the harness and the attacks do not
    "defenses.bdct": lambda keys: (defense_chain("ppfr_fd", PLUGIN_ATTACKS)
                                   | defense_chain("tmp_defense", PLUGIN_ATTACKS)),
    "bench.core.training": lambda keys: attack_cells("cgan", PLUGIN_DEFENSES),  # not tmp_attack
    "attacks.cgan": lambda keys: attack_cells("cgan", PLUGIN_DEFENSES),  # only CGAN's cells
    "defenses.ppfr_fd": lambda keys: defense_chain("ppfr_fd", PLUGIN_ATTACKS),  # only its chain
    "bench.recognition": _all_but_data,  # the baseline's code: every stage downstream of it
    "bench.pipeline": _all_but_data,
    "bench.data.orl": lambda keys: set(keys),  # the dataset loader
    "metrics.image": _measures,  # measured, never trained with
}


@pytest.mark.parametrize("module", sorted(PROJECT_EDITS))
def test_an_edited_project_module_changes_exactly_the_stages_it_computes(tmp_path, tmp_plugins,
                                                                         monkeypatch, module):
    copy = tmp_path / "edited_copy.py"
    shutil.copy(fingerprint.module_file(module), copy)
    real = fingerprint.module_file
    monkeypatch.setattr(fingerprint, "module_file",
                        lambda name: copy if name == module else real(name))
    fingerprint.clear_cache()
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)
    _edit(copy, "from __future__ import annotations", "from __future__ import annotations  # edited")
    after = all_keys(pipe, PLUGIN_DEFENSES, PLUGIN_ATTACKS)
    assert changed(before, after) == PROJECT_EDITS[module](before)


ATTACK_MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "attacks").glob("*.py")
                        if p.stem != "__init__")
REAL_DEFENSES = ["none", "ppfr_fd", "masking_mixup.k2", "advface", "duetface", "xnn", "dpsgd"]


@pytest.mark.parametrize("module", ATTACK_MODULES)
def test_no_attack_edit_recomputes_a_defense_stage(tmp_path, monkeypatch, module):
    """The contract lives in bench/core: an edit anywhere in attacks/ (attacks.base included)
    retires attack and measure stages only, never a defense's fit, recognizer or leak."""
    copy = tmp_path / "edited_copy.py"
    shutil.copy(fingerprint.module_file(f"attacks.{module}"), copy)
    real = fingerprint.module_file
    monkeypatch.setattr(fingerprint, "module_file",
                        lambda name: copy if name == f"attacks.{module}" else real(name))
    fingerprint.clear_cache()
    pipe = pipeline(tmp_path)
    before = all_keys(pipe, REAL_DEFENSES, ["cgan"])
    _edit(copy, "from __future__ import annotations", "from __future__ import annotations  # edited")
    moved = changed(before, all_keys(pipe, REAL_DEFENSES, ["cgan"]))
    assert not {label for label in moved if label[0] in ("defense_fit", "defense_recognizer", "leak")}
    assert moved <= {label for label in before if label[0] in ("attack", "measure")}


def test_code_closures_follow_imports_but_not_the_plugin_lists():
    mixup = {name for name, _ in fingerprint.closure("defenses.mixup")}
    assert {"defenses.mixup", "defenses.ppfr_fd", "defenses.bdct", "defenses.base",
            "bench.recognition", "bench.backbones.irse"} <= mixup  # direct, transitive, lazy
    assert not {"defenses", "defenses.dp_peep", "attacks.cgan", "bench.core.registry", "bench.plugins"} & mixup
    for stage in fingerprint.HARNESS:
        files = [name for module, follow in fingerprint.HARNESS[stage]
                 for name, _ in fingerprint.closure(module, None, follow)]
        assert "bench.recognition" in files and "bench.pipeline" in files
        assert not [n for n in files if n.startswith("defenses")
                    or (n.startswith("attacks.") and n != "attacks.base")], files


# -- (3) a real run: nothing recomputed twice, only the dependent stages after an edit ---------------
pytestmark_run = pytest.mark.usefixtures("one_torch_thread")


def _stored(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}


@pytest.mark.slow
@pytestmark_run
def test_a_rerun_recomputes_nothing_and_an_edited_default_only_its_stages(tmp_path, monkeypatch):
    from bench.matrix import run_matrix

    cfg = resolve("quick", TINY_SETTINGS)
    defenses, attacks = ["none", "ppfr_fd"], ["cgan"]
    run = lambda: run_matrix(cfg, defenses, attacks, tmp_path, "r", progress=False,  # noqa: E731
                             log=lambda _: None)
    run_dir = run()
    cache = tmp_path / "cache"
    first = _stored(cache)
    assert {p.parent.name for p in first} == {"baseline", "defense_fit", "defense_recognizer", "leak",
                                              "attack", "measure"}
    record = json.loads((run_dir / "cells" / "ppfr_fd__cgan__s0.json").read_text())
    assert record["defense_options"] == dataclasses.asdict(PpfrOptions())
    assert record["attack_options"]["lambda_l1"] == 100.0 and record["attack_options"]["epochs"] == 1
    assert record["bn_recalibration"] is True

    run()
    assert _stored(cache) == first  # nothing recomputed, nothing rewritten

    @dataclass
    class Edited(CganAttack.Options):
        lambda_l1: float = 10.0

    monkeypatch.setattr(CganAttack, "Options", Edited)
    run()
    second = _stored(cache)
    assert {p: m for p, m in second.items() if p in first} == first  # old stages untouched
    new = sorted(p.parent.name for p in second.keys() - first.keys())
    assert new == ["attack", "attack", "measure", "measure"]  # one per cell, nothing upstream
    record = json.loads((run_dir / "cells" / "none__cgan__s0.json").read_text())
    assert record["attack_options"]["lambda_l1"] == 10.0

    monkeypatch.setattr(PpfrFd, "Options", EditedPpfrOptions)
    run()
    third = _stored(cache)
    assert {p: m for p, m in third.items() if p in second} == second
    new = sorted(p.parent.name for p in third.keys() - second.keys())
    assert new == ["attack", "defense_fit", "defense_recognizer", "leak", "measure"]  # ppfr_fd only
    record = json.loads((run_dir / "cells" / "ppfr_fd__cgan__s0.json").read_text())
    assert record["defense_options"]["perm_mode"] == "fixed_key"
