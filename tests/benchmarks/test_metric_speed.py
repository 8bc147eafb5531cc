"""Per-image SSIM and PSNR against scikit-image called directly, as ratios in one run.

What is measured: :func:`metrics.image.ssim` and :func:`metrics.image.psnr` on 64 pairs of gray
64×64 faces (``[64, 1, 64, 64]`` float32 tensors: random images and a noisy copy of each),
against a loop over the same pairs calling ``skimage.metrics.structural_similarity(
data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` and
``peak_signal_noise_ratio(data_range=1)`` per image, on the float64 arrays the harness computes
in (converted once, outside the timed loop: the conversion is part of what the harness's side
must pay for). The tests first assert agreement (SSIM to 1e-4, PSNR to 1e-3 dB), then harness
time ≤ bound × reference time (:mod:`ratio`: blocks of equal length, ABBA-alternated, medians,
a round over the bound measured again). One intra-op torch thread (scikit-image is
single-threaded).

Measured on the 2-core CI-class machine:

- SSIM ours/skimage 1.00–1.05 quiet (~18 ms per 64 pairs on both sides: the harness calls the
  same skimage function per image and adds the tensor → float64 conversion and the loop);
  single rounds up to 1.34 with two CPU-bound processes beside it, the best round ≤ 1.17.
  ``SSIM_BOUND`` = 1.2: a symmetric SSIM (two skimage calls per pair, 2.0) and two extra
  Gaussian filters per pair (+30 %, 1.33) fail; one extra filter (+15 %, 1.18) passes.
- PSNR ours/skimage 0.32–0.39 quiet (one vectorised float64 reduction, ~0.22 ms, against
  ~0.62 ms of 64 skimage calls), up to 0.47 in the best round under load. ``PSNR_BOUND`` = 0.6
  (≈ 1.5 × the worst): one extra pass over the pair (0.70), three passes (1.07) and a
  per-image loop (2.0) fail. The figure depends on glibc's allocator state (the temporaries are
  2 MiB each): :func:`ratio.settle_allocator` fixes it, without which the same call measured
  2.3–4.0 in some sessions.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics.image import psnr, ssim
from ratio import assert_within, injected, measure_ratio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, SIDE = 64, 64
SSIM_BOUND = 1.2
PSNR_BOUND = 0.6


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(N, 1, SIDE, SIDE, generator=gen)
    # a noisy copy, noise level per image, so SSIM and PSNR vary over the batch
    level = torch.linspace(0.02, 0.3, N).view(N, 1, 1, 1)
    b = (a + level * torch.randn(N, 1, SIDE, SIDE, generator=gen)).clamp(0, 1)
    return a, b


A, B = _pairs()
A64, B64 = A.double().numpy()[:, 0], B.double().numpy()[:, 0]  # [N, H, W] float64


def skimage_ssim() -> np.ndarray:
    return np.array([structural_similarity(x, y, data_range=1, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)
                     for x, y in zip(A64, B64)])


def skimage_psnr() -> np.ndarray:
    return np.array([peak_signal_noise_ratio(x, y, data_range=1) for x, y in zip(A64, B64)])


def test_ssim_and_psnr_agree_with_scikit_image():
    ours_ssim, ours_psnr = ssim(A, B).numpy(), psnr(A, B).numpy()
    ref_ssim, ref_psnr = skimage_ssim(), skimage_psnr()
    assert ours_ssim.shape == ours_psnr.shape == (N,)
    assert np.ptp(ref_ssim) > 0.1 and np.ptp(ref_psnr) > 5  # the pairs are not all alike
    np.testing.assert_allclose(ours_ssim, ref_ssim, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours_psnr, ref_psnr, rtol=0, atol=1e-3)


def test_ssim_is_within_bound_of_scikit_image(monkeypatch):
    if injected("ssim"):  # hog_check.py: a symmetric SSIM, two skimage calls per pair
        import metrics.image

        def symmetric(x, y, **kw):
            return 0.5 * (structural_similarity(x, y, **kw) + structural_similarity(y, x, **kw))

        monkeypatch.setattr(metrics.image, "structural_similarity", symmetric)
    name = f"SSIM per image ({N} gray {SIDE}x{SIDE}) ours/skimage"
    m = measure_ratio(name, lambda: ssim(A, B), skimage_ssim, SSIM_BOUND)
    assert_within(name, m, SSIM_BOUND)


def test_psnr_is_within_bound_of_scikit_image(monkeypatch):
    if injected("psnr"):  # hog_check.py: the MSE image by image instead of one reduction
        import metrics.image

        mse = metrics.image.mse
        monkeypatch.setattr(metrics.image, "mse", lambda a, b: torch.cat(
            [mse(a[i:i + 1], b[i:i + 1]) for i in range(len(a))]))
    name = f"PSNR per image ({N} gray {SIDE}x{SIDE}) ours/skimage"
    m = measure_ratio(name, lambda: psnr(A, B), skimage_psnr, PSNR_BOUND)
    assert_within(name, m, PSNR_BOUND)
