"""Backends (bench/backends.py): the same tiny matrix on loky, a real local Ray instance and a
real Dask LocalCluster gives the same cell records; a missing engine or a silent address is one
line and exit 2 before anything trains."""
from __future__ import annotations

import socket
import sys
import time

import pytest
from conftest import TINY_SETTINGS

from bench.backends import BackendSpec
from bench.config import resolve
from bench.matrix import run_matrix
from bench.reporting.cells import load_cells
from bench.store import ArtifactStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = [*TINY_SETTINGS, "attacks.resrec.epochs=1", "attacks.resrec.width=8", "device=cpu"]
DEFENSES, ATTACKS = ["none", "ppfr_fd"], ["resrec"]
# what must not depend on where a cell ran (provenance such as seconds and hosts may)
COMPARED = ("status", "accuracy", "baseline_accuracy", "privacy", "per_target", "record",
            "torch_threads", "stage_keys", "targets_digest", "n_test", "attack_info")


def run(results, backend: BackendSpec, jobs: int, lines: list[str] | None = None):
    """The tiny matrix into a fresh ``results`` folder: every stage computed on ``backend``,
    one torch thread per task whatever the backend."""
    out = lines if lines is not None else []
    run_dir = run_matrix(resolve("quick", SETTINGS), DEFENSES, ATTACKS, results, run_id="r",
                         jobs=jobs, progress=False, log=out.append, wave_log=out.append,
                         backend=backend, threads=1)
    records = sorted(load_cells(run_dir), key=lambda r: r["defense"])
    assert len(records) == len(DEFENSES) * len(ATTACKS)
    return records


def comparable(records):
    return [{k: r.get(k) for k in COMPARED} for r in records]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    lines: list[str] = []
    records = run(tmp_path_factory.mktemp("serial"), BackendSpec("loky"), 1, lines)
    assert any(ln.startswith("wave baselines: 1 task(s) on this process in ") for ln in lines), lines
    return records


def assert_same_cells(records, serial, lines, engine):
    assert comparable(records) == comparable(serial)
    host = socket.gethostname()
    for r in records:
        assert r["hosts"] == {"baseline": host, "defense_recognizer": host, "attack": host,
                              "measure": host}
    waves = [ln for ln in lines if ln.startswith("wave ")]
    assert [w.split(":")[0] for w in waves] == ["wave baselines", "wave defenses", "wave attacks"]
    assert all(f" on {engine}" in w and " s (hosts: " in w for w in waves), waves


def test_serial_records_name_their_hosts(serial):
    host = socket.gethostname()
    assert all(r["hosts"]["baseline"] == host and r["hosts"]["attack"] == host for r in serial)
    assert all(r["status"] == "ok" for r in serial)


@pytest.mark.slow
def test_ray_local_instance_gives_the_serial_records(tmp_path, serial):
    ray = pytest.importorskip("ray")
    lines: list[str] = []
    records = run(tmp_path, BackendSpec("ray"), 2, lines)
    assert not ray.is_initialized(), "the local Ray instance must stop with the run"
    assert_same_cells(records, serial, lines, "ray (local instance)")


@pytest.mark.slow
def test_dask_local_cluster_gives_the_serial_records(tmp_path, serial):
    pytest.importorskip("distributed")
    lines: list[str] = []
    records = run(tmp_path, BackendSpec("dask"), 2, lines)
    assert_same_cells(records, serial, lines, "dask LocalCluster")


# -- failing fast: one line, exit 2, nothing trained --------------------------------------------
def _main_without_training(monkeypatch, capsys, tmp_path, *args: str):
    import bench.cli
    import bench.matrix

    def no_training(*a, **k):
        raise AssertionError("the run started although its backend cannot run")

    monkeypatch.setattr(bench.matrix, "run_matrix", no_training)
    argv = ["run", "--results", str(tmp_path), "--no-progress", "--defenses", "none",
            "--attacks", "resrec", *[x for s in SETTINGS for x in ("--set", s)], *args]
    t0 = time.perf_counter()
    rc = bench.cli.main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "cache").exists()
    return lines[0], seconds


@pytest.mark.parametrize("backend, module, extra", [("ray", "ray", "ray"),
                                                    ("dask", "distributed", "dask")])
def test_a_backend_that_is_not_installed_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path,
                                                                 backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    line, _ = _main_without_training(monkeypatch, capsys, tmp_path, "--backend", backend)
    assert f"faceprivbench[{extra}]" in line and backend in line


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend, address", [
    ("ray", "127.0.0.1:{port}"), ("ray", "ray://127.0.0.1:{port}"), ("dask", "tcp://127.0.0.1:{port}")])
def test_an_address_that_does_not_answer_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path,
                                                                backend, address):
    pytest.importorskip({"ray": "ray", "dask": "distributed"}[backend])
    address = address.format(port=_closed_port())
    line, seconds = _main_without_training(monkeypatch, capsys, tmp_path, "--backend", backend,
                                           "--address", address, "--connect-timeout", "2")
    assert f"no {backend} cluster answers at {address}" in line
    assert seconds < 30


def test_a_silent_host_times_out_within_the_connect_timeout(monkeypatch, capsys, tmp_path):
    """A host that never answers (a connect that hangs until the timeout), simulated."""
    import bench.backends as backends

    def silent(target, timeout):
        time.sleep(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(backends.socket, "create_connection", silent)
    line, seconds = _main_without_training(monkeypatch, capsys, tmp_path, "--backend", "dask",
                                           "--address", "tcp://10.0.0.5:8786",
                                           "--connect-timeout", "0.5")
    assert "within 0.5 s (timed out)" in line and seconds < 20


def test_an_address_needs_a_cluster_backend(monkeypatch, capsys, tmp_path):
    line, _ = _main_without_training(monkeypatch, capsys, tmp_path, "--address", "10.0.0.5:6379")
    assert "--address needs --backend ray or --backend dask" in line


def test_a_finished_matrix_starts_no_engine(tmp_path, monkeypatch):
    """A cached re-run has no wave with work: no Ray instance or Dask cluster is started."""
    import bench.backends as backends

    run(tmp_path, BackendSpec("loky"), 1)
    monkeypatch.setattr(backends.Session, "open", lambda self: pytest.fail("an engine started"))
    stored = {p: p.stat().st_mtime_ns for p in ArtifactStore(tmp_path / "cache").root.rglob("*.safetensors")}
    run(tmp_path, BackendSpec("ray"), 2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")} == stored
