"""Expand a defense × attack × seed matrix and run it stage by stage (joblib across cells).

Stages run in three waves so that shared work is done once: the baseline recognizers (one per
seed), then each defense's chain (fit → recognizer → leak), then each cell's attack and
measurement. A wave only schedules what the store lacks, so a finished matrix re-runs in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from bench.config import RunConfig
from bench.pipeline import Cell, Pipeline
from bench.store import ArtifactStore, atomic_write_bytes, atomic_write_text


def run_id_for(cfg: RunConfig, defenses: list[str], attacks: list[str]) -> str:
    """Deterministic run id: the same command and config land in the same run folder."""
    blob = json.dumps({"cfg": cfg.to_dict(), "defenses": defenses, "attacks": attacks},
                      sort_keys=True, default=str)
    return f"{cfg.data.name}-{cfg.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _worker_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _run_stage(cfg: RunConfig, store_root: str, progress: bool, jobs: int,
               stage: str, args: tuple) -> None:
    torch.set_num_threads(_worker_threads(jobs))
    pipe = Pipeline(cfg, ArtifactStore(store_root), progress=progress)
    if stage == "baseline":
        pipe.baseline(*args)
    elif stage == "defense":
        pipe.leak(*args)
    else:
        pipe.measure(args[0])


def _wave(label: str, tasks: list[tuple], cfg: RunConfig, store: ArtifactStore, jobs: int,
          progress: bool, stage: str) -> None:
    if not tasks:
        return
    inner = progress and jobs == 1  # nested bars only make sense in one process
    run = delayed(_run_stage)
    if jobs == 1:
        for args in tqdm(tasks, desc=label, disable=not progress):
            _run_stage(cfg, str(store.root), inner, jobs, stage, args)
        return
    calls = [run(cfg, str(store.root), inner, jobs, stage, args) for args in tasks]
    for _ in tqdm(Parallel(n_jobs=jobs, return_as="generator_unordered")(calls),
                  total=len(calls), desc=label, disable=not progress):
        pass


def run_matrix(cfg: RunConfig, defenses: list[str], attacks: list[str], results_dir: Path,
               run_id: str | None = None, jobs: int = 1, progress: bool = True,
               log: Callable[[str], None] = print) -> Path:
    """Run every cell, write ``results_dir/runs/<id>/{config.json,cells/*.json}``; return the folder."""
    store = ArtifactStore(results_dir / "cache")
    pipe = Pipeline(cfg, store, progress=progress)
    run_id = run_id or run_id_for(cfg, defenses, attacks)
    run_dir = results_dir / "runs" / run_id
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"run_id": run_id, "defenses": defenses, "attacks": attacks, "config": cfg.to_dict()},
        indent=2, default=str))
    cells = [Cell(s, d, a) for s in cfg.seeds for d in defenses for a in attacks]
    todo = [c for c in cells if not store.has("measure", pipe.measure_key(c))]
    log(f"run {run_id}: {len(cells)} cells, {len(cells) - len(todo)} already measured")

    seeds = sorted({c.seed for c in todo if not store.has("baseline", pipe.baseline_key(c.seed))})
    _wave("baselines", [(s,) for s in seeds], cfg, store, jobs, progress, "baseline")
    chains = sorted({(c.seed, c.defense) for c in todo
                     if not store.has("leak", pipe.leak_key(c.seed, c.defense))})
    _wave("defenses", chains, cfg, store, jobs, progress, "defense")
    _wave("attacks", [(c,) for c in todo], cfg, store, jobs, progress, "measure")

    for cell in cells:
        record = pipe.cell_record(cell, run_id)
        write_cell(run_dir, cell, record, record.pop("samples", None))
    return run_dir


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
