"""Synthetic cell records that carry per-item vectors (per verification pair, per reconstruction
target) as ``bench run`` writes them, for the statistics, compare and claims tests."""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tests.synthetic_run import cell_record


def item_record(defense: str, attack: str, seed: int, *, acc: float, ssim: float,
                run_id: str = "synth", fold: int | None = None, n_pairs: int = 300,
                n_targets: int = 100, items_seed: int | None = None, pairs: str = "P",
                targets: str = "T", **kw: Any) -> dict[str, Any]:
    """A cell whose accuracy is the mean of ``n_pairs`` Bernoulli(acc) outcomes and whose SSIM
    the mean of ``n_targets`` draws around ``ssim``; ``items_seed`` fixes the draws (default:
    from defense, seed); ``pairs``/``targets`` name the items (equal names = the same items)."""
    rng = np.random.default_rng(zlib.crc32(repr((defense, seed, fold)).encode()) if items_seed is None
                                else items_seed)
    rec = cell_record(defense, attack, seed, run_id, **kw)
    correct = (rng.random(n_pairs) < acc).astype(int).tolist()
    per_ssim = np.clip(rng.normal(ssim, 0.08, n_targets), 0, 1)
    srra = (per_ssim > 0.5).astype(int)
    rec["fold"] = fold
    rec["accuracy"]["orl"].update({"accuracy_mean": float(np.mean(correct)), "correct": correct,
                                   "pairs_digest": f"{pairs}{seed}{fold}"})
    rec["privacy"].update({"SSIM": float(per_ssim.mean()), "SRRA": float(srra.mean())})
    rec["per_target"] = {"SSIM": per_ssim.tolist(), "SRRA": srra.tolist()}
    rec["targets_digest"] = f"{targets}{seed}{fold}"
    return rec


def write_run(root: Path, records: list[dict[str, Any]], run_id: str = "synth",
              config: dict[str, Any] | None = None) -> Path:
    run_dir = root / "runs" / run_id
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"run_id": run_id, "config": config or {}}))
    for r in records:
        fold = "" if r.get("fold") is None else f"__f{r['fold']}"
        name = f"{r['defense']}__{r['attack']}__s{r['seed']}{fold}.json"
        (run_dir / "cells" / name).write_text(json.dumps(r))
    return run_dir
