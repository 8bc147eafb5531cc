"""Run bundles: one archive holding a run and every stage its cells used, safe to take from a
stranger (``python -m bench pack`` / ``unpack``).

A bundle is a tar file (gzip-compressed when its name ends in ``.gz`` or ``.tgz``) whose first
member is ``manifest.json``: the run id, the command that re-runs it, the environments its cells
ran in, the harness version, and one entry per member — path, sha256, size and, for stages, the
stage and key. Members are

- ``run/<run id>/…``: the run folder (config, cell records and samples, tables, figures, report);
- ``cache/<stage>/<key>.safetensors``: each stage its cells rest on, in the stage format of
  :mod:`bench.stageformat` (no pickle; a legacy ``.pt`` stage is converted while packing).

``--cells-only`` leaves the stages out (a results bundle, e.g. for a leaderboard).

Unpacking trusts nothing before checking it: the manifest's schema; every member a regular file,
named in the manifest exactly once, with a relative path of plain segments (no absolute path,
``..``, link, device), of the size the manifest gives and the hash it gives; every manifest entry
present; every stage a stage file naming only classes the safe loader admits (a pickle is not a
stage file); every JSON parseable, every sample archive free of pickled objects. Members are
extracted into a staging folder inside the results folder and moved into ``cache/`` and
``runs/`` only once all of them passed, so a refused bundle imports nothing.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from bench import __version__, stageformat
from bench.core.errors import BundleError
from bench.rerun import run_command
from bench.store import LEGACY_SUFFIX, STAGE_SUFFIX, ArtifactStore, atomic_write_bytes, safe_global

FORMAT = "faceprivbench.bundle"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
#: stage folders of the store, and the record's stage_keys entry each key is stored under
STAGES = ("baseline", "defense_fit", "defense_recognizer", "leak", "attack", "measure")
KEY_STAGE = {**{s: s for s in STAGES}, "attack_leak": "leak"}
#: what a run folder may hold in a bundle (anything else is neither packed nor accepted)
RUN_SUFFIXES = (".json", ".csv", ".html", ".png", ".npz", ".txt", ".md")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=@,-]*$")  # no leading dot, no separators
_KEY = re.compile(r"^[0-9a-f]{20}$")
_CHUNK = 1 << 20


# -- paths a bundle may hold --------------------------------------------------------------------
def _check_segments(path: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(not _SEGMENT.match(p) or p in (".", "..")
                                                   for p in parts):
        raise BundleError(f"bundle member {path!r} is not a plain relative path")
    return parts


def classify(path: str, run_id: str) -> tuple[str, str | None, str | None]:
    """``("run", None, None)`` or ``("stage", stage, key)`` for an acceptable member path; raise
    BundleError for anything else (absolute, ``..``, outside ``run/<run id>`` and ``cache/``,
    a stage file that is not ``<20 hex>.safetensors``, an unknown suffix)."""
    parts = _check_segments(path)
    if len(parts) >= 3 and parts[0] == "run" and parts[1] == run_id:
        if not path.endswith(RUN_SUFFIXES):
            raise BundleError(f"bundle member {path!r}: a run folder holds only "
                              f"{', '.join(RUN_SUFFIXES)} files")
        return "run", None, None
    if len(parts) == 3 and parts[0] == "cache" and parts[1] in STAGES:
        stem, _, suffix = parts[2].partition(".")
        if _KEY.match(stem) and "." + suffix == STAGE_SUFFIX:
            return "stage", parts[1], stem
        raise BundleError(f"bundle member {path!r}: stages must be <key>{STAGE_SUFFIX} files "
                          f"(no pickles)")
    raise BundleError(f"bundle member {path!r} lies outside run/{run_id}/ and cache/<stage>/")


# -- packing -------------------------------------------------------------------------------------
@dataclass
class PackResult:
    path: Path
    files: int
    size: int
    stages: int
    run_files: int
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _run_files(run_dir: Path) -> list[Path]:
    """The run folder's files a bundle carries: plain files of the known kinds, no hidden or
    temporary files, no links."""
    out = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_symlink() or not path.is_file() or not path.name.endswith(RUN_SUFFIXES) \
                or any(not _SEGMENT.match(p) for p in rel.parts):
            continue
        out.append(path)
    return out


def _cell_stage_keys(records: list[dict[str, Any]], saved: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (stage, key) the cells rest on, from their records (records written before every
    key was recorded get them from the run's config, checked against their measure key)."""
    out: set[tuple[str, str]] = set()
    pipes: dict[Any, Any] = {}
    for rec in records:
        keys = dict(rec.get("stage_keys") or {})
        if not set(STAGES) <= set(keys):
            keys = _recompute_keys(rec, saved, pipes)
        out.update((KEY_STAGE[name], key) for name, key in keys.items() if name in KEY_STAGE)
    return out


def _recompute_keys(rec: dict[str, Any], saved: dict[str, Any], pipes: dict[Any, Any]) -> dict[str, str]:
    """A record's stage keys from its run's config and this harness's code."""
    import dataclasses

    from bench.config import resolve
    from bench.pipeline import Cell, Pipeline

    fold = rec.get("fold")
    if fold not in pipes:
        cfg = resolve(saved["config"].get("preset", "quick"), extra=saved["config"])
        if fold is not None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=fold))
        pipes[fold] = Pipeline(cfg, ArtifactStore(os.devnull), progress=False)
    keys = pipes[fold].stage_keys(Cell(rec["seed"], rec["defense"], rec["attack"], fold))
    if keys["measure"] != (rec.get("stage_keys") or {}).get("measure"):
        raise BundleError(f"cell {rec['defense']} × {rec['attack']} was measured by other code "
                          f"than this harness's; re-run the run's command, then pack it")
    return keys


def pack(run_dir: Path, output: Path, cells_only: bool = False,
         store_root: Path | None = None) -> PackResult:
    """Write the bundle of ``run_dir`` to ``output`` (atomically); see the module docstring."""
    t0 = time.time()
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{run_dir} has no readable config.json ({exc}); is it a run folder?") \
            from None
    run_id = str(saved.get("run_id") or run_dir.name)
    if not _SEGMENT.match(run_id):
        raise BundleError(f"run id {run_id!r} is not a plain folder name")
    store = ArtifactStore(store_root or run_dir.resolve().parent.parent / "cache")
    entries: list[dict[str, Any]] = []
    sources: dict[str, Path | bytes] = {}
    for path in _run_files(run_dir):
        name = f"run/{run_id}/{path.relative_to(run_dir).as_posix()}"
        sources[name] = path
        entries.append({"path": name, "kind": "run"})
    missing: list[str] = []
    from bench.reporting.cells import load_cells_checked

    records, skipped = load_cells_checked(run_dir)
    if skipped:
        raise BundleError(f"{run_dir} has damaged cell records ({', '.join(skipped)}); re-run or "
                          f"remove them before packing")
    if not records:
        raise BundleError(f"{run_dir} has no cell records to pack")
    if not cells_only:
        for stage, key in sorted(_cell_stage_keys(records, saved)):
            src = _stage_source(store, stage, key)
            if src is None:
                if stage == "measure":
                    raise BundleError(f"the measure stage {key} of a cell is not in {store.root}; "
                                      f"pack from the results folder the run wrote "
                                      f"(--results), or re-run it")
                missing.append(f"{stage}/{key}")
                continue
            name = f"cache/{stage}/{key}{STAGE_SUFFIX}"
            sources[name] = src
            entries.append({"path": name, "kind": "stage", "stage": stage, "key": key})
        if missing:
            warnings.warn(f"{len(missing)} stage(s) the cells used are not stored (stages the "
                          f"format cannot hold are recomputed on every run): "
                          f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    for entry in entries:  # hashes first: the manifest is the bundle's first member
        src = sources[entry["path"]]
        entry["sha256"], entry["size"] = (
            (hashlib.sha256(src).hexdigest(), len(src)) if isinstance(src, bytes)
            else _sha256_file(src))
    envs = _environments(records)
    manifest = {"format": FORMAT, "version": VERSION, "harness_version": __version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "run_id": run_id, "cells_only": cells_only, "cells": len(records),
                "command": run_command(saved), "environments": envs,
                "missing_stages": missing, "files": entries}
    _write_tar(Path(output), manifest, sources)
    size = Path(output).stat().st_size
    return PackResult(Path(output), len(entries), size,
                      sum(e["kind"] == "stage" for e in entries),
                      sum(e["kind"] == "run" for e in entries), missing, time.time() - t0)


def _stage_source(store: ArtifactStore, stage: str, key: str) -> Path | bytes | None:
    """The stage file to pack, a legacy pickle converted to the stage format, or None."""
    path = store.stored_path(stage, key)
    if path is None:
        return None
    if path.suffix != LEGACY_SUFFIX:
        return path
    try:
        return stageformat.dumps(store.load(stage, key), safe_global)
    except Exception as exc:  # noqa: BLE001 - an unconvertible legacy stage is reported missing
        warnings.warn(f"legacy stage {stage}/{key} could not be converted ({exc})")
        return None


def _environments(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct environments the run's cells were computed in (from their records)."""
    from bench.environment import environment_key

    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        env = rec.get("environment") or {}
        seen.setdefault(environment_key(env), env)
    return [{"key": k, **v} for k, v in seen.items()]


def _write_tar(output: Path, manifest: dict[str, Any], sources: dict[str, Path | bytes]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if output.name.endswith((".gz", ".tgz")) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, io.BytesIO(json.dumps(manifest, indent=1).encode()))
            for entry in manifest["files"]:
                src = sources[entry["path"]]
                fh: BinaryIO = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")
                with fh:
                    digest = _add(tar, entry["path"], fh, entry["size"])
                if digest != entry["sha256"]:
                    raise BundleError(f"{entry['path']} changed while being packed (a run writing "
                                      f"to the same results folder?); pack again")
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Hashing(io.RawIOBase):
    """A reader that hashes what tarfile copies from it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.h = fh, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.h.update(data)
        return data


def _add(tar: tarfile.TarFile, name: str, fh: BinaryIO, size: int | None = None) -> str:
    info = tarfile.TarInfo(name)
    if size is None:
        size = len(fh.getbuffer())  # type: ignore[attr-defined]
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    reader = _Hashing(fh)
    tar.addfile(info, reader)
    return reader.h.hexdigest()


# -- unpacking -----------------------------------------------------------------------------------
@dataclass
class UnpackResult:
    run_dir: Path
    run_id: str
    files: int
    size: int
    stages_imported: int
    stages_present: int
    command: str
    cells_only: bool
    manifest: dict[str, Any]


def read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    """The first member, checked against the manifest schema."""
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() \
            or first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"not a faceprivbench bundle: its first member must be {MANIFEST}")
    try:
        manifest = json.loads(tar.extractfile(first).read())  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"not a faceprivbench bundle (manifest format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else '?'!r})")
    if manifest.get("version") != VERSION:
        raise BundleError(f"bundle format version {manifest.get('version')!r}; this harness reads "
                          f"version {VERSION}")
    run_id = manifest.get("run_id")
    files = manifest.get("files")
    if not isinstance(run_id, str) or not _SEGMENT.match(run_id) or not isinstance(files, list):
        raise BundleError(f"malformed {MANIFEST} (run_id, files)")
    seen: set[str] = set()
    for e in files:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str)
                and isinstance(e.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", e["sha256"])
                and type(e.get("size")) is int and e["size"] >= 0) or e["path"] in seen:
            raise BundleError(f"malformed {MANIFEST} entry {str(e)[:120]}")
        seen.add(e["path"])
        kind, stage, key = classify(e["path"], run_id)
        if kind != e.get("kind") or (kind == "stage" and (stage, key) != (e.get("stage"), e.get("key"))):
            raise BundleError(f"{MANIFEST} entry {e['path']!r} does not match its path")
    return manifest


def _check_content(path: Path, kind: str, name: str) -> None:
    """What a staged member must be beyond its hash: a stage file whose classes the safe loader
    admits; JSON that parses; a sample archive without pickled objects; a PNG."""
    try:
        if kind == "stage":
            _, meta = stageformat.file_header(path)
            refused = sorted(c for c in stageformat.referenced_classes(meta)
                             if safe_global(c) is None)
            if refused:
                raise BundleError(f"bundle member {name} names classes the safe loader refuses: "
                                  f"{', '.join(refused[:5])}")
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".npz"):
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        elif name.endswith(".png"):
            with open(path, "rb") as fh:
                if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                    raise ValueError("not a PNG")
        else:
            path.read_text(encoding="utf-8")
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable member refuses the bundle
        raise BundleError(f"bundle member {name} is not a valid "
                          f"{'stage file' if kind == 'stage' else Path(name).suffix + ' file'}: "
                          f"{str(exc)[:160]}") from None


def unpack(bundle: Path, results: Path,
           check: Callable[[Path, dict[str, Any]], None] | None = None) -> UnpackResult:
    """Verify ``bundle`` entirely, then import its stages into ``results/cache`` and its run
    into ``results/runs``; raise BundleError (nothing imported) on any mismatch. ``check(run
    folder, manifest)``: a further test of the verified, not yet imported run (the leaderboard's
    record schema), raising BundleError to refuse it."""
    bundle, results = Path(bundle), Path(results)
    if not bundle.is_file():
        raise BundleError(f"bundle {bundle} does not exist")
    results.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=results))
    try:
        try:
            tar = tarfile.open(bundle, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"{bundle} is not a tar archive: {exc}") from None
        with tar:
            manifest = read_manifest(tar)
            expected = {e["path"]: e for e in manifest["files"]}
            done: set[str] = set()
            while (member := tar.next()) is not None:
                _stage_member(tar, member, expected, done, staging)
        absent = sorted(set(expected) - done)
        if absent:
            raise BundleError(f"bundle lacks {len(absent)} member(s) its manifest lists, e.g. "
                              f"{absent[0]}")
        for name, e in expected.items():
            _check_content(staging / name, e["kind"], name)
        if check is not None:
            check(staging / "run" / manifest["run_id"], manifest)
        return _import(staging, manifest, results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_member(tar: tarfile.TarFile, member: tarfile.TarInfo, expected: dict[str, Any],
                  done: set[str], staging: Path) -> None:
    """Check one member against the manifest and copy it into the staging folder."""
    name = member.name
    _check_segments(name)
    if not member.isfile():
        raise BundleError(f"bundle member {name!r} is a link or special file; refused")
    if name not in expected:
        raise BundleError(f"bundle member {name!r} is not in the manifest; refused")
    if name in done:
        raise BundleError(f"bundle member {name!r} appears twice; refused")
    entry = expected[name]
    if member.size > entry["size"]:
        raise BundleError(f"bundle member {name} is larger than its manifest says "
                          f"({member.size} > {entry['size']} bytes); refused")
    target = staging / name
    target.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    src = tar.extractfile(member)
    with src as fh, open(target, "wb") as out:  # type: ignore[union-attr]
        while chunk := fh.read(min(_CHUNK, entry["size"] + 1 - n)):
            n += len(chunk)
            if n > entry["size"]:
                raise BundleError(f"bundle member {name} is larger than its manifest says; refused")
            h.update(chunk)
            out.write(chunk)
    if n != entry["size"] or h.hexdigest() != entry["sha256"]:
        raise BundleError(f"bundle member {name} does not match its manifest hash (tampered or "
                          f"damaged); nothing was imported")
    done.add(name)


def _import(staging: Path, manifest: dict[str, Any], results: Path) -> UnpackResult:
    """Move the verified members into place: stages the store already has are kept (same key,
    same inputs); a run folder that exists with other contents is refused before anything moves."""
    run_id = manifest["run_id"]
    run_dir = results / "runs" / run_id
    moves: list[tuple[Path, Path]] = []
    imported = present = 0
    for e in manifest["files"]:
        src = staging / e["path"]
        if e["kind"] == "stage":
            dest = results / "cache" / e["stage"] / f"{e['key']}{STAGE_SUFFIX}"
            if dest.is_file():
                present += 1
                continue
            imported += 1
        else:
            dest = run_dir / Path(*e["path"].split("/")[2:])
            if dest.is_file() and _sha256_file(dest)[0] != e["sha256"]:
                raise BundleError(f"{run_dir} exists with other contents ({dest.name} differs); "
                                  f"unpack into another --results folder")
        moves.append((src, dest))
    for src, dest in sorted(moves, key=lambda m: m[1].name == "config.json"):  # config last
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    size = sum(e["size"] for e in manifest["files"])
    return UnpackResult(run_dir, run_id, len(manifest["files"]), size, imported, present,
                        run_command(json.loads((run_dir / "config.json").read_text()), results)
                        if (run_dir / "config.json").is_file() else str(manifest.get("command")),
                        bool(manifest.get("cells_only")), manifest)



# -- leaderboard submissions ---------------------------------------------------------------------


def _check_submission(run_dir: Path, manifest: dict[str, Any]) -> None:
    """A leaderboard submission: a results-only bundle whose every record has the shape the
    tables rely on, names the bundle's run and says which environment computed it."""
    from bench.reporting.cells import load_cells_checked

    if not manifest.get("cells_only"):
        raise BundleError("a leaderboard submission is a results bundle: pack it with "
                          "`python -m bench pack RUN -o FILE --cells-only` (or unpack a full "
                          "bundle with `python -m bench unpack`)")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise BundleError("the submission has no readable config.json: its settings are unknown") \
            from None
    if not isinstance(saved.get("config"), dict):
        raise BundleError("the submission's config.json has no resolved config: its settings "
                          "are unknown")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged records are named below, as a refusal
        records, skipped = load_cells_checked(run_dir)
    if skipped:
        raise BundleError(f"the submission has records that fail the schema: "
                          f"{', '.join(skipped[:5])}")
    if not records:
        raise BundleError("the submission has no cell records")
    for rec in records:
        if rec.get("run_id") not in (None, manifest["run_id"]):
            raise BundleError(f"record {rec['_file']} belongs to run {rec.get('run_id')!r}, not "
                              f"the bundle's {manifest['run_id']!r}")
        if not isinstance(rec.get("environment"), dict) or not rec.get("harness_version"):
            raise BundleError(f"record {rec['_file']} does not say which environment and harness "
                              f"version computed it; the leaderboard never pools unknown settings")


def submit(bundle: Path, results: Path) -> UnpackResult:
    """Merge a results bundle from elsewhere into ``results/runs`` for the leaderboard: verified
    like :func:`unpack`, its records checked against the schema, and its origin recorded in the
    run folder (``submission.json``: the bundle's name and sha256) so that every leaderboard row
    says which bundle it came from."""
    res = unpack(bundle, results, check=_check_submission)
    origin = {"bundle": Path(bundle).name, "sha256": _sha256_file(Path(bundle))[0],
              "created": res.manifest.get("created"),
              "harness_version": res.manifest.get("harness_version"),
              "imported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    from bench.reporting.leaderboard import SUBMISSION

    atomic_write_bytes(res.run_dir / SUBMISSION, json.dumps(origin, indent=1).encode())
    return res
