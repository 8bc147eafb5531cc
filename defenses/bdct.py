"""Block DCT (ALGORITHMS §0.1): gray image → 8×8 blocks → orthonormal 2-D DCT-II per block.

Output ``[B, 64, H/8, W/8]`` with channel ``8·u + v`` (row-major inside the block); channel 0 is DC.
``pixel_unshuffle`` lays each block's 64 pixels out as channels ``8·y + x``; one GEMM with the
Kronecker matrix ``D ⊗ D`` then gives coefficient ``8·u + v`` of every block at once — exactly
``scipy.fft.dctn(block, norm='ortho')`` — with no per-block loop and no transpose copy.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 8
DC_CHANNEL = 0
# BT.601 luma, as in JPEG's YCbCr
_LUMA = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int = BLOCK, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` with ``D[u, x] = a(u)·cos((2x+1)uπ / 2n)``."""
    u = torch.arange(n, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos((2 * x + 1) * u * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


@functools.lru_cache(maxsize=None)
def kron_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """``D ⊗ D``: maps a block's pixels (row-major) to its coefficients ``8·u + v``."""
    d = dct_matrix(BLOCK)
    return torch.kron(d, d).to(dtype=dtype, device=device)


def to_gray(x: Tensor) -> Tensor:
    """``[B, 1|3, H, W]`` → ``[B, 1, H, W]`` (Y of YCbCr for RGB)."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 image channels, got {x.shape[1]}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def to_ycbcr(x: Tensor) -> Tensor:
    """RGB ``[B, 3, H, W]`` in [0, 1] → YCbCr (JPEG/BT.601 full range, in [0, 1])."""
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr], 1)


def _block_dct(x: Tensor) -> Tensor:
    b, _, h, w = x.shape
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"image size {h}x{w} is not a multiple of {BLOCK}")
    pixels = F.pixel_unshuffle(x, BLOCK).reshape(b, BLOCK * BLOCK, -1)  # [B, 8y+x, blocks]
    return (kron_matrix(x.dtype, x.device) @ pixels).view(b, BLOCK * BLOCK, h // BLOCK, w // BLOCK)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=BLOCK, mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=None)
def upsampled_zero_channels() -> tuple[int, ...]:
    """The coefficients that vanish for EVERY ×8 bilinear-upsampled image: each 8×8 block of the
    upsampled image is a bilinear patch whose kink sits at the block centre, which the
    u = 4 / v = 4 cosines (and their odd partners) cancel exactly. Found once, in float64, on
    random images (borders included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 24, 24, generator=g, dtype=torch.float64)
    peak = _block_dct(_upsample(x)).abs().amax(dim=(0, 2, 3))
    return tuple(int(i) for i in torch.nonzero(peak < 1e-9).flatten())


def bdct(x: Tensor, upsample: bool = False) -> Tensor:
    """Single-channel images ``[B, 1, H, W]`` → coefficients ``[B, 64, H/8, W/8]``.

    ``upsample`` first enlarges the image ×8 (bilinear, the TFace convention), giving
    ``[B, 64, H, W]``; the channels that are identically zero for such images
    (:func:`upsampled_zero_channels`) are set to exact zeros, because float32 leaves ~1e-8 of
    rounding noise there that PPFR-FD's self-normalisation would blow up to unit variance.
    H and W must be multiples of 8.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"bdct expects [B, 1, H, W], got {tuple(x.shape)}")
    if not upsample:
        return _block_dct(x)
    c = _block_dct(_upsample(x))
    c[:, list(upsampled_zero_channels())] = 0.0
    return c


def ibdct(c: Tensor) -> Tensor:
    """Inverse of :func:`bdct` (without the upsampling): ``[B, 64, h, w]`` → ``[B, 1, 8h, 8w]``."""
    b, ch, h, w = c.shape
    if ch != BLOCK * BLOCK:
        raise ValueError(f"ibdct expects 64 channels, got {ch}")
    pixels = kron_matrix(c.dtype, c.device).T @ c.reshape(b, ch, h * w)
    return F.pixel_shuffle(pixels.view(b, ch, h, w), BLOCK)


def bdct_image(x: Tensor, upsample: bool = False) -> Tensor:
    """Any image ``[B, 1|3, H, W]`` → gray BDCT ``[B, 64, ·, ·]``."""
    return bdct(to_gray(x), upsample=upsample)


def masked_view(r: Tensor, removed: tuple[int, ...] = (DC_CHANNEL,), upsampled: bool = False) -> Tensor:
    """Image-domain view of a masked frequency map (ALGORITHMS §0.1).

    Removed channels are zero-filled, the remaining channels go back into the other slots in their
    current order, then inverse BDCT and a per-image min-max to [0, 1]. Maps of an ×8-upsampled
    image (``upsampled``) invert to 8× the image side and are shrunk back with antialiasing
    (plain bilinear sampling of an 8× image would alias the block edges into the view).
    """
    b, c, h, w = r.shape
    keep = [i for i in range(BLOCK * BLOCK) if i not in removed][:c]
    full = r.new_zeros(b, BLOCK * BLOCK, h, w)
    full[:, keep] = r[:, : len(keep)]
    img = ibdct(full)
    if upsampled:
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    lo = img.amin(dim=(1, 2, 3), keepdim=True)
    hi = img.amax(dim=(1, 2, 3), keepdim=True)
    return (img - lo) / (hi - lo).clamp_min(1e-8)
