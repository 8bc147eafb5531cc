"""`python -m bench leaderboard --add FILE`: a results bundle from elsewhere is verified, its
records checked against the schema, and its rows name the bundle; environments and settings are
never pooled (synthetic runs: no training)."""
import json
from pathlib import Path

import pandas as pd
import pytest
from synthetic_run import make_run
from test_compare import cli

from bench.bundle import pack
from bench.reporting.leaderboard import SUBMISSION

ENV_A = {"harness": "0.2.0", "torch": "2.14.1", "numpy": "2.0", "device_model": "cpu",
         "torch_threads": 2}
ENV_B = {**ENV_A, "torch": "2.9.0"}


def _with_env(run_dir: Path, env: dict, edit=None) -> Path:
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["environment"] = env
        if edit:
            edit(rec)
        path.write_text(json.dumps(rec))
    return run_dir


def _bundle(tmp_path: Path, env: dict, seeds=(0, 1), cells_only=True, edit=None, name="theirs") -> Path:
    run_dir = _with_env(make_run(tmp_path / "elsewhere", name, seeds=seeds), env, edit)
    bundle = tmp_path / f"{name}.tar"
    pack(run_dir, bundle, cells_only=cells_only)
    return bundle


def _rewritten(bundle: Path, member: str, edit) -> Path:
    """``bundle`` with one record edited and its manifest entry updated to match."""
    import hashlib
    import io
    import tarfile

    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(files.pop("manifest.json"))
    name = f"run/{manifest['run_id']}/{member}"
    rec = json.loads(files[name])
    edit(rec)
    files[name] = json.dumps(rec).encode()
    for e in manifest["files"]:
        if e["path"] == name:
            e["sha256"], e["size"] = hashlib.sha256(files[name]).hexdigest(), len(files[name])
    out = bundle.with_name("rewritten.tar")
    with tarfile.open(out, "w") as tar:
        for n, data in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture
def local(tmp_path) -> Path:
    results = tmp_path / "results"
    _with_env(make_run(results, "mine", seeds=(0, 1)), ENV_A)
    return results


def _board(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "leaderboard.csv")


def test_a_submission_from_another_environment_gets_rows_naming_its_bundle(tmp_path, local, capsys):
    bundle = _bundle(tmp_path, ENV_B)
    rc, out, err = cli(capsys, "leaderboard", "--results", str(local), "--add", str(bundle))
    assert rc == 0, err
    assert "merged" in out and (local / "runs" / "theirs" / SUBMISSION).is_file()
    rows = _board(local)
    rows = rows[rows["defense"] == "ppfr_fd"]
    assert len(rows) == 2 and rows["environment"].nunique() == 2  # never pooled
    assert sorted(rows["bundles"].str.split(" ").str[0]) == ["local", "theirs.tar"]
    assert all(";" not in b for b in rows["bundles"])


def test_the_same_environment_and_settings_pool_with_both_sources_named(tmp_path, local, capsys):
    bundle = _bundle(tmp_path, ENV_A, seeds=(2, 3))
    rc, _, err = cli(capsys, "leaderboard", "--results", str(local), "--add", str(bundle))
    assert rc == 0, err
    row = _board(local).query("defense == 'ppfr_fd'")
    assert len(row) == 1 and row["n_seeds"].iloc[0] == 4
    assert row["bundles"].iloc[0].startswith("local;theirs.tar (sha256 ")


@pytest.mark.parametrize("case, match", [
    ("schema", "fail the schema"),
    ("environment", "which environment"),
    ("full bundle", "results bundle"),
])
def test_a_bad_submission_is_refused_with_one_line_and_merges_nothing(tmp_path, local, capsys,
                                                                       case, match):
    if case == "schema":  # a submitter's own bundle, its manifest consistent with the bad record
        bundle = _rewritten(_bundle(tmp_path, ENV_B), "cells/ppfr_fd__cgan__s0.json",
                            lambda rec: rec.update(accuracy={"orl": 0.9}))
    elif case == "environment":
        bundle = _bundle(tmp_path, ENV_B, edit=lambda rec: rec.pop("environment"))
    else:  # a bundle with stages: unpack it, do not submit it
        run_dir = _with_env(make_run(tmp_path / "elsewhere", "theirs"), ENV_B)
        for path in (run_dir / "cells").glob("*.json"):  # records whose stages are all stored
            rec = json.loads(path.read_text())
            rec["stage_keys"] = {s: "0" * 20 for s in ("baseline", "defense_fit",
                                                         "defense_recognizer", "leak", "attack")}
            rec["stage_keys"]["measure"] = "1" * 20
            path.write_text(json.dumps(rec))
        from bench.store import ArtifactStore

        store = ArtifactStore(tmp_path / "elsewhere" / "cache")
        for stage in ("baseline", "defense_fit", "defense_recognizer", "leak", "attack"):
            store.save(stage, "0" * 20, {"x": 1})
        store.save("measure", "1" * 20, {"x": 1})
        bundle = tmp_path / "full.tar"
        pack(run_dir, bundle)
    rc, _, err = cli(capsys, "leaderboard", "--results", str(local), "--add", str(bundle))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and match in lines[0], err
    assert sorted(p.name for p in (local / "runs").iterdir()) == ["mine"]
    assert not (local / "cache").exists()
