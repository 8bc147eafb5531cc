"""Identity metrics: cosine similarity, verification accuracy, thresholds, SRRA (ALGORITHMS §8).

Embeddings are ``torch`` tensors ``[N, D]`` (numpy arrays are accepted too). Verification follows
the insightface protocol (``recognition/eval/verification.py``: ``calculate_roc``,
``calculate_val``), re-implemented in numpy without sklearn.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import interpolate

__all__ = [
    "cosine",
    "verification_accuracy",
    "threshold_at_far",
    "cosine_threshold_from_distance",
    "srra",
    "srra_other",
    "identification_ranks",
    "label_pairs",
    "ROC_THRESHOLDS",
    "VAL_THRESHOLDS",
]

#: Squared-L2 distance grid for the accuracy threshold (insightface ``evaluate``).
ROC_THRESHOLDS = np.arange(0, 4, 0.01)
#: Finer grid insightface uses for VAL@FAR.
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``[N, D]`` embedding batches → ``Tensor[N]``."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"expected two [N, D] batches of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # Same as sklearn.preprocessing.normalize: zero rows stay zero instead of becoming NaN.
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


def _folds(n: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous unshuffled folds, identical to ``sklearn.model_selection.KFold(shuffle=False)``:
    the first ``n % k`` folds hold one extra pair."""
    idx = np.arange(n)
    out = []
    for test in np.array_split(idx, n_folds):
        train = np.setdiff1d(idx, test, assume_unique=True)
        out.append((train, test))
    return out


def _accuracy_per_threshold(thr: np.ndarray, dist: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Accuracy of ``predict_same = dist < t`` for every t (insightface ``calculate_accuracy``)."""
    pred = dist[None, :] < thr[:, None]  # [T, n]
    correct = pred == same[None, :]
    return correct.mean(axis=1)


def _val_far(thr: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """insightface ``calculate_val_far``: VAL = TA/n_same, FAR = FA/n_diff (NaN if a class is absent)."""
    pred = dist < thr
    n_same = int(same.sum())
    n_diff = int((~same).sum())
    val = float(np.sum(pred & same)) / n_same if n_same else math.nan
    far = float(np.sum(pred & ~same)) / n_diff if n_diff else math.nan
    return val, far


def verification_accuracy(
    emb1: torch.Tensor | np.ndarray,
    emb2: torch.Tensor | np.ndarray,
    issame: Any,
    n_folds: int = 10,
    far_target: float = 1e-3,
) -> dict[str, Any]:
    """Pair-verification accuracy, insightface protocol (ALGORITHMS §8).

    Embeddings are L2-normalised; ``dist = ||e1 − e2||²``; pairs predicted "same" when
    ``dist < t``. Folds are contiguous and unshuffled; on each fold the threshold from
    ``arange(0, 4, 0.01)`` with the best accuracy on the other folds is applied to the held-out
    fold. VAL@FAR: on the training folds the threshold grid ``arange(0, 4, 0.001)`` is
    interpolated (``interp1d(far, thr, kind='slinear')`` over the distinct FAR levels) to hit
    ``far_target``, or 0 when no threshold reaches it, then VAL/FAR are measured on the held-out
    fold.

    Returns ``accuracy_mean``, ``accuracy_std`` (population std over folds, as insightface),
    ``correct`` (per pair, 1 when its held-out prediction was right: bootstrap intervals and paired
    tests resample these, ALGORITHMS §12),
    ``threshold_mean`` (mean of the fold thresholds, squared-L2 distance; see
    :func:`cosine_threshold_from_distance`), ``val_at_far``, ``val_std`` and ``far`` (mean FAR
    actually reached on the held-out folds).
    """
    e1 = _l2_normalize(_np(emb1))
    e2 = _l2_normalize(_np(emb2))
    same = np.asarray(issame, dtype=bool).reshape(-1)
    n = min(len(same), e1.shape[0])
    if e1.shape != e2.shape or n == 0:
        raise ValueError(f"need two equal [N, D] embedding batches and N labels; got {e1.shape}, {e2.shape}, {len(same)}")
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot be split into {n_folds} folds")
    e1, e2, same = e1[:n], e2[:n], same[:n]
    dist = np.sum(np.square(e1 - e2), axis=1)

    acc = np.zeros(n_folds)
    correct = np.zeros(n, dtype=bool)  # each pair judged by the threshold of the other folds
    best_thr = np.zeros(n_folds)
    val = np.zeros(n_folds)
    far = np.zeros(n_folds)
    for k, (train, test) in enumerate(_folds(n, n_folds)):
        acc_train = _accuracy_per_threshold(ROC_THRESHOLDS, dist[train], same[train])
        t = ROC_THRESHOLDS[int(np.argmax(acc_train))]  # first maximum, as np.argmax in insightface
        best_thr[k] = t
        correct[test] = (dist[test] < t) == same[test]
        acc[k] = float(np.mean(correct[test]))

        # VAL@FAR (insightface calculate_val)
        far_train = _far_per_threshold(VAL_THRESHOLDS, dist[train], same[train])
        if np.max(far_train) >= far_target:
            # insightface passes the raw (plateau-ridden) FAR curve to interp1d; SciPy ≥ 1.10
            # rejects duplicate x, so keep the first (smallest) threshold of each FAR level,
            # the common fix in maintained forks. Between levels the interpolation is unchanged.
            far_u, first = np.unique(far_train, return_index=True)
            thr_u = VAL_THRESHOLDS[first]
            if far_u.size < 2:
                thr = float(thr_u[0])
            else:
                thr = float(interpolate.interp1d(far_u, thr_u, kind="slinear")(far_target))
        else:
            thr = 0.0
        val[k], far[k] = _val_far(thr, dist[test], same[test])

    return {
        "accuracy_mean": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "threshold_mean": float(np.mean(best_thr)),
        # A held-out fold without genuine (or impostor) pairs has no VAL (FAR); insightface would
        # divide by zero. Average over the folds where it is defined (NaN if none).
        "val_at_far": _nanstat(np.nanmean, val),
        "val_std": _nanstat(np.nanstd, val),
        "far": _nanstat(np.nanmean, far),
        # per pair, for intervals and paired tests over pairs (ALGORITHMS §12)
        "correct": correct.astype(int).tolist(),
    }


def _nanstat(fn: Any, x: np.ndarray) -> float:
    return float(fn(x)) if np.any(np.isfinite(x)) else math.nan


def _far_per_threshold(thr: np.ndarray, dist: np.ndarray, same: np.ndarray) -> np.ndarray:
    """FAR of ``dist < t`` for every t, via sorting (the 4000-point grid × n pairs would be big)."""
    d_diff = np.sort(dist[~same])
    if d_diff.size == 0:
        return np.zeros(len(thr))
    # number of impostor distances strictly below t
    return np.searchsorted(d_diff, thr, side="left") / d_diff.size


def cosine_threshold_from_distance(d: float) -> float:
    """Cosine threshold equal to a squared-L2 threshold on unit vectors: ``||a−b||² = 2 − 2cos``."""
    return 1.0 - d / 2.0


def threshold_at_far(
    genuine_scores: torch.Tensor | np.ndarray,
    impostor_scores: torch.Tensor | np.ndarray,
    far: float,
) -> float:
    """Smallest cosine threshold ``t`` whose false-accept rate ``mean(impostor ≥ t)`` is ≤ ``far``.

    Pairs are accepted when ``cos ≥ t`` (ALGORITHMS §8, SRRA at FAR = 1e-3 `[ASSUMP]`). The
    smallest such ``t`` maximises the genuine accept rate, so ``genuine_scores`` do not move it;
    they are checked only so an empty or NaN evaluation set is caught early.
    """
    g = _np(genuine_scores).reshape(-1)
    s = _np(impostor_scores).reshape(-1)
    if s.size == 0 or g.size == 0:
        raise ValueError("threshold_at_far needs genuine and impostor scores")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(g))):
        raise ValueError("threshold_at_far got non-finite scores")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far}")
    s = np.sort(s)[::-1]  # descending
    k = int(math.floor(far * s.size + 1e-9))  # impostors we may accept
    if k >= s.size:
        return float(s[-1])  # accepting everything is within budget
    # Accept only scores strictly above s[k] (the (k+1)-th largest): at most k impostors pass.
    return float(np.nextafter(s[k], np.inf))


def srra(
    recon_emb: torch.Tensor | np.ndarray,
    orig_emb: torch.Tensor | np.ndarray,
    tau_cos: float,
) -> float:
    """Successful reconstruction attack rate (ALGORITHMS §8): share of images with
    ``cos(FR(x̂), FR(x)) ≥ τ``, in [0, 1]."""
    a = torch.as_tensor(recon_emb)
    b = torch.as_tensor(orig_emb)
    if a.shape[0] == 0:
        return math.nan
    return float((cosine(a, b) >= tau_cos).double().mean())


def srra_other(recon_emb: torch.Tensor, orig_emb: torch.Tensor, labels: torch.Tensor,
               tau_cos: float) -> torch.Tensor:
    """Per target, the share of the *other* photos of the same person that accept its
    reconstruction: ``mean_{j ≠ i, y_j = y_i} [cos(FR(x̂_i), FR(x_j)) ≥ τ]`` (ALGORITHMS §14,
    NbNet's "other-image" TAR). NaN for a target whose person has no other photo; the cell's
    ``SRRA_other`` is the mean over the others."""
    a = torch.nn.functional.normalize(torch.as_tensor(recon_emb).double(), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(orig_emb).double(), dim=1)
    y = torch.as_tensor(labels).reshape(-1)
    if len(a) != len(b) or len(a) != len(y):
        raise ValueError(f"srra_other: {len(a)} reconstructions, {len(b)} originals, {len(y)} labels")
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    accepted = ((a @ b.T) >= tau_cos) & same
    n_other = same.sum(1)
    out = accepted.sum(1).double() / n_other.clamp_min(1)
    return torch.where(n_other > 0, out, torch.full_like(out, math.nan))


def identification_ranks(probe_emb: torch.Tensor, probe_labels: torch.Tensor,
                         gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                         exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Closed-set identification (ALGORITHMS §14 linkage): for each probe the rank (1 = first) of
    its true identity among the gallery identities, each identity scored by its best-matching
    gallery photo (max cosine) [ASSUMP]; an identity scoring as high as the true one counts as
    ahead of it (ties are not wins). ``exclude[i]`` (optional): a gallery index probe ``i``
    may not use (its own photo: the gallery holds *other* photos of the person). Probes whose
    identity has no usable gallery photo get rank 0 (not rankable). Returns ``(ranks,
    n_identities)``; chance of rank ≤ k is ``min(k, n_identities) / n_identities``."""
    p = torch.nn.functional.normalize(torch.as_tensor(probe_emb).double(), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(gallery_emb).double(), dim=1)
    py, gy = torch.as_tensor(probe_labels).reshape(-1), torch.as_tensor(gallery_labels).reshape(-1)
    ids = gy.unique()
    sim = p @ g.T  # [P, G]
    if exclude is not None:
        rows = torch.arange(len(p))
        keep = exclude >= 0
        sim[rows[keep], exclude[keep]] = -math.inf
    # identity score: the best gallery photo of each identity → [P, I] (one identity at a time:
    # a [P, I, G] tensor would not fit at paper scale)
    scores = torch.stack([sim[:, gy == c].amax(1) for c in ids], 1)
    truth = (py[:, None] == ids[None, :])
    true_score = torch.where(truth, scores, torch.full_like(scores, -math.inf)).amax(1)
    # ties count against the probe: a constant embedding must not rank every probe first
    ranks = 1 + ((scores >= true_score[:, None]) & ~truth).sum(1)
    rankable = torch.isfinite(true_score)
    return torch.where(rankable, ranks, torch.zeros_like(ranks)), int(len(ids))


def label_pairs(labels: torch.Tensor, max_pairs: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Verification pairs over a labelled set (ALGORITHMS §14 ``link_verif_acc``): every
    same-identity pair (or ``max_pairs // 2`` drawn from them) and as many different-identity
    pairs drawn uniformly, in a random order so the unshuffled 10 folds of §8 mix both.
    Returns ``(pairs [n, 2], issame [n])``."""
    y = torch.as_tensor(labels).reshape(-1)
    i, j = torch.triu_indices(len(y), len(y), offset=1)
    same = y[i] == y[j]
    genuine = torch.stack([i[same], j[same]], 1)
    impostor = torch.stack([i[~same], j[~same]], 1)
    n = min(len(genuine), len(impostor), max(1, max_pairs // 2))
    genuine = genuine[torch.randperm(len(genuine), generator=gen)[:n]]
    impostor = impostor[torch.randperm(len(impostor), generator=gen)[:n]]
    pairs = torch.cat([genuine, impostor])
    issame = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    order = torch.randperm(len(pairs), generator=gen)
    return pairs[order], issame[order]
