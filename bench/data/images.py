"""Decode one face image file (or in-memory bytes) into a ``[C, size, size]`` float tensor.

Every loader goes through here so all datasets share one preprocessing: grayscale or RGB,
centre crop to a square (faces are centred in aligned datasets; squaring keeps the aspect ratio
instead of stretching), bilinear resize with antialiasing, values in [0, 1].
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bench.core.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")

# What PIL raises on broken input: UnidentifiedImageError is an OSError, truncated data raises
# OSError, some format plugins raise SyntaxError/ValueError/EOFError on a bad header.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _to_uint8(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Gray/RGB, centre square crop, antialiased bilinear resize → uint8 ``[C, size, size]``."""
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        # Pillow's resize filters scale their support when shrinking, i.e. they antialias.
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.array(arr.transpose(2, 0, 1), order="C")  # a writable copy (PIL buffers are read-only)


def _to_tensor(img: Image.Image, size: int, channels: int) -> Tensor:
    # Convert in numpy: torch's parallel elementwise kernels cost ~10 ms per small image here.
    chw = _to_uint8(img, size, channels).astype(np.float32)
    chw /= np.float32(255.0)
    return torch.from_numpy(chw)


def _open_decoded(source: str | Path | io.BytesIO, what: str) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()  # PIL opens lazily; force the decode here so errors surface now
        return img
    except FileNotFoundError:
        raise DatasetError(f"image {what} does not exist") from None
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"image {what} is unreadable ({_one_line(exc)}); remove or replace it") from None


def load_image(path: str | Path, size: int, channels: int) -> Tensor:
    """Read an image file (PGM/JPEG/PNG/BMP) → float32 ``[C, size, size]`` in [0, 1]."""
    with _open_decoded(str(path), str(path)) as img:
        return _to_tensor(img, size, channels)


def load_image_uint8(path: str | Path, size: int, channels: int) -> Tensor:
    """Read an image file → uint8 ``[C, size, size]`` (what streamed training sets carry)."""
    with _open_decoded(str(path), str(path)) as img:
        return torch.from_numpy(_to_uint8(img, size, channels))


def decode_image_bytes_uint8(data: bytes, size: int, channels: int, what: str) -> Tensor:
    """Encoded image bytes → uint8 ``[C, size, size]``; ``what`` names the image in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DatasetError(f"image {what} is unreadable (expected encoded bytes, got {type(data).__name__})")
    with _open_decoded(io.BytesIO(bytes(data)), what) as img:
        return torch.from_numpy(_to_uint8(img, size, channels))


def decode_image_bytes(data: bytes, size: int, channels: int, what: str) -> Tensor:
    """Decode encoded image bytes (e.g. a JPEG inside a ``.bin`` file); ``what`` names it in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DatasetError(f"image {what} is unreadable (expected encoded bytes, got {type(data).__name__})")
    with _open_decoded(io.BytesIO(bytes(data)), what) as img:
        return _to_tensor(img, size, channels)


def load_images(paths: list[Path], size: int, channels: int) -> Tensor:
    """Many files → ``[N, C, size, size]``, decoded on a few threads (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return torch.empty(0, channels, size, size)
    if len(paths) < 64:
        return torch.stack([load_image(p, size, channels) for p in paths])
    with ThreadPoolExecutor(max_workers=8) as pool:
        return torch.stack(list(pool.map(lambda p: load_image(p, size, channels), paths)))
