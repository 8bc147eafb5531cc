"""Independent identity evaluator: dlib's pretrained ResNet face descriptors (optional extra).

A second opinion on identity leakage that does not share weights (or training data) with the
harness's recognizers: dlib's ``dlib_face_recognition_resnet_model_v1`` (128-D descriptors, LFW
99.38 %) with its 5-landmark shape predictor, both from the CC0 ``face_recognition_models``
package. Install with ``pip install 'faceprivbench[dlib]'`` (``dlib-bin`` wheel +
``face_recognition_models``).

- The model files are located with ``importlib.util.find_spec`` **without importing**
  ``face_recognition_models`` (its ``__init__`` needs ``pkg_resources``).
- No face detector: the whole image is the face box (harness faces are already cropped); the
  shape predictor finds the 5 landmarks inside it and dlib aligns its 150×150 chip from them.
- Gray images are repeated to RGB; images are converted to uint8 and [ASSUMP] bilinearly
  enlarged so their shorter side is at least ``MIN_SIDE`` px before landmarking.
- ``similarity``: mean cosine similarity of descriptors (original vs reconstruction);
  ``distance``: mean Euclidean distance; ``SRRA``: share of pairs with distance < 0.6, dlib's
  standard same-person threshold.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.errors import ConfigError

INSTALL_HINT = "pip install 'faceprivbench[dlib]'"
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_THRESHOLD = 0.6  # dlib's standard same-person Euclidean distance
MIN_SIDE = 150  # dlib's face chip size


def model_paths() -> tuple[Path, Path]:
    """Paths of the shape predictor and recognition model; ConfigError if the extra is absent."""
    if importlib.util.find_spec("dlib") is None:
        raise ConfigError(f"the dlib evaluator needs the dlib extra: {INSTALL_HINT}")
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"the dlib evaluator needs face_recognition_models: {INSTALL_HINT}")
    models = Path(locations[0]) / "models"
    paths = (models / SHAPE_PREDICTOR, models / RECOGNITION_MODEL)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"face_recognition_models at {models} lacks {', '.join(missing)}; "
                          f"reinstall it: {INSTALL_HINT}")
    return paths


def require_dlib() -> None:
    """Fail early (one clear line) when ``--evaluator dlib`` is asked for without the extra."""
    model_paths()


@functools.lru_cache(maxsize=1)
def _models() -> tuple[Any, Any]:
    shape_path, rec_path = model_paths()
    import dlib

    return dlib.shape_predictor(str(shape_path)), dlib.face_recognition_model_v1(str(rec_path))


def to_uint8_rgb(images: Tensor) -> list[np.ndarray]:
    """``[N, 1|3, H, W]`` in [0, 1] → list of contiguous ``H×W×3`` uint8 arrays."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    side = min(x.shape[-2:])
    if side < MIN_SIDE:
        x = F.interpolate(x, scale_factor=MIN_SIDE / side, mode="bilinear", align_corners=False)
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [np.ascontiguousarray(a) for a in arr]


def descriptors(images: Tensor) -> np.ndarray:
    """dlib 128-D face descriptors ``[N, 128]``, the whole image as the face box."""
    predictor, model = _models()
    import dlib

    out = []
    for img in to_uint8_rgb(images):
        box = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        shape = predictor(img, box)
        out.append(np.asarray(model.compute_face_descriptor(img, shape, 0), dtype=np.float64))
    return np.stack(out) if out else np.zeros((0, 128))


@functools.lru_cache(maxsize=8)
def _cached_descriptors(digest: str, images: "_Frozen") -> np.ndarray:
    return descriptors(images.tensor)


class _Frozen:
    """A tensor wrapper hashed by content digest, so the originals' descriptors (the same in
    every cell of a dataset) are computed once per process."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.digest = hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and other.digest == self.digest


def independent_scores(originals: Tensor, reconstructions: Tensor) -> dict[str, float]:
    """dlib identity similarity and SRRA between each original and its reconstruction."""
    if originals.shape[0] != reconstructions.shape[0]:
        raise ValueError(f"need as many reconstructions as originals, got "
                         f"{reconstructions.shape[0]} and {originals.shape[0]}")
    if originals.shape[0] == 0:
        return {"similarity": float("nan"), "distance": float("nan"), "SRRA": float("nan")}
    frozen = _Frozen(originals)
    a, b = _cached_descriptors(frozen.digest, frozen), descriptors(reconstructions)
    dist = np.linalg.norm(a - b, axis=1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"similarity": float(cos.mean()), "distance": float(dist.mean()),
            "SRRA": float((dist < DLIB_THRESHOLD).mean())}
