"""`FaceData`: images, identity labels, identity-disjoint splits and verification pairs.

Splits (ARCHITECTURE "Splits of a dataset"): ``train`` (identities the recognizers learn),
``aux`` (disjoint identities: the attacker's public data and the defense's shadow data) and
``test`` (disjoint identities: verification pairs and reconstruction targets).
Images are float32 ``[N, C, H, W]`` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.errors import DatasetError


@dataclass
class FaceSet:
    """A set of face images with integer identity labels (``labels[i]`` names ``images[i]``)."""

    images: Tensor  # [N, C, H, W] float32 in [0, 1]
    labels: Tensor  # [N] int64

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise DatasetError(
                f"face set is malformed: images {tuple(self.images.shape)}, labels {len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_identities(self) -> int:
        return int(self.labels.unique().numel())

    def relabelled(self) -> "FaceSet":
        """Same images with labels renumbered 0..n-1 (what a classification head needs)."""
        _, new = torch.unique(self.labels, return_inverse=True)
        return FaceSet(self.images, new)


@dataclass
class VerificationSet:
    """Verification pairs: images ``2i`` and ``2i+1`` form pair ``i`` (the insightface layout)."""

    name: str
    images: Tensor  # [2P, C, H, W]
    issame: Tensor  # [P] bool

    def __post_init__(self) -> None:
        if len(self.images) != 2 * len(self.issame):
            raise DatasetError(
                f"verification set {self.name!r}: {len(self.images)} images for {len(self.issame)} pairs"
            )


@dataclass
class FaceData:
    """One dataset, split by identity, plus the verification sets used for utility."""

    name: str
    train: FaceSet
    aux: FaceSet
    test: FaceSet
    verification: list[VerificationSet] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[-2:])  # type: ignore[return-value]


def split_by_identity(
    images: Tensor,
    labels: Tensor,
    fractions: tuple[float, float, float],
    seed: int,
) -> tuple[FaceSet, FaceSet, FaceSet]:
    """Deterministically assign whole identities to train / aux / test by ``fractions``."""
    ids = labels.unique()
    if len(ids) < 3:
        raise DatasetError(f"need at least 3 identities to split, found {len(ids)}")
    gen = torch.Generator().manual_seed(seed)
    ids = ids[torch.randperm(len(ids), generator=gen)]
    total = sum(fractions)
    n_train = max(1, round(len(ids) * fractions[0] / total))
    n_aux = max(1, round(len(ids) * fractions[1] / total))
    n_train = min(n_train, len(ids) - 2)
    n_aux = min(n_aux, len(ids) - n_train - 1)
    groups = (ids[:n_train], ids[n_train : n_train + n_aux], ids[n_train + n_aux :])
    out = []
    for group in groups:
        mask = torch.isin(labels, group)
        out.append(FaceSet(images[mask], labels[mask]))
    return out[0], out[1], out[2]


def make_pairs(faces: FaceSet, num_pairs: int, seed: int, name: str = "test") -> VerificationSet:
    """Balanced genuine/impostor pairs from one set, alternating genuine/impostor.

    Genuine pairs are drawn without replacement from every same-identity pair; impostor pairs are
    distinct random cross-identity draws. The count is ``num_pairs`` or what the set allows,
    rounded down to a multiple of 10 so the 10-fold protocol has equal folds.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = faces.labels
    genuine_all = []
    for ident in labels.unique():
        idx = torch.nonzero(labels == ident).flatten()
        i, j = torch.triu_indices(len(idx), len(idx), offset=1)
        genuine_all.append(torch.stack([idx[i], idx[j]], 1))
    genuine_all = torch.cat(genuine_all)
    n = len(labels)
    n_impostor_max = (n * (n - 1)) // 2 - len(genuine_all)
    n_each = min(num_pairs // 2, len(genuine_all), n_impostor_max)
    n_each -= n_each % 5
    if n_each < 5:
        raise DatasetError(f"{name}: too few images or identities for 10 verification pairs; "
                           "use more identities")
    genuine = genuine_all[torch.randperm(len(genuine_all), generator=gen)[:n_each]]
    seen: set[tuple[int, int]] = set()
    impostor: list[tuple[int, int]] = []
    while len(impostor) < n_each:
        a, b = torch.randint(n, (2, 4 * n_each), generator=gen)
        for x, y in zip(a.tolist(), b.tolist()):
            key = (min(x, y), max(x, y))
            if labels[x] != labels[y] and key not in seen and len(impostor) < n_each:
                seen.add(key)
                impostor.append(key)
    pairs = torch.stack([genuine, torch.tensor(impostor)], 1)  # [n_each, 2 kinds, 2 images]
    issame = torch.tensor([True, False]).repeat(n_each)
    return VerificationSet(name, faces.images[pairs.flatten()], issame)
