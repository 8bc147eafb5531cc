"""Two `bench run`s of the same command at once on one results folder (two workers computing the
same stages): both finish, every stored stage is whole and loads safely, and the cell records
are a serial run's (bench/store.py: atomic renames; bench/stageformat.py: safe loading)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS
from test_cli import bench_here

from bench.plugins import load_plugins
from bench.reporting.cells import load_cells
from bench.store import load_stage_bytes

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [*TINY_SETTINGS, "attacks.resrec.epochs=1", "attacks.resrec.width=8"]
COMPARED = ("status", "accuracy", "baseline_accuracy", "privacy", "per_target", "record",
            "torch_threads", "stage_keys", "targets_digest", "n_test")


def command(results: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bench", "run", "--results", str(results), "--no-progress",
           "--defenses", "none,ppfr_fd", "--attacks", "resrec", "--threads", "1"]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd


def records(results: Path) -> list[dict]:
    (run_dir,) = (results / "runs").iterdir()
    out = sorted(load_cells(run_dir), key=lambda r: r["defense"])
    assert len(out) == 2
    return [{k: r.get(k) for k in COMPARED} for r in out]


@pytest.mark.slow
def test_two_runs_of_one_command_at_once_share_a_results_folder(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    shared, serial = tmp_path / "shared", tmp_path / "serial"
    procs = [subprocess.Popen(command(shared), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    done = bench_here(*command(serial)[3:])  # the serial reference, in this process
    assert done.returncode == 0, done.stderr[-3000:]

    load_plugins()
    stages = sorted((shared / "cache").rglob("*.safetensors"))
    assert {p.parent.name for p in stages} == {
        "baseline", "defense_fit", "defense_recognizer", "leak", "attack", "measure"}
    for path in stages:
        load_stage_bytes(path.read_bytes())  # whole, and loadable without running code
    assert not [p for p in (shared / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.relative_to(shared) for p in stages) == \
        sorted(p.relative_to(serial) for p in (serial / "cache").rglob("*.safetensors"))
    assert records(shared) == records(serial)
