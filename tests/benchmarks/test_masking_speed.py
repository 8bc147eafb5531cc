"""PPFR-FD masking against a vectorised ``scipy.fft.dctn`` reference, as a ratio in one run.

What is measured: :meth:`PpfrFd.encode` with ``upsample=False`` (the masking arithmetic on the
8×8 coefficient maps: gray BDCT, drop DC, permute, self-normalise, adjacent-sum mixing, permute,
self-normalise) on a batch of 128 gray 64×64 faces, against :func:`reference_masking`: the same
steps in numpy on the same batch, its BDCT one ``scipy.fft.dctn`` over every 8×8 block. Both use
the defense's fixed-key permutations (``perm_mode="fixed_key"``, read from its masker), so the
test first asserts that the two agree (to 1e-4), then that ours takes ≤ ``BOUND`` × the
reference's time (:mod:`ratio`: blocks of equal length, ABBA-alternated, medians, a round over
the bound measured again). One intra-op torch thread: numpy and scipy.fft are single-threaded
here, and two torch threads stall on a busy 2-core machine (measured: encode 6.8 ms quiet,
~100 ms while another process kept both cores busy).

Measured on the 2-core CI-class machine (other engineers' test runs beside it, load average
3–17): ours/reference 0.62–0.82 (≈ 3.9 ms vs 5.4 ms per 128 faces when the machine was calm);
beside two CPU-bound processes 0.69. Ours was 2.2–2.3× the reference until
:func:`defenses.ppfr_fd.self_normalise` replaced ``torch.std_mean`` (3.8 ms per call on one
thread) by two means (0.3 ms) and the masker selected and permuted the channels in one copy.
``BOUND`` = 0.95 (the worst ratio seen × ~1.15): ours must stay faster than numpy; the old
``std_mean`` self-normalisation, injected by ``hog_check.py`` (``BENCH_GATE_REGRESSION=masking``),
measured 1.75 and fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from defenses.ppfr_fd import PpfrFd
from ratio import assert_within, injected, measure_ratio

BATCH = torch.rand(128, 1, 64, 64, generator=torch.Generator().manual_seed(0))
EPS = 1e-5  # defenses.ppfr_fd.self_normalise's
BOUND = 0.95

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _self_normalise(c: np.ndarray) -> np.ndarray:
    """Per sample and channel, over space: (c − mean) / (std + eps), population std."""
    return (c - c.mean(axis=(2, 3), keepdims=True)) / (c.std(axis=(2, 3), keepdims=True) + EPS)


def reference_masking(a: np.ndarray, perm1: np.ndarray, perm2: np.ndarray) -> np.ndarray:
    """PPFR-FD masking of gray images ``a [B, 1, H, W]`` with fixed permutations, in numpy:
    vectorised BDCT (one ``dctn`` over every 8×8 block) → ``[B, 64, H/8, W/8]``, drop DC,
    permute, self-normalise, adjacent-sum mixing (channel j + channel j+1 mod n), permute,
    self-normalise."""
    b, _, h, w = a.shape
    blocks = a.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
    coeff = scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    c = coeff.reshape(b, h // 8, w // 8, 64).transpose(0, 3, 1, 2)[:, 1:]  # drop DC (channel 0)
    c = _self_normalise(c[:, perm1])
    c = c + np.roll(c, -1, axis=1)
    return _self_normalise(c[:, perm2])


@pytest.fixture(scope="module")
def masking():
    defense = PpfrFd(upsample=False, perm_mode="fixed_key")
    assert defense.masker.channels == list(range(1, 64))  # every AC channel, in BDCT order
    perm1, perm2 = (p.numpy() for p in defense.masker._key_perms)
    return defense, perm1, perm2


def test_masking_agrees_with_the_scipy_reference(masking):
    defense, perm1, perm2 = masking
    ours = defense.encode(BATCH, torch.Generator().manual_seed(0)).numpy()
    ref = reference_masking(BATCH.numpy(), perm1, perm2)
    assert ours.shape == ref.shape == (128, 63, 8, 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def _std_mean_self_normalise(c: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The self-normalisation PPFR-FD used before (``torch.std_mean`` over the two trailing
    dims, ~14× slower than two means on one thread): ``hog_check.py``'s injected regression."""
    std, mean = torch.std_mean(c, dim=(2, 3), keepdim=True, correction=0)
    return (c - mean) / (std + eps)


def test_masking_is_within_bound_of_the_scipy_reference(masking, monkeypatch):
    defense, perm1, perm2 = masking
    if injected("masking"):
        monkeypatch.setattr("defenses.ppfr_fd.self_normalise", _std_mean_self_normalise)
    x, a, gen = BATCH, BATCH.numpy(), torch.Generator().manual_seed(0)
    name = "PPFR-FD masking ours/scipy-reference"
    m = measure_ratio(name, lambda: defense.encode(x, gen), lambda: reference_masking(a, perm1, perm2),
                      BOUND)
    assert_within(name, m, BOUND)
