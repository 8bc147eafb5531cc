"""`python -m bench pack` / `unpack`: a run and its stages travel as one verified archive; a
re-run from the bundle trains nothing and measures the same; a tampered or unsafe bundle imports
nothing."""
import io
import json
import shlex
import tarfile
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error, bench_here

from bench import stageformat
from bench.bundle import FORMAT, MANIFEST, VERSION, unpack
from bench.core.errors import BundleError
from bench.store import ArtifactStore, safe_global

RUN = ("run", "--defenses", "none,ppfr_fd", "--attacks", "cgan")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A tiny run whose baseline stage is a legacy pickle (an older store), packed."""
    root = tmp_path_factory.mktemp("bundle")
    first = bench_here(*RUN, results=root / "a")
    assert first.returncode == 0, first.stderr
    run_dir = next((root / "a" / "runs").iterdir())
    store = ArtifactStore(root / "a" / "cache")
    key = next((root / "a" / "cache" / "baseline").iterdir()).stem
    torch.save(store.load("baseline", key), store.legacy_path("baseline", key))
    store.path("baseline", key).unlink()
    bundle = root / "run.tar"
    proc = bench_here("pack", str(run_dir), "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    return root, run_dir, bundle, proc.stdout


def _metrics(run_dir: Path) -> dict:
    return {p.name: {k: json.loads(p.read_text())[k] for k in ("privacy", "accuracy", "curves")}
            for p in sorted((run_dir / "cells").glob("*.json"))}


def _members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_manifest_lists_every_stage_and_hash(packed):
    root, run_dir, bundle, out = packed
    assert f"wrote {bundle}" in out and "11 stage(s)" in out  # 1 baseline + 2 × 5 defense stages
    with tarfile.open(bundle) as tar:
        assert tar.getmembers()[0].name == MANIFEST
        manifest = json.loads(tar.extractfile(MANIFEST).read())
    names = set(_members(bundle)) - {MANIFEST}
    assert names == {e["path"] for e in manifest["files"]}
    assert not [n for n in names if not n.endswith(".safetensors") and n.startswith("cache/")]
    assert {e["stage"] for e in manifest["files"] if e["kind"] == "stage"} == {
        "baseline", "defense_fit", "defense_recognizer", "leak", "attack", "measure"}
    assert f"run/{run_dir.name}/config.json" in names and f"run/{run_dir.name}/table2.csv" in names
    assert manifest["harness_version"] and manifest["environments"][0]["torch"]
    assert "--run-id" in manifest["command"]


def test_unpack_and_rerun_trains_nothing_and_measures_the_same(packed):
    root, run_dir, bundle, _ = packed
    proc = bench_here("unpack", str(bundle), "--results", str(root / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "imported 11 stage(s)" in proc.stdout
    command = next(line.split(": ", 1)[1] for line in proc.stdout.splitlines()
                   if line.startswith("re-run it"))
    cache = root / "b" / "cache"
    stages = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "bench"]
    rerun = bench_here(*args[3:], "--no-progress")  # the printed command, as `main` runs it
    assert rerun.returncode == 0, rerun.stderr
    assert "2 cells, 2 already measured" in rerun.stdout
    assert "wave " not in rerun.stderr  # no wave had work: zero stages trained
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == stages
    again = root / "b" / "runs" / run_dir.name
    assert _metrics(again) == _metrics(run_dir)
    assert (again / "table2.csv").read_text() == (run_dir / "table2.csv").read_text()


def test_a_tampered_member_is_refused_and_nothing_is_imported(packed, tmp_path):
    _, run_dir, bundle, _ = packed
    data = bytearray(bundle.read_bytes())
    member = _members(bundle)[f"run/{run_dir.name}/cells/ppfr_fd__cgan__s0.json"]
    data[member.offset_data + 10] ^= 0x01  # one bit of one record
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(data))
    proc = bench_here("unpack", str(tampered), "--results", str(tmp_path / "results"))
    assert_one_line_error(proc, "does not match its manifest hash")
    assert list((tmp_path / "results").iterdir()) == []  # no stage, no run, no staging left


def test_a_cells_only_bundle_carries_no_stage_and_reproduces_the_tables(packed, tmp_path):
    root, run_dir, _, _ = packed
    bundle = tmp_path / "cells.tar.gz"
    assert bench_here("pack", str(run_dir), "-o", str(bundle), "--cells-only").returncode == 0
    assert not [n for n in _members(bundle) if n.startswith("cache/")]
    res = unpack(bundle, tmp_path / "r")
    assert res.cells_only and not (tmp_path / "r" / "cache").exists()
    report = bench_here("report", str(res.run_dir))
    assert report.returncode == 0, report.stderr
    assert (res.run_dir / "table2.csv").read_text() == (run_dir / "table2.csv").read_text()


# -- forged bundles (no training) ----------------------------------------------------------------
KEY = "0123456789abcdef0123"


def _tar(path: Path, files: dict[str, bytes], run_id: str = "r", extra: list = (),
         manifest_sizes: dict[str, int] | None = None) -> Path:
    """A bundle whose manifest matches ``files`` (unless ``manifest_sizes`` says otherwise), with
    ``extra`` members ``(TarInfo, bytes)`` added after them."""
    import hashlib

    entries = []
    for name, data in files.items():
        parts = name.split("/")
        e = {"path": name, "sha256": hashlib.sha256(data).hexdigest(),
             "size": (manifest_sizes or {}).get(name, len(data))}
        if parts[0] == "cache":
            e.update(kind="stage", stage=parts[1], key=parts[2].split(".")[0])
        else:
            e["kind"] = "run"
        entries.append(e)
    manifest = {"format": FORMAT, "version": VERSION, "run_id": run_id, "files": entries}
    with tarfile.open(path, "w") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _stage_bytes(obj) -> bytes:
    return stageformat.dumps(obj, safe_global)


def _pickle_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    return buf.getvalue()


def _forged_stage() -> bytes:
    from safetensors.torch import save

    meta = {"format": stageformat.FORMAT, "version": str(stageformat.VERSION),
            "structure": json.dumps({"__obj__": "posix.system", "id": 0, "args": ["true"]})}
    return save({"t": torch.zeros(1)}, metadata=meta)


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


CONFIG = {"run/r/config.json": b'{"run_id": "r"}'}
FORGED = {
    "a pickle named as a stage": ({**CONFIG, f"cache/baseline/{KEY}.safetensors": _pickle_bytes()},
                                  [], None, "not a valid stage file"),
    "a .pt stage": ({**CONFIG, f"cache/baseline/{KEY}.pt": _pickle_bytes()}, [], None,
                    "no pickles"),
    "a stage naming os.system": ({**CONFIG, f"cache/leak/{KEY}.safetensors": _forged_stage()},
                                 [], None, "refuses"),
    "a path with ..": ({**CONFIG, "run/r/../../../evil.json": b"{}"}, [], None,
                       "plain relative path"),
    "an absolute path": ({**CONFIG, "/tmp/evil.json": b"{}"}, [], None, "plain relative path"),
    "a path outside run/ and cache/": ({**CONFIG, "evil/x.json": b"{}"}, [], None, "outside"),
    "a symlink": (CONFIG, [_link("run/r/cells/x.json", "/etc/passwd")], None, "link"),
    "a member not in the manifest": (CONFIG, [(tarfile.TarInfo("run/r/extra.json"), b"")], None,
                                     "not in the manifest"),
    "a member over its manifest size": ({**CONFIG, "run/r/big.json": b'{"a": 1}'}, [],
                                        {"run/r/big.json": 3}, "larger than its manifest"),
    "a broken record": ({**CONFIG, "run/r/cells/c.json": b"{ half"}, [], None,
                        "not a valid .json file"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_an_unsafe_bundle_is_refused_and_imports_nothing(tmp_path, case):
    files, extra, sizes, match = FORGED[case]
    bundle = _tar(tmp_path / "b.tar", files, extra=extra, manifest_sizes=sizes)
    results = tmp_path / "results"
    with pytest.raises(BundleError, match=match):
        unpack(bundle, results)
    assert list(results.iterdir()) == []
    assert not (tmp_path / "evil.json").exists() and not Path("/tmp/evil.json").exists()


def test_a_well_formed_forged_bundle_is_accepted(tmp_path):
    """The refusals above are about what each case changed: the same bundle without the change
    imports (a stage file and a run folder)."""
    files = {**CONFIG, f"cache/attack/{KEY}.safetensors": _stage_bytes({"w": torch.ones(3)}),
             "run/r/cells/c.json": b"{}"}
    res = unpack(_tar(tmp_path / "ok.tar", files), tmp_path / "results")
    assert res.stages_imported == 1 and (tmp_path / "results/runs/r/cells/c.json").is_file()
    stored = ArtifactStore(tmp_path / "results" / "cache").load("attack", KEY)
    assert torch.equal(stored["w"], torch.ones(3))
