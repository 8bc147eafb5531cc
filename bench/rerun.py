"""The command that re-runs a run (``bench pack``'s manifest), and the one that would give it
enough replicates for a verdict (ALGORITHMS §12.1).

A verdict needs r ≥ 3 replicates (seeds × identity folds) per side; with fewer, ``bench claims``
says *inconclusive* and names the ``python -m bench run`` command that would decide it: the run's
own command (defenses, attacks, preset and every setting that differs from the preset, read from
its ``config.json``) with more seeds. Finished cells are in the store, so only the new seeds train.
Outside :mod:`bench.reporting` because it resolves the preset (reporting reads records only).
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from bench.config import resolve
from bench.core.errors import BenchError
from bench.reporting.stats import MIN_REPLICATES

#: config keys the command sets with their own flags (or that never change numbers)
OWN_FLAGS = ("preset", "seeds", "data.folds", "data.fold")
GENERIC = "python -m bench run <this run's arguments> --seeds {seeds}"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _literal(value: Any) -> str:
    """A value as ``--set`` parses it back (:func:`bench.config.parse_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return repr(value)


def more_seeds(seeds: list[int], folds: int, need: int = MIN_REPLICATES) -> list[int]:
    """``seeds`` extended with the smallest unused ones until seeds × folds ≥ ``need``."""
    out = list(seeds)
    want = math.ceil(need / max(1, folds))
    cand = 0
    while len(out) < want:
        if cand not in out:
            out.append(cand)
        cand += 1
    return out


def run_command(saved: dict[str, Any], results: Path | None = None, *,
                seeds: list[int] | None = None, run_id: bool = True) -> str:
    """The ``python -m bench run`` command that gives the run of a ``config.json`` (``saved``)
    again: its defenses, attacks, preset, seeds (or ``seeds``), folds and every setting that
    differs from the preset; ``--results`` unless it is ``results``; its ``--run-id`` (so the
    store's stages are found by the same keys) unless ``run_id`` is False."""
    config = saved.get("config") or {}
    folds = int((config.get("data") or {}).get("folds") or 1)
    preset = config.get("preset", "quick")
    args = ["python", "-m", "bench", "run", "--defenses", ",".join(saved.get("defenses", [])),
            "--attacks", ",".join(saved.get("attacks", []))]
    if preset != "quick":
        args += ["--preset", preset]
    seeds = seeds if seeds is not None else [int(s) for s in config.get("seeds") or [0]]
    args += ["--seeds", ",".join(map(str, seeds))]
    if folds > 1:
        args += ["--folds", str(folds)]
    try:
        base = _flatten(json.loads(json.dumps(resolve(preset).to_dict(), default=str)))
    except (BenchError, OSError, ValueError):
        base = {}
    for key, value in _flatten(config).items():
        if key in OWN_FLAGS or (key in base and base[key] == value):
            continue
        args += ["--set", f"{key}={_literal(value)}"]
    if results is not None and Path(results).resolve() != Path("results").resolve():
        args += ["--results", str(results)]
    if run_id and saved.get("run_id"):
        args += ["--run-id", str(saved["run_id"])]
    return shlex.join(args)


def deciding_command(run_dir: Path | None) -> str:
    """The run's ``python -m bench run`` command with enough seeds for r ≥ MIN_REPLICATES (a new
    run id: its own folder); a generic form when the run folder has no readable ``config.json``."""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text()) if run_dir else None
        config = saved["config"]
        saved["defenses"], saved["attacks"]  # noqa: B018 — both must be there
    except (OSError, ValueError, KeyError, TypeError):
        return GENERIC.format(seeds=",".join(map(str, more_seeds([0], 1))))
    folds = int((config.get("data") or {}).get("folds") or 1)
    seeds = more_seeds([int(s) for s in config.get("seeds") or [0]], folds)
    run = Path(run_dir).resolve()
    results = run.parent.parent if run.parent.name == "runs" else None
    return run_command(saved, results, seeds=seeds, run_id=False)
