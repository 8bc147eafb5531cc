import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.bdct import bdct, bdct_image, ibdct, masked_view, to_gray


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_bdct_equals_scipy_dctn_per_block(b, hb, wb, seed):
    x = torch.rand(b, 1, 8 * hb, 8 * wb, generator=torch.Generator().manual_seed(seed))
    c = bdct(x)
    assert c.shape == (b, 64, hb, wb)
    for i in range(b):
        for r in range(hb):
            for s in range(wb):
                block = x[i, 0, 8 * r : 8 * r + 8, 8 * s : 8 * s + 8].numpy()
                ref = scipy.fft.dctn(block, norm="ortho").reshape(-1)  # channel 8u+v, row-major
                np.testing.assert_allclose(c[i, :, r, s].numpy(), ref, atol=2e-6)


def test_inverse_round_trips():
    x = torch.rand(3, 1, 32, 24)
    assert (ibdct(bdct(x)) - x).abs().max() < 1e-5


def test_dc_channel_is_block_mean_times_8():
    x = torch.rand(1, 1, 8, 8)
    assert torch.allclose(bdct(x)[0, 0, 0, 0], x.mean() * 8, atol=1e-5)


def test_upsample_gives_full_resolution_maps():
    assert bdct(torch.rand(2, 1, 16, 16), upsample=True).shape == (2, 64, 16, 16)


def test_gray_conversion_uses_bt601_luma():
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[:, 1] = 1.0
    assert torch.allclose(to_gray(rgb), torch.full((1, 1, 8, 8), 0.587))
    assert bdct_image(rgb).shape == (1, 64, 1, 1)


def test_masked_view_of_ac_channels_restores_image_up_to_dc_and_scale():
    x = torch.rand(2, 1, 16, 16)
    c = bdct(x)
    view = masked_view(c[:, 1:])  # DC removed, channels in their own slots
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
    no_dc = ibdct(torch.cat([torch.zeros_like(c[:, :1]), c[:, 1:]], 1))
    lo, hi = no_dc.amin(dim=(1, 2, 3), keepdim=True), no_dc.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(view, (no_dc - lo) / (hi - lo), atol=1e-5)


def test_rejects_sizes_that_are_not_multiples_of_8():
    with pytest.raises(ValueError):
        bdct(torch.rand(1, 1, 10, 16))
