"""Identity-folder datasets (CASIA-WebFace, CelebA sorted by identity, VGGFace2 ...).

Layout: ``root/<identity>/<image>.{jpg,jpeg,png,pgm,bmp}``; one sub-folder per person. Identities
are numbered in sorted folder-name order, so ``limit_identities`` keeps the same people on
every machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.config import DataConfig
from bench.core.errors import DatasetError
from bench.core.registry import DATASETS
from bench.data.assemble import assemble_streaming
from bench.data.facedata import FaceData
from bench.data.images import IMAGE_SUFFIXES, load_image_uint8


def list_identity_folders(root: str | Path, limit: int = 0) -> list[tuple[str, list[Path]]]:
    """``[(identity, sorted image paths)]`` for identities with at least one image, sorted by name."""
    base = Path(root).expanduser()
    if not base.exists():
        raise DatasetError(f"dataset path {base} does not exist; pass --data-root <folder of identity folders>")
    if not base.is_dir():
        raise DatasetError(f"dataset path {base} is not a folder; pass --data-root <folder of identity folders>")
    out: list[tuple[str, list[Path]]] = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            out.append((sub.name, files))
            if 0 < limit <= len(out):  # stop early: CASIA has 10k folders, a tiny run needs a few
                break
    if not out:
        raise DatasetError(
            f"dataset path {base} has no identity folders with images "
            f"({', '.join(IMAGE_SUFFIXES)}); expected root/<identity>/<image>"
        )
    return out


class FileReader:
    """Item ``i`` → the uint8 face in ``paths[i]``; holds only path strings (cheap to pickle into
    DataLoader workers)."""

    def __init__(self, paths: list[str], size: int, channels: int) -> None:
        self.paths, self.size, self.channels = paths, size, channels

    def __call__(self, i: int):
        return load_image_uint8(self.paths[i], self.size, self.channels)


@DATASETS.register("folder")
def load_folder(cfg: DataConfig, seed: int) -> FaceData:
    """An identity-folder tree at ``cfg.root``, split by identity for ``seed``; named after the
    folder. The training split is streamed from the files; aux and test are held in memory."""
    if not cfg.root:
        raise DatasetError("dataset 'folder' needs a path; pass --data-root <folder of identity folders>")
    identities = list_identity_folders(cfg.root, cfg.limit_identities)
    paths = [str(f) for _, files in identities for f in files]
    labels = torch.tensor([k for k, (_, files) in enumerate(identities) for _ in files], dtype=torch.int64)
    name = Path(cfg.root).expanduser().resolve().name or "folder"
    return assemble_streaming(name, FileReader(paths, cfg.image_size, cfg.channels), labels, cfg, seed)
