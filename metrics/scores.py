"""Privacy/utility scores of the hybrid paper: S1–S4, raw_pp, Score_pp, Score_cls, Score
(ALGORITHMS §8, `[H]` Eq. 11).

The functions take precomputed per-image tensors (perceptual distances, cosine similarities) so
they stay independent of the recognizer and of the perceptual metric actually used.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = [
    "s_perceptual",
    "s_identity",
    "s_scores",
    "raw_pp",
    "minmax_to_half",
    "score_cls",
    "score_pp",
    "score",
    "score_table",
    "ALPHA",
    "BETA",
]

#: Weights of the masked-view terms (S1+S2) and the reconstruction terms (S3+S4) in raw_pp.
ALPHA = 0.4
BETA = 0.6


def s_perceptual(dist: torch.Tensor | None) -> float:
    """S1 / S3: mean perceptual distance (LPIPS, or its DSSIM substitute) between originals and
    the masked view / the reconstruction. ``None`` (no image view exists) gives NaN."""
    if dist is None or dist.numel() == 0:
        return math.nan
    return float(dist.double().mean())


def s_identity(cos: torch.Tensor | None) -> float:
    """S2 / S4: ``1 − mean cos(F1(original), F1(view))`` with F1 the recognizer trained on
    originals. ``None`` (no image view exists) gives NaN."""
    if cos is None or cos.numel() == 0:
        return math.nan
    return 1.0 - float(cos.double().mean())


def s_scores(
    view_dist: torch.Tensor | None,
    view_cos: torch.Tensor | None,
    recon_dist: torch.Tensor | None,
    recon_cos: torch.Tensor | None,
) -> dict[str, float]:
    """S1–S4 from per-image tensors: S1/S2 on the masked view, S3/S4 on the reconstruction.

    Feature-domain defenses publish no image view, so their S1/S2 are NaN (and so is raw_pp).
    """
    return {
        "s1": s_perceptual(view_dist),
        "s2": s_identity(view_cos),
        "s3": s_perceptual(recon_dist),
        "s4": s_identity(recon_cos),
    }


def raw_pp(s1: float, s2: float, s3: float, s4: float, alpha: float = ALPHA, beta: float = BETA) -> float:
    """Raw privacy score ``α(S1+S2) + β(S3+S4)`` (ALGORITHMS §8); NaN in, NaN out."""
    return alpha * (s1 + s2) + beta * (s3 + s4)


def minmax_to_half(values: Mapping[str, float]) -> dict[str, float]:
    """Min-max normalise to [0.5, 1]: ``0.5 + 0.5·(v − min)/(max − min)`` (ALGORITHMS §8).

    Non-finite inputs (NaN, ±inf: a metric that could not be computed) map to NaN and are left out
    of min and max. With fewer than two distinct finite values every output is NaN: the score is
    defined *relative to the compared methods*, and a min-max over one method (or over methods
    that tie) has zero range — any number we printed would be an artefact, not a comparison.
    """
    finite = [float(v) for v in values.values() if v is not None and math.isfinite(v)]
    if len(set(finite)) < 2:
        return {k: math.nan for k in values}
    lo, hi = min(finite), max(finite)
    out: dict[str, float] = {}
    for k, v in values.items():
        if v is None or not math.isfinite(v):
            out[k] = math.nan
        else:
            out[k] = 0.5 + 0.5 * ((float(v) - lo) / (hi - lo))  # divide first: 0.5·tiny underflows
    return out


def score_cls(acc: Mapping[str, float]) -> dict[str, float]:
    """Score_cls: min-max to [0.5, 1] of the protected methods' verification accuracy (LFW
    acc_mask in `[H]` Table 2). Pass only protected methods — not the unprotected baseline."""
    return minmax_to_half(acc)


def score_pp(raw: Mapping[str, float]) -> dict[str, float]:
    """Score_pp: min-max to [0.5, 1] of raw_pp over the compared methods (ALGORITHMS §8)."""
    return minmax_to_half(raw)


def score(pp: float, cls: float) -> float:
    """Score = ``(Score_pp + Score_cls)/2`` (`[H]` Eq. 11; the text's "product" is wrong)."""
    return (pp + cls) / 2.0


def score_table(raw: Mapping[str, float], acc: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per method: ``raw_pp``, ``acc``, ``score_pp``, ``score_cls`` and ``score``.

    Methods missing from one mapping get NaN there; the normalisations run over each mapping's
    own methods.
    """
    pp = score_pp(raw)
    cls = score_cls(acc)
    out: dict[str, dict[str, float]] = {}
    for m in list(dict.fromkeys([*raw, *acc])):
        p, c = pp.get(m, math.nan), cls.get(m, math.nan)
        out[m] = {
            "raw_pp": float(raw.get(m, math.nan)),
            "acc": float(acc.get(m, math.nan)),
            "score_pp": p,
            "score_cls": c,
            "score": score(p, c),
        }
    return out
