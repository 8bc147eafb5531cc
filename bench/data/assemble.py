"""The step every identity-labelled loader shares: images + labels → split ``FaceData``."""
from __future__ import annotations

from torch import Tensor

from bench.config import DataConfig
from bench.data.facedata import FaceData, VerificationSet, make_pairs, split_by_identity
from bench.errors import DatasetError


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
    """Apply ``cfg.limit_identities``, split by identity, draw test pairs, add ``cfg.verification``.

    Labels are expected in the loader's identity order (0 = first identity), so "the first N
    identities" are the N smallest labels.
    """
    from bench.data.insightface_bin import load_verification  # late: keeps import graph flat

    if cfg.limit_identities > 0:
        keep = labels < cfg.limit_identities
        images, labels = images[keep], labels[keep]
    train, aux, test = split_by_identity(images, labels, cfg.split, seed)
    if test.num_identities < 2:
        # make_pairs needs impostor pairs; say which knob to turn instead of its generic message.
        raise DatasetError(
            f"{name}: the test split got {test.num_identities} identity of {int(labels.unique().numel())}; "
            "verification pairs need at least 2 — use more identities (data.limit_identities) "
            "or a larger test fraction (data.split)"
        )
    verification = [_whole_folds(make_pairs(test, cfg.num_pairs, seed, name=name))]
    verification += [load_verification(spec, cfg.image_size, cfg.channels) for spec in cfg.verification]
    return FaceData(name, train, aux, test, verification)
