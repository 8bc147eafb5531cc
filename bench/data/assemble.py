"""The step every identity-labelled loader shares: images + labels → split ``FaceData``."""
from __future__ import annotations

import torch
from torch import Tensor

from bench.config import DataConfig
from bench.core.errors import DatasetError
from bench.data.facedata import (FaceData, FaceSet, ImageReader, StreamingFaceSet, VerificationSet,
                                 identity_groups, make_pairs, split_by_identity)


def _whole_folds(ver: VerificationSet) -> VerificationSet:
    """Trim to a multiple of 10 pairs. make_pairs falls short of ``num_pairs`` when the test split
    has few distinct genuine pairs, and the 10-fold protocol needs equal folds. Pairs alternate
    genuine/impostor, so any even-length prefix stays balanced."""
    keep = len(ver.issame) // 10 * 10
    if keep == len(ver.issame):
        return ver
    if keep == 0:
        raise DatasetError(
            f"{ver.name}: the test split yields only {len(ver.issame)} verification pairs, fewer than "
            "the 10 the 10-fold protocol needs; use more identities or a larger test fraction (data.split)"
        )
    return VerificationSet(ver.name, ver.images[: 2 * keep], ver.issame[:keep])


def assemble(name: str, images: Tensor, labels: Tensor, cfg: DataConfig, seed: int) -> FaceData:
    """In-memory images: apply ``cfg.limit_identities``, split by identity, draw test pairs, add
    ``cfg.verification``.

    Labels are expected in the loader's identity order (0 = first identity), so "the first N
    identities" are the N smallest labels.
    """
    if cfg.limit_identities > 0:
        keep = labels < cfg.limit_identities
        images, labels = images[keep], labels[keep]
    train, aux, test = split_by_identity(images, labels, cfg.split, seed, cfg.folds, cfg.fold)
    return _finish(name, train, aux, test, int(labels.unique().numel()), cfg, seed)


def assemble_streaming(name: str, reader: ImageReader, labels: Tensor, cfg: DataConfig,
                       seed: int) -> FaceData:
    """On-disk faces (item ``i`` of ``reader`` has identity ``labels[i]``): the train split is
    streamed; aux and test are decoded into memory, capped at ``cfg.max_aux_images`` /
    ``cfg.max_test_images`` whole identities (the attacker's public set and the reconstruction
    targets need not grow with a 500k-image training set)."""
    positions = torch.arange(len(labels))
    if cfg.limit_identities > 0:
        keep = labels < cfg.limit_identities
        positions, labels = positions[keep], labels[keep]
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    whole = StreamingFaceSet(reader, positions.numpy(), labels, shape)
    train, aux, test = (whole.subset(torch.isin(labels, g)) for g in identity_groups(labels, cfg.split, seed, cfg.folds, cfg.fold))
    return _finish(name, train, aux.materialise(cfg.max_aux_images),
                   test.materialise(cfg.max_test_images), int(labels.unique().numel()), cfg, seed)


def _finish(name: str, train: "FaceSet | StreamingFaceSet", aux: FaceSet, test: FaceSet,
            n_identities: int, cfg: DataConfig, seed: int) -> FaceData:
    from bench.data.insightface_bin import load_verification  # late: keeps import graph flat

    if test.num_identities < 2:
        # make_pairs needs impostor pairs; say which knob to turn instead of its generic message.
        raise DatasetError(
            f"{name}: the test split got {test.num_identities} identity of {n_identities}; "
            "verification pairs need at least 2 — use more identities (data.limit_identities) "
            "or a larger test fraction (data.split)"
        )
    verification = [_whole_folds(make_pairs(test, cfg.num_pairs, seed, name=name))]
    verification += [load_verification(spec, cfg.image_size, cfg.channels) for spec in cfg.verification]
    return FaceData(name, train, aux, test, verification)
