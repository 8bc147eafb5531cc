"""Synthetic run folders for report/compare/leaderboard tests: cell JSONs and sample arrays in
the exact schema ``bench.matrix.run_matrix`` writes, with plausible numbers and no training.

Numbers are a deterministic function of (defense, attack, seed) so two calls with the same
arguments build byte-identical runs.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

# defense → (domain, protected, base accuracy, base SSIM); variants share their base's numbers
PROFILES: dict[str, tuple[str, bool, float, float]] = {
    "none": ("image", False, 0.97, 0.80), "ppfr_fd": ("image", True, 0.95, 0.45),
    "masking_mixup.k2": ("image", True, 0.93, 0.40), "adamixup.k2-6": ("image", True, 0.92, 0.35),
    "adamixup.k2-4": ("image", True, 0.94, 0.38),
    "mixup_rgb": ("image", True, 0.80, 0.60), "mixup_fd": ("image", True, 0.93, 0.50),
    "instahide_rgb": ("image", True, 0.60, 0.55), "instahide_fd": ("image", True, 0.80, 0.48),
    "plain_feature": ("feature", False, 0.96, 0.85), "random_feature": ("feature", True, 0.95, 0.80),
    "dp_feature": ("feature", True, 0.94, 0.78), "duetface": ("image", True, 0.95, 0.70),
    "advface": ("feature", True, 0.93, 0.28), "advface.offline": ("feature", True, 0.95, 0.28),
}

FULL_DEFENSES = list(PROFILES) + ["advface.eps0.1", "advface.eps0.3", "advface.shadow_unet"]
ADAMIXUP = ["adamixup.k2-4", "adamixup.k2-6"]


def _profile(defense: str) -> tuple[str, bool, float, float]:
    if defense in PROFILES:
        return PROFILES[defense]
    return PROFILES.get(defense.split(".")[0], ("image", True, 0.9, 0.5))


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16))


def defense_options(defense: str) -> dict[str, Any]:
    """Options the (fake) registry resolves for a defense name."""
    base, _, variant = defense.partition(".")
    if base == "advface":
        eps = {"eps0.1": 0.1, "eps0.3": 0.3}.get(variant, 0.2)
        return {"eps": eps, "alpha": 0.2, "shadow": "unet" if variant == "shadow_unet" else "resrec",
                "mode": "offline" if variant == "offline" else "online"}
    if base == "adamixup":
        return {"k_values": list(range(2, int(variant[-1]) + 1))}
    if base == "ppfr_fd":
        return {"perm_mode": "per_sample", "mix_mode": "adjacent_sum"}
    return {}


def cell_record(defense: str, attack: str, seed: int, run_id: str, dataset: str = "orl",
                preset: str = "quick", options: dict[str, Any] | None = None,
                shift: float = 0.0, perceptual_metric: str = "dssim",
                attack_gain: float = 0.0) -> dict[str, Any]:
    """One cell JSON. ``shift`` raises accuracy and privacy together (negative: both worse);
    ``attack_gain`` raises only the reconstruction's SSIM (a stronger attacker)."""
    domain, protected, acc0, ssim0 = _profile(defense)
    opts = defense_options(defense) if options is None else options
    r = _rng(defense, attack, seed)
    eps = opts.get("eps", 0.2) if defense.startswith("advface") else 0.0
    acc = float(np.clip(acc0 - 0.1 * (eps - 0.2) + r.normal(0, 0.01) + shift, 0.5, 1.0))
    ssim = float(np.clip(ssim0 - 0.6 * (eps - 0.2) + r.normal(0, 0.02) - shift + attack_gain,
                         0.01, 0.99))
    mse = float(0.005 + 0.2 * (1 - ssim) ** 2)
    s = {k: float(np.clip(v + r.normal(0, 0.01), 0, 2)) for k, v in
         {"S1": 1 - ssim + 0.1, "S2": 0.5 * (1 - ssim) + 0.1, "S3": 1 - ssim,
          "S4": 0.5 * (1 - ssim)}.items()}
    if domain == "feature":
        s["S1"] = s["S2"] = float("nan")  # no image view of a feature map
    privacy = {**s, "raw_pp": 0.4 * (s["S1"] + s["S2"]) + 0.6 * (s["S3"] + s["S4"]),
               "SSIM": ssim, "PSNR": float(10 * np.log10(1 / mse)), "MSE": mse,
               "SRRA": float(np.clip(ssim, 0, 1)), "SRRA_far1e-3": float(np.clip(ssim - 0.2, 0, 1))}
    record: dict[str, Any] = {}
    if defense.startswith("adamixup"):  # as defenses/adamixup.py records it
        ks = list(opts.get("k_values", [2, 3, 4, 5, 6]))
        counts = r.multinomial(60, r.dirichlet(np.ones(len(ks)) * 5))
        if seed == 0:
            counts[-1] = 0  # a k the policy never drew is absent from k_counts / k_share
        drawn = {str(k): int(c) for k, c in zip(ks, counts) if c}
        total = sum(drawn.values())
        record = {"k_values": ks, "k_counts": drawn,
                  "k_share": {k: c / total for k, c in drawn.items()}}
    elif "mix" in defense or "instahide" in defense:  # fixed k: all mass on it
        record = {"k_share": {"2": 1.0}}
    return {
        "schema": 1, "harness_version": "0.1.0", "run_id": run_id, "dataset": dataset,
        "preset": preset, "seed": seed, "defense": defense, "defense_options": opts,
        "protected": protected, "domain": domain, "attack": attack, "attack_options": {"epochs": 1},
        "status": "ok",
        "accuracy": {dataset: {"accuracy_mean": acc, "accuracy_std": 0.02, "threshold_mean": 1.2}},
        "baseline_accuracy": {dataset: {"accuracy_mean": 0.97, "accuracy_std": 0.01}},
        "record": record, "perceptual_metric": perceptual_metric, "lpips_unavailable_reason": "no weights",
        "privacy": privacy, "n_test": 40,
        "seconds": {"baseline": 1.0, "defense_recognizer": 1.0, "attack": 1.0},
        "stage_keys": {"measure": hashlib.sha256(f"{defense}{attack}{seed}".encode()).hexdigest()[:20]},
    }


def _samples(defense: str, attack: str, seed: int, n: int = 8, size: int = 24) -> dict[str, np.ndarray]:
    """Faces-ish originals (same for every cell of a seed) and noisy 'reconstructions'."""
    r0 = _rng("originals", seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    faces = []
    for _ in range(n):
        cx, cy, rad = 0.5 + r0.normal(0, 0.05), 0.5 + r0.normal(0, 0.05), 0.3 + r0.normal(0, 0.03)
        face = ((xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2) * 0.7 + 0.15
        face -= 0.4 * (((xx - cx + 0.1) ** 2 + (yy - cy + 0.08) ** 2) < 0.003)  # eyes
        face -= 0.4 * (((xx - cx - 0.1) ** 2 + (yy - cy + 0.08) ** 2) < 0.003)
        faces.append(face)
    orig = (np.clip(np.stack(faces)[:, None], 0, 1) * 255).astype(np.uint8)
    _, _, _, ssim0 = _profile(defense)
    r = _rng(defense, attack, seed, "samples")
    noise = r.normal(0, 1 - ssim0, orig.shape) * 255
    rec = np.clip(orig * ssim0 + 128 * (1 - ssim0) + noise * 0.5, 0, 255).astype(np.uint8)
    view = r.integers(0, 256, orig.shape, dtype=np.uint8)
    return {"original": orig, "reconstruction": rec, "view": view}


def make_run(results: Path, run_id: str = "synth", defenses: list[str] | None = None,
             attacks: tuple[str, ...] = ("cgan",), seeds: tuple[int, ...] = (0, 1),
             dataset: str = "orl", preset: str = "quick",
             option_overrides: dict[str, dict[str, Any]] | None = None,
             shift: dict[str, float] | None = None, npz: bool = True,
             config_extra: dict[str, Any] | None = None, perceptual_metric: str = "dssim",
             attack_gain: dict[str, float] | None = None) -> Path:
    """Write ``results/runs/<run_id>/{config.json,cells/*}``; return the run folder."""
    defenses = defenses or ["none", "ppfr_fd"]
    run_dir = Path(results) / "runs" / run_id
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    overrides = option_overrides or {}
    config = {"preset": preset, "device": "cpu", "seeds": list(seeds),
              "data": {"name": dataset, "image_size": 24, "channels": 1},
              "recognizer": {"epochs": 3}, "metrics": {"lpips_weights": None},
              "defenses": overrides, "attacks": {}, **(config_extra or {})}
    (run_dir / "config.json").write_text(json.dumps(
        {"run_id": run_id, "defenses": defenses, "attacks": list(attacks), "config": config}, indent=2))
    for seed in seeds:
        for d in defenses:
            opts = {**defense_options(d), **overrides.get(d, {})}
            for a in attacks:
                rec = cell_record(d, a, seed, run_id, dataset, preset, opts,
                                  (shift or {}).get(d, 0.0), perceptual_metric,
                                  (attack_gain or {}).get(d, 0.0))
                stem = f"{d}__{a}__s{seed}"
                (run_dir / "cells" / f"{stem}.json").write_text(json.dumps(rec, indent=2))
                if npz:
                    buf = io.BytesIO()
                    np.savez_compressed(buf, **_samples(d, a, seed))
                    (run_dir / "cells" / f"{stem}.npz").write_bytes(buf.getvalue())
    return run_dir
