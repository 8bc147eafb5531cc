"""Image-similarity metrics: MSE, PSNR, SSIM, LPIPS (ALGORITHMS §8).

Images are ``torch`` tensors ``[N, C, H, W]`` with pixels in ``[0, 1]``; every function returns one
value per image (``Tensor[N]``) so callers can average, bootstrap or report per-image numbers.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from bench.core.errors import ConfigError

__all__ = [
    "mse",
    "psnr",
    "ssim",
    "Lpips",
    "default_alexnet_path",
    "alexnet_to_lpips_state",
    "perceptual_distance",
    "PSNR_MSE_FLOOR",
    "ALEXNET_FILENAME",
]

#: MSE floor for PSNR: identical images give 10·log10(1/1e-10) = 100 dB instead of +inf, so means
#: over a test set stay finite.
PSNR_MSE_FLOOR = 1e-10

#: File name torchvision gives the ImageNet AlexNet weights in the hub cache.
ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"

# lpips.pretrained_networks.alexnet splits torchvision's ``alexnet().features`` into five slices
# and keeps each layer's original index as its module name: slice1 = 0..1, slice2 = 2..4,
# slice3 = 5..7, slice4 = 8..9, slice5 = 10..11. Only the convs (0, 3, 6, 8, 10) carry weights.
_ALEX_SLICES = ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12)))
_ALEX_SLICE_OF = {i: s for s, idx in _ALEX_SLICES for i in idx}

# AlexNet in lpips cannot run on inputs below 31 px (the last max-pool collapses to 0×0).
_LPIPS_MIN_SIDE = 32
_LPIPS_UPSAMPLE_TO = 64


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(a.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over C·H·W, pixels in [0, 1] (ALGORITHMS §8 MSE)."""
    _check_pair(a, b)
    # float64 so tiny errors on identical-looking images do not vanish in float32 rounding.
    d = a.detach().double() - b.detach().double()
    return d.pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR ``10·log10(1/MSE)`` in dB, MSE floored at 1e-10 (ALGORITHMS §8 PSNR).

    Data range is 1, so the numerator is 1; identical images give 100 dB, not +inf.
    """
    return 10.0 * torch.log10(1.0 / mse(a, b).clamp_min(PSNR_MSE_FLOOR))


def _ssim_win_size(h: int, w: int) -> int | None:
    """Window side for skimage: its default (11 for σ=1.5) unless the image is smaller.

    With ``gaussian_weights=True`` skimage filters with the Gaussian itself (reflect padding);
    ``win_size`` only sets the border that is cropped before averaging and a size check. For
    images smaller than 11 px we therefore pass the largest odd side that fits, so tiny images
    get an SSIM (computed over a smaller interior) instead of a ValueError.
    """
    side = min(h, w)
    if side >= 11:
        return None
    return side if side % 2 == 1 else side - 1


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (ALGORITHMS §8): Gaussian window σ 1.5 (11 taps), K=(0.01, 0.03), range 1.

    Calls ``skimage.metrics.structural_similarity`` per image with
    ``use_sample_covariance=False`` (Wang et al. 2004); RGB images use ``channel_axis`` (mean of
    per-channel SSIM). Returns float64 ``Tensor[N]``.
    """
    _check_pair(a, b)
    x = a.detach().cpu().double().numpy()
    y = b.detach().cpu().double().numpy()
    n, c, h, w = x.shape
    win = _ssim_win_size(h, w)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        if c == 1:
            xi, yi, kw = x[i, 0], y[i, 0], {}
        else:
            xi, yi, kw = np.moveaxis(x[i], 0, -1), np.moveaxis(y[i], 0, -1), {"channel_axis": -1}
        out[i] = structural_similarity(
            xi,
            yi,
            win_size=win,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
            data_range=1.0,
            **kw,
        )
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------


def default_alexnet_path() -> str:
    """Where torchvision caches the AlexNet weights: ``torch.hub.get_dir()/checkpoints/…``.

    ``torch.hub.get_dir()`` honours ``$TORCH_HOME`` (→ ``$TORCH_HOME/hub``).
    """
    return os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILENAME)


def alexnet_to_lpips_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision AlexNet state_dict (``features.{i}.weight``…) onto lpips' ``net.slice*``.

    Accepts the keys with an optional ``module.`` prefix (DataParallel checkpoints); classifier
    keys are ignored. Raises ``ValueError`` when a conv layer is missing.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if not k.startswith("features."):
            continue
        _, idx, param = k.split(".", 2)
        i = int(idx)
        if i not in _ALEX_SLICE_OF:
            raise ValueError(f"unexpected AlexNet layer index {i} in key {key!r}")
        out[f"net.slice{_ALEX_SLICE_OF[i]}.{i}.{param}"] = value
    expected = {f"net.slice{_ALEX_SLICE_OF[i]}.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    missing = expected - out.keys()
    if missing:
        raise ValueError(f"not a torchvision AlexNet state_dict; missing {sorted(missing)}")
    return out


@dataclass
class Lpips:
    """LPIPS distance with the AlexNet backbone (``net='alex'``, ``version='0.1'``; ALGORITHMS §8).

    Build with :meth:`load`. When the backbone weights are absent, ``available`` is False and
    ``reason`` says why: calling it then raises instead of computing with a random backbone.
    """

    model: Any = field(default=None, repr=False)
    available: bool = False
    reason: str = ""
    weights_path: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64

    @classmethod
    def load(
        cls,
        weights_path: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> "Lpips":
        """Load LPIPS with AlexNet weights from ``weights_path`` or the torch hub cache.

        Nothing is downloaded: ``pnet_rand=True`` keeps lpips from fetching torchvision weights,
        the linear calibration layers ship inside the lpips package, and the backbone comes from
        a local file. A missing file gives an unavailable metric; a file that is present but is
        not an AlexNet state_dict raises :class:`ConfigError`.
        """
        path = weights_path or default_alexnet_path()
        if not os.path.isfile(path):
            return cls(
                available=False,
                reason=(
                    f"AlexNet weights not found at {path}; "
                    "pass --set metrics.lpips_weights=PATH"
                ),
                weights_path=path,
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            mapped = alexnet_to_lpips_state(state)
        except Exception as e:  # unreadable pickle, wrong model, …: a user-supplied file
            raise ConfigError(
                f"cannot use {path} as AlexNet weights for LPIPS ({e}); "
                "pass a torchvision alexnet state_dict with --set metrics.lpips_weights=PATH"
            ) from e

        import lpips  # imported lazily: it pulls torchvision and prints on import otherwise

        with warnings.catch_warnings():
            # lpips calls tv.alexnet(pretrained=False), which torchvision flags as deprecated.
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        # strict=False because the state holds only the backbone; check ourselves that every
        # backbone tensor was taken, so a random backbone can never slip through.
        res = model.load_state_dict(mapped, strict=False)
        if res.unexpected_keys or any(k.startswith("net.") for k in res.missing_keys):
            raise ConfigError(f"AlexNet weights in {path} do not fit lpips' backbone: {res}")
        model.eval().requires_grad_(False)
        dev = torch.device(device)
        return cls(model=model.to(dev), available=True, reason="", weights_path=path,
                   device=dev, batch_size=batch_size)

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS, ``Tensor[N]`` (float32, on CPU).

        Gray images are repeated to 3 channels and pixels scaled to [−1, 1]. Images with a side
        below 32 px are upsampled bilinearly to 64 px first `[ASSUMP]`: AlexNet's pooling leaves
        nothing to compare on smaller inputs.
        """
        if not self.available:
            raise RuntimeError(f"LPIPS unavailable: {self.reason}")
        _check_pair(a, b)
        if a.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs 1 or 3 channels, got {a.shape[1]}")
        outs = []
        for s in range(0, a.shape[0], self.batch_size):
            x, y = (self._prep(t[s:s + self.batch_size]) for t in (a, b))
            outs.append(self.model(x, y).flatten().float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    def _prep(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(self.device, torch.float32)
        if t.shape[1] == 1:
            t = t.repeat(1, 3, 1, 1)
        if min(t.shape[-2:]) < _LPIPS_MIN_SIDE:
            h, w = t.shape[-2:]
            scale = _LPIPS_UPSAMPLE_TO / min(h, w)
            t = F.interpolate(t, size=(round(h * scale), round(w * scale)), mode="bilinear",
                              align_corners=False)
        return t * 2.0 - 1.0


def perceptual_distance(
    a: torch.Tensor, b: torch.Tensor, lpips: Lpips | None
) -> tuple[torch.Tensor, str]:
    """Perceptual distance for S1/S3 (ALGORITHMS §8): LPIPS when available, else ``1 − SSIM``.

    Returns the per-image distances and the name of the metric used (``"lpips"`` or
    ``"dssim (LPIPS unavailable)"``) so reports never label a substitute as LPIPS.
    """
    if lpips is not None and lpips.available:
        return lpips(a, b), "lpips"
    return (1.0 - ssim(a, b)).float(), "dssim (LPIPS unavailable)"
