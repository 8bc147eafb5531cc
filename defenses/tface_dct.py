"""The frequency front end PartialFace, MinusFace and DCTDP share (ALGORITHMS §13, §0.1)
[CODE Tencent/TFace:recognition/tasks/partialface/utils.py ``dct_transform`` / ``idct_transform``;
recognition/tasks/dctdp/utils.py ``images_to_batch``].

Forward (:func:`front_end`): RGB in [0, 1] (TFace's ``x·0.5 + 0.5`` of its [−1, 1] inputs) →
×8 bilinear upsampling with ``align_corners=True`` → ×255 → YCbCr (JPEG/BT.601 full range, chroma
offset 128, as torchjpeg's ``to_ycbcr``) → −128 on every plane → orthonormal 8×8 BDCT per plane
(:func:`defenses.bdct.bdct`, channel ``8u + v``) → ``[B, 3, 64, h, w]`` with ``h, w`` the image
side. Gray faces (``data.channels = 1``) are three equal colours [ASSUMP, as DuetFace's
``gray_mode='replicate'``]: the luma plane carries the face and both centred chroma planes are
exactly zero (all 128 of their coefficients), so every shape of §13 (192 / 189 / 27 channels) is
kept.

Inverse (:func:`inverse_front_end`): +128, YCbCr → RGB, /255, ×1/8 bilinear downsampling with
``align_corners=True``, clamp to [0, 1] — TFace's ``idct_transform``, which MinusFace uses to turn
a (permuted) residue into its image-shaped ``X_p``.

Also the small plumbing the four §13 defenses share: :func:`check_backbone` (their ``backbone``
options), :func:`encode_chunks` (leaks computed where the trained parts run) and
:class:`PlannedModel` (what :mod:`bench.plan` counts of the networks they train).

Lives beside :mod:`defenses.bdct` rather than in it: the stored stages of every defense that
imports ``bdct`` (PPFR-FD, DuetFace, the mixups) are keyed by its source (:mod:`bench.fingerprint`),
and the §13 front end differs from theirs (``align_corners=True``, 255-scale coefficients).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.errors import ConfigError
from bench.data.facedata import FaceSource
from defenses.bdct import BLOCK, bdct, ibdct

N_FREQ = BLOCK * BLOCK  # 64 coefficients per colour plane
COLOURS = 3
STATS_MAX_IMAGES = 20_000  # per-channel statistics settle long before; bounds memory on big sets

# JPEG YCbCr from RGB (rows Y, Cb, Cr), as torchjpeg's ``ycbcr_from_rgb``
_YCBCR = ((0.299, 0.587, 0.114),
          (-0.168735892, -0.331264108, 0.5),
          (0.5, -0.418687589, -0.081312411))
# after torchjpeg's +128 on chroma, TFace subtracts 128 from every plane: luma −128, chroma centred
_OFFSET = (-128.0, 0.0, 0.0)


def _colour_matrix(x: Tensor) -> Tensor:
    return torch.tensor(_YCBCR, dtype=x.dtype, device=x.device)


def as_rgb(x: Tensor) -> Tensor:
    """``[B, 1|3, H, W]`` → ``[B, 3, H, W]`` (gray replicated to three colours)."""
    if x.shape[1] == 1:
        return x.expand(-1, COLOURS, -1, -1)
    if x.shape[1] != COLOURS:
        raise ValueError(f"expected 1 or 3 image channels, got {x.shape[1]}")
    return x


def front_end(x: Tensor, upsample: bool = True) -> Tensor:
    """Images ``[B, 1|3, H, W]`` in [0, 1] → TFace coefficients ``[B, 3, 64, h, w]`` (module
    docstring); ``h, w = H, W`` with the ×8 upsampling (§0.1: on in every preset), ``H/8, W/8``
    without it."""
    if x.shape[1] == 1:
        # gray (R = G = B): luma is the pixel value and both centred chroma planes are exactly 0,
        # so they are zeros here, not float rounding (~1e-5) that per-channel standardisation
        # would blow up to unit variance
        planes = (F.interpolate(x, scale_factor=BLOCK, mode="bilinear", align_corners=True)
                  if upsample else x) * 255.0 + _OFFSET[0]
        b, _, h, w = planes.shape
        luma = bdct(planes)
        return torch.cat([luma[:, None], luma.new_zeros(b, COLOURS - 1, *luma.shape[1:])], 1)
    rgb = as_rgb(x)
    if upsample:
        rgb = F.interpolate(rgb, scale_factor=BLOCK, mode="bilinear", align_corners=True)
    planes = torch.einsum("vc,bchw->bvhw", _colour_matrix(rgb), rgb * 255.0)
    planes = planes + torch.tensor(_OFFSET, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    b, c, h, w = planes.shape
    coeff = bdct(planes.reshape(b * c, 1, h, w))
    return coeff.view(b, c, N_FREQ, *coeff.shape[-2:])


def inverse_front_end(coeff: Tensor, upsampled: bool = True, clamp: bool = True) -> Tensor:
    """TFace coefficients ``[B, 3, 64, h, w]`` (or ``[B, 192, h, w]``) → RGB ``[B, 3, ·, ·]``:
    inverse BDCT per plane, +128, YCbCr → RGB, /255, and for maps of an ×8-upsampled image the
    ×1/8 bilinear downsampling (``align_corners=True``, TFace's ``idct_transform``); clamped to
    [0, 1] when ``clamp`` (TFace clamps)."""
    b = coeff.shape[0]
    h, w = coeff.shape[-2:]
    planes = ibdct(coeff.reshape(b * COLOURS, N_FREQ, h, w)).view(b, COLOURS, h * BLOCK, w * BLOCK)
    planes = planes - torch.tensor(_OFFSET, dtype=planes.dtype, device=planes.device).view(1, 3, 1, 1)
    rgb = torch.einsum("vc,bchw->bvhw", torch.linalg.inv(_colour_matrix(planes)), planes) / 255.0
    if upsampled:
        rgb = F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=True)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def channel_stats(faces: FaceSource, encode: Callable[[Tensor], Tensor], batch: int = 256,
                  max_images: int = STATS_MAX_IMAGES) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std ``[1, C, 1, 1]`` of ``encode(images)`` (``[B, C, h, w]``) over
    the first ``max_images`` faces of ``faces`` (a FaceSet or a streamed set, read in chunks);
    constant channels (the chroma of gray faces; std ≤ 1e-3 in 255-scale coefficient units) get
    std 1."""
    first = torch.arange(min(len(faces), max_images))
    total = total_sq = None
    count = 0
    for idx in first.split(batch):
        c = encode(faces.take(idx)).double()
        s, sq = c.sum(dim=(0, 2, 3)), c.square().sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += c.shape[0] * c.shape[2] * c.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    # constant channels (gray chroma; rounding noise of 255-scale float32 is ~1e-5) keep std 1
    std = torch.where(std > 1e-3, std, torch.ones_like(std))
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def encode_chunks(encode: Callable[[Tensor], Tensor], images: Tensor, device: torch.device | str,
                  batch: int = 256) -> Tensor:
    """``encode`` over ``images`` in chunks moved to ``device`` (the trained parts live there);
    the result on the CPU, as a Leak holds it."""
    outs = [encode(chunk.to(device)).cpu() for chunk in images.split(batch)]
    return torch.cat(outs) if outs else images.new_zeros((0,))


def check_backbone(where: str, name: str) -> None:
    """A ``backbone`` option names a known recognizer backbone ("" = ``recognizer.backbone``);
    checked in ``Options.validate``, before anything trains."""
    if not name:
        return
    from bench.backbones import backbone_names
    from bench.backbones.timm_resnet import is_timm_model

    if name not in backbone_names() and not is_timm_model(name):
        raise ConfigError(f"{where} backbone {name!r} is unknown; use one of "
                          f"{', '.join(backbone_names())}, a timm ResNet name, or \"\" "
                          f"(recognizer.backbone)")


def epoch_images(n: int, batch_size: int, epochs: int) -> int:
    """Images the harness's recognizer loop processes in ``epochs`` over ``n`` faces (full
    batches only; it drops the ragged one)."""
    if n == 0:
        return 0
    size = min(batch_size, n)
    return max(1, n // size) * size * epochs


class PlannedModel(NamedTuple):
    """A network a defense trains or runs, as ``python -m bench run --dry-run`` counts it
    (``Defense.plan_models``, read by :mod:`bench.plan`)."""

    module: nn.Module
    input_shape: tuple[int, ...]  # per sample; () = not run by the FLOP counter (parameters only)
    images: float  # training images it processes (all epochs)
    passes: float = 3.0  # forward equivalents per processed image (3 = forward + backward)
    stage: str = "defense_recognizer"  # the store stage it belongs to: defense_fit | defense_recognizer
    trains: bool = True  # its parameters are trained there (counted among the stage's parameters)
    evaluated: float = 1.0  # forward passes per verification / leaked image (0 = not run there)
