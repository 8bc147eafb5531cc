"""`FaceData`: images, identity labels, identity-disjoint splits and verification pairs.

Splits (ARCHITECTURE "Splits of a dataset"): ``train`` (identities the recognizers learn),
``aux`` (disjoint identities: the attacker's public data and the defense's shadow data) and
``test`` (disjoint identities: verification pairs and reconstruction targets).
Two kinds of face set share one interface (ARCHITECTURE "Sources of faces"): :class:`FaceSet`
holds float32 ``[N, C, H, W]`` images in [0, 1] in memory (ORL, tests, aux/test splits), and
:class:`StreamingFaceSet` reads each face on demand from its file or record (CASIA-WebFace,
MS1M), so memory never grows with the number of training images. The training loop only calls
:meth:`batches`, :meth:`take`, ``labels`` and ``len``; it never knows which kind it reads.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import numpy as np
import torch
from torch import Tensor

from bench.core.errors import DatasetError


class ImageReader(Protocol):
    """Decodes item ``i`` of an on-disk collection to uint8 ``[C, size, size]``. Must pickle
    cheaply (paths, not open handles): DataLoader workers receive a copy."""

    def __call__(self, i: int) -> Tensor: ...


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

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def relabelled(self) -> "FaceSet":
        """Same images with labels renumbered 0..n-1 (what a classification head needs)."""
        _, new = torch.unique(self.labels, return_inverse=True)
        return FaceSet(self.images, new)

    def subset(self, mask: Tensor) -> "FaceSet":
        return FaceSet(self.images[mask], self.labels[mask])

    def take(self, idx: Tensor) -> Tensor:
        """Float images of examples ``idx``."""
        return self.images[idx]

    def batches(self, chunks: list[Tensor], workers: int = 0, pin: bool = False) -> Iterator[Tensor]:
        """The float images of each index chunk, in order (in memory: plain indexing)."""
        return (self.images[idx] for idx in chunks)

    def materialise(self, limit: int = 0) -> "FaceSet":
        return self


class _Decode(torch.utils.data.Dataset):
    """Map-style view of a streaming set for a DataLoader: position → uint8 image."""

    def __init__(self, reader: ImageReader, positions: np.ndarray) -> None:
        self.reader, self.positions = reader, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Tensor:
        return self.reader(int(self.positions[i]))


def _stack(items: list[Tensor]) -> Tensor:
    return torch.stack(items)


@dataclass
class StreamingFaceSet:
    """Faces read on demand: ``reader(positions[i])`` is example ``i`` as uint8 ``[C, S, S]``.

    Only the labels and the positions (8 bytes each) live in memory. Batches come through a torch
    ``DataLoader`` whose workers decode in parallel; pixels cross to the training device as uint8
    (a quarter of float32's bytes), pinned on CUDA, and become floats there.
    """

    reader: ImageReader
    positions: np.ndarray  # int64 [N]: item numbers in the reader's collection
    labels: Tensor  # [N] int64
    shape: tuple[int, int, int]  # (C, S, S) every reader call returns

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.labels):
            raise DatasetError(f"streaming face set is malformed: {len(self.positions)} items, "
                               f"{len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_identities(self) -> int:
        return int(self.labels.unique().numel())

    @property
    def images(self) -> Tensor:
        raise DatasetError("this training set is streamed from disk and is not held in memory; "
                           "the stage that asked for all of its images must read batches instead")

    def relabelled(self) -> "StreamingFaceSet":
        _, new = torch.unique(self.labels, return_inverse=True)
        return StreamingFaceSet(self.reader, self.positions, new, self.shape)

    def subset(self, mask: Tensor) -> "StreamingFaceSet":
        keep = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        return StreamingFaceSet(self.reader, self.positions[keep], self.labels[mask], self.shape)

    def take(self, idx: Tensor) -> Tensor:
        if len(idx) == 0:
            return torch.empty(0, *self.shape)
        return torch.stack([self.reader(int(self.positions[i])) for i in idx.tolist()]).float() / 255

    def batches(self, chunks: list[Tensor], workers: int = 0, pin: bool = False) -> Iterator[Tensor]:
        """uint8 image batches for each index chunk, in order, decoded by ``workers`` processes
        (at most one per usable core: more only queue on the same cores)."""
        workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1))
        loader = torch.utils.data.DataLoader(
            _Decode(self.reader, self.positions), batch_sampler=[c.tolist() for c in chunks],
            num_workers=workers, pin_memory=pin, collate_fn=_stack,
            persistent_workers=False, prefetch_factor=4 if workers else None)
        return _one_line_errors(iter(loader))

    def materialise(self, limit: int = 0) -> FaceSet:
        """Decode into memory (aux/test splits), keeping whole identities up to ``limit`` images
        (0 = all) in identity order, so a cap never leaves an identity with one face; at least
        two identities stay (verification pairs and AdvFace's aux halves need two)."""
        keep = torch.ones(len(self), dtype=torch.bool)
        if 0 < limit < len(self):
            ids, counts = torch.unique(self.labels, return_counts=True)
            kept = ids[: max(2, int((counts.cumsum(0) <= limit).sum()))]
            keep = torch.isin(self.labels, kept)
        idx = torch.nonzero(keep).flatten()
        images = torch.cat([self.take(c) for c in idx.split(512)]) if len(idx) else torch.empty(0, *self.shape)
        return FaceSet(images, self.labels[keep])


def _one_line_errors(batches: Iterator[Tensor]) -> Iterator[Tensor]:
    """A worker's DatasetError (an unreadable file met mid-epoch) arrives wrapped in the worker's
    traceback; keep only its own one-line message."""
    marker = f"{DatasetError.__module__}.{DatasetError.__name__}: "
    try:
        yield from batches
    except DatasetError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.startswith(marker)]
        raise DatasetError(lines[-1][len(marker):] if lines else str(exc).splitlines()[-1]) from None


#: Either kind of face set; both offer ``labels``, ``len``, ``shape``, ``take``, ``batches``.
FaceSource = Union[FaceSet, StreamingFaceSet]


def to_float(batch: Tensor, device: torch.device) -> Tensor:
    """A batch from :meth:`batches` on ``device`` as float32 in [0, 1] (uint8 is scaled there,
    after the copy; the copy does not block when the batch is pinned)."""
    batch = batch.to(device, non_blocking=True)
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch


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
    train: FaceSource  # streamed for large on-disk sets
    aux: FaceSet
    test: FaceSet
    verification: list[VerificationSet] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.train.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.shape[-2:])  # type: ignore[return-value]

    @property
    def primary_verification(self) -> VerificationSet:
        """The set the tables name (ALGORITHMS §8): LFW when supplied, else the first one (the
        test split's pairs). Score_cls and the SRRA threshold come from it."""
        for v in self.verification:
            if v.name.lower().startswith("lfw"):
                return v
        return self.verification[0]


def identity_groups(labels: Tensor, fractions: tuple[float, float, float],
                    seed: int, folds: int = 1, fold: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministically assign whole identities to train / aux / test by ``fractions``: the
    identity ids of each split.

    With ``folds > 1`` (identity folds, ALGORITHMS §12) the shuffled identities are cut into
    ``folds`` near-equal groups; group ``fold`` is the test split and train / aux are drawn from
    the other groups in the proportion ``fractions[0] : fractions[1]``. Over the folds every
    identity is in ``test`` exactly once."""
    ids = labels.unique()
    if len(ids) < 3:
        raise DatasetError(f"need at least 3 identities to split, found {len(ids)}")
    gen = torch.Generator().manual_seed(seed)
    ids = ids[torch.randperm(len(ids), generator=gen)]
    if folds > 1:
        if len(ids) < 3 * folds:
            raise DatasetError(f"{len(ids)} identities cannot make {folds} identity folds with "
                               "train, aux and test in each; use fewer --folds")
        groups = list(torch.tensor_split(ids, folds))
        test = groups.pop(fold)
        rest = torch.cat(groups)
        n_train = round(len(rest) * fractions[0] / (fractions[0] + fractions[1]))
        n_train = min(max(1, n_train), len(rest) - 1)
        return rest[:n_train], rest[n_train:], test
    total = sum(fractions)
    n_train = max(1, round(len(ids) * fractions[0] / total))
    n_aux = max(1, round(len(ids) * fractions[1] / total))
    n_train = min(n_train, len(ids) - 2)
    n_aux = min(n_aux, len(ids) - n_train - 1)
    return ids[:n_train], ids[n_train : n_train + n_aux], ids[n_train + n_aux :]


def split_by_identity(
    images: Tensor,
    labels: Tensor,
    fractions: tuple[float, float, float],
    seed: int,
    folds: int = 1,
    fold: int = 0,
) -> tuple[FaceSet, FaceSet, FaceSet]:
    """In-memory images split into train / aux / test by whole identities (:func:`identity_groups`)."""
    out = []
    for group in identity_groups(labels, fractions, seed, folds, fold):
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
