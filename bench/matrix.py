"""Expand a defense × attack × seed matrix and run it stage by stage (joblib across cells:
loky, Ray or Dask, :mod:`bench.backends`).

Stages run in three waves so that shared work is done once: the baseline recognizers (one per
seed and fold), then each defense's chain (fit → recognizer → leak), then each cell's attack and
measurement. Every identity fold and seed shares the same three waves (:func:`run_waves`): a
fold's single baseline no longer runs alone while the other workers idle, fold after fold. A wave
only schedules what the store lacks, so a finished matrix re-runs in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.backends import BackendSpec, Session
from bench.config import RunConfig
from bench.environment import usable_cpus
from bench.pipeline import Cell, Pipeline
from bench.store import ArtifactStore, atomic_write_bytes, atomic_write_text


def run_id_for(cfg: RunConfig, defenses: list[str], attacks: list[str]) -> str:
    """Deterministic run id: the same command and config land in the same run folder."""
    blob = json.dumps({"cfg": cfg.to_dict(), "defenses": defenses, "attacks": attacks},
                      sort_keys=True, default=str)
    return f"{cfg.data.name}-{cfg.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _worker_threads(jobs: int) -> int:
    return max(1, usable_cpus() // max(1, jobs))


def _run_stage(cfg: RunConfig, store_root: str, progress: bool, threads: int,
               stage: str, args: tuple, tensorboard: str | None = None) -> str:
    """One task of a wave, in whichever process or machine the backend picked: it gets a config
    and the store's path, computes (or loads) its stages and writes them to the store; nothing
    but the host's name comes back. ``tensorboard``: a folder for live training curves."""
    torch.set_num_threads(threads)
    pipe = Pipeline(cfg, ArtifactStore(store_root), progress=progress, tensorboard=tensorboard)
    if stage == "baseline":
        pipe.baseline(*args)
    elif stage == "defense":
        pipe.leak(*args)
    else:
        pipe.measure(args[0])
    return socket.gethostname()


class StageKeys(Protocol):
    """The keys :func:`wave_tasks` checks the store for (:class:`bench.pipeline.Pipeline`'s)."""

    def baseline_key(self, seed: int) -> str: ...
    def leak_key(self, seed: int, defense: str) -> str: ...
    def measure_key(self, cell: Cell) -> str: ...


@dataclass(frozen=True)
class FoldRun:
    """One identity fold of a run (the whole run without ``--folds``): its config, the pipeline
    that computes its keys, its cells, and those the store had not measured when the run began."""

    fold: int | None
    cfg: RunConfig
    pipe: StageKeys
    cells: list[Cell]
    todo: list[Cell]


Task = tuple[RunConfig, tuple]  # (the fold's config, the stage's arguments)
#: (label, stage) of each wave, in dependency order
WAVES = (("baselines", "baseline"), ("defenses", "defense"), ("attacks", "measure"))


def wave_tasks(stage: str, folds: Sequence[FoldRun], has: Callable[[str, str], bool]) -> list[Task]:
    """Every fold's and seed's tasks of one wave whose output the store (``has``) lacks, in one
    list: ``baseline`` one per (fold, seed), ``defense`` one chain per (fold, seed, defense),
    ``measure`` one per cell. Checked when the wave starts, so a stage that a concurrent run on
    the same results folder finished meanwhile is not computed again."""
    tasks: list[Task] = []
    for f in folds:
        if stage == "baseline":
            args: list[tuple] = sorted({(c.seed,) for c in f.todo
                                        if not has("baseline", f.pipe.baseline_key(c.seed))})
        elif stage == "defense":
            args = sorted({(c.seed, c.defense) for c in f.todo
                           if not has("leak", f.pipe.leak_key(c.seed, c.defense))})
        elif stage == "measure":
            args = [(c,) for c in f.todo]
        else:
            raise ValueError(f"unknown stage {stage!r}; one of {[s for _, s in WAVES]}")
        tasks += [(f.cfg, a) for a in args]
    return tasks


def run_waves(folds: Sequence[FoldRun], has: Callable[[str, str], bool],
              run_wave: Callable[[str, str, list[Task]], None]) -> None:
    """The schedule: three waves, each holding every fold's stages of its kind, so that with
    ``--folds 4 --jobs 2`` the four baselines run two by two instead of one at a time beside an
    idle worker (and likewise the defense chains and attacks). ``run_wave(label, stage, tasks)``
    runs one wave to its end (its stages stored) before the next is planned."""
    for label, stage in WAVES:
        run_wave(label, stage, wave_tasks(stage, folds, has))


def _wave(label: str, tasks: list[Task], store: ArtifactStore, session: Session,
          progress: bool, stage: str, log: Callable[[str], None] = print,
          tensorboard: str | None = None) -> None:
    """Run one wave's tasks on ``session``'s backend; log where it ran and its wall time."""
    if not tasks:
        return
    inner = progress and session.inline  # nested bars only make sense in one process
    root = str(store.root.resolve())  # workers may run elsewhere: an absolute (shared) path
    calls = [(cfg, root, inner, session.threads, stage, args, tensorboard) for cfg, args in tasks]
    t0 = time.perf_counter()
    with tqdm(total=len(calls), desc=label, disable=not progress) as bar:
        hosts = sorted(set(session.run(_run_stage, calls, lambda: bar.update(1))))
    log(f"wave {label}: {len(tasks)} task(s) on {session.where} in "
        f"{time.perf_counter() - t0:.1f} s (hosts: {', '.join(hosts)})")


def run_matrix(cfg: RunConfig, defenses: list[str], attacks: list[str], results_dir: Path,
               run_id: str | None = None, jobs: int = 1, progress: bool = True,
               log: Callable[[str], None] = print, backend: BackendSpec | None = None,
               threads: int | None = None, wave_log: Callable[[str], None] | None = None,
               tensorboard: Path | None = None) -> Path:
    """Run every cell, write ``results_dir/runs/<id>/{config.json,cells/*.json}``; return the folder.

    ``backend`` picks the engine that runs each wave (:mod:`bench.backends`; default: loky, in
    this process when ``jobs`` is 1); ``threads`` is each task's ``torch.set_num_threads``
    (default: this machine's cores / ``jobs``). ``wave_log`` gets one line per wave that ran:
    its engine, wall time and hosts (default: standard error, beside the progress bars, so
    standard output stays the run's results). ``tensorboard``: a folder where every stage that
    trains writes its training curves live (``--tensorboard``; the tensorboard extra)."""
    wave_log = wave_log or _stderr
    tb = None if tensorboard is None else str(Path(tensorboard).resolve())
    store = ArtifactStore(results_dir / "cache")
    Pipeline(cfg, store, progress=progress)  # plugins loaded, device resolved before any write
    run_id = run_id or run_id_for(cfg, defenses, attacks)
    run_dir = results_dir / "runs" / run_id
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"run_id": run_id, "defenses": defenses, "attacks": attacks, "config": cfg.to_dict()},
        indent=2, default=str))
    session = Session(backend or BackendSpec(), jobs,
                      threads if threads is not None else _worker_threads(jobs),
                      use_gpu=cfg.device != "cpu")
    folds: list[FoldRun] = []
    for fold, cfg_f in fold_configs(cfg):
        pipe = Pipeline(cfg_f, store, progress=progress)
        cells = [Cell(s, d, a, fold) for s in cfg.seeds for d in defenses for a in attacks]
        todo = [c for c in cells if not store.has("measure", pipe.measure_key(c))]
        where = "" if fold is None else f" fold {fold + 1}/{cfg.data.folds}"
        log(f"run {run_id}{where}: {len(cells)} cells, {len(cells) - len(todo)} already measured")
        folds.append(FoldRun(fold, cfg_f, pipe, cells, todo))

    with session:  # a local Ray instance / Dask cluster starts with the first wave that has work
        run_waves(folds, store.has, lambda label, stage, tasks: _wave(
            label, tasks, store, session, progress, stage, wave_log, tb))

    for f in folds:
        for cell in f.cells:
            record = f.pipe.cell_record(cell, run_id)
            write_cell(run_dir, cell, record, record.pop("samples", None))
    return run_dir


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fold_configs(cfg: RunConfig) -> list[tuple[int | None, RunConfig]]:
    """``(fold, config)`` per identity fold (ALGORITHMS §12); ``[(None, cfg)]`` without folds.
    Each fold's config differs only in ``data.fold``, so its stages get their own keys."""
    if cfg.data.folds <= 1:
        return [(None, cfg)]
    return [(f, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=f)))
            for f in range(cfg.data.folds)]


def write_cell(run_dir: Path, cell: Cell, record: dict[str, Any], samples: dict | None) -> None:
    """One JSON per cell, plus its sample images (uint8 arrays) for figures."""
    cells = run_dir / "cells"
    atomic_write_text(cells / f"{cell.id}.json", json.dumps(record, indent=2, default=_json_default))
    if samples:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: v.numpy() for k, v in samples.items() if v is not None})
        atomic_write_bytes(cells / f"{cell.id}.npz", buf.getvalue())


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Iterable):
        return list(obj)
    return str(obj)
