"""BDCT and PPFR-FD masking throughput, side by side with a vectorised ``scipy.fft.dctn`` BDCT.

Run with ``python -m pytest tests/benchmarks --benchmark-enable``. The last test compares the
medians measured here: our BDCT must not be slower than the scipy implementation of the same
transform (10 % allowance for timer noise). With benchmarks disabled (the default test run) each
function runs once as a smoke test and the comparison is skipped.
"""
import numpy as np
import pytest
import scipy.fft
import torch

from defenses.bdct import bdct
from defenses.ppfr_fd import PpfrFd

BATCH = torch.rand(512, 1, 64, 64, generator=torch.Generator().manual_seed(0))
MEDIANS: dict[str, float] = {}


def scipy_bdct(x: torch.Tensor) -> torch.Tensor:
    """The same transform with scipy: blocks → dctn over the last two axes → [B, 64, h, w]."""
    a = x.numpy()
    b, _, h, w = a.shape
    blocks = a.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
    coeff = scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    return torch.from_numpy(np.ascontiguousarray(coeff.reshape(b, h // 8, w // 8, 64).transpose(0, 3, 1, 2)))


def _record(name, benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not benchmark.disabled:
        MEDIANS[name] = stats.stats.median


@pytest.mark.benchmark(group="bdct-512x64x64")
def test_bdct_ours(benchmark):
    torch.set_num_threads(2)
    out = benchmark(bdct, BATCH)
    assert out.shape == (512, 64, 8, 8)
    _record("ours", benchmark)


@pytest.mark.benchmark(group="bdct-512x64x64")
def test_bdct_scipy(benchmark):
    out = benchmark(scipy_bdct, BATCH)
    assert torch.allclose(out, bdct(BATCH), atol=1e-5)
    _record("scipy", benchmark)


@pytest.mark.benchmark(group="ppfr_fd-512x64x64")
def test_ppfr_fd_masking(benchmark):
    # the masking arithmetic on 8×8 maps; ×8 upsampling (the default) would only add an interpolate
    defense, gen = PpfrFd(upsample=False), torch.Generator().manual_seed(0)
    out = benchmark(defense.encode, BATCH, gen)
    assert out.shape == (512, 63, 8, 8)


def test_ours_is_not_slower_than_scipy():
    if {"ours", "scipy"} - MEDIANS.keys():
        pytest.skip("benchmarks disabled; run with --benchmark-enable")
    assert MEDIANS["ours"] <= 1.10 * MEDIANS["scipy"], MEDIANS
