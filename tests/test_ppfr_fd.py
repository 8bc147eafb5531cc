import math

import pytest
import torch
import torch.nn.functional as F

from bench.core.errors import ConfigError
from defenses.bdct import bdct, bdct_image, ibdct
from defenses.ppfr_fd import PpfrFd, PpfrMasker, PpfrOptions, permute_channels, self_normalise

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731

# The 8×8 BDCT of a ×8 bilinear-upsampled image has 15 AC channels that vanish for every image:
# each block is a bilinear patch with its kink at the block centre, orthogonal to the u = 4 and
# v = 4 cosines. Computed in float32 they would hold rounding noise (~1e-8) that self-
# normalisation (eps 1e-5) amplifies to unit variance, so bdct() zeroes them exactly; the tests
# below check the masking in float32 and in float64.
UPSAMPLED_ZERO_CHANNELS = [4, 12, 20, 28, 32, 33, 34, 35, 36, 37, 38, 39, 44, 52, 60]


@pytest.mark.parametrize("mix_mode", ["adjacent_sum", "random_pair_sum", "random_orthogonal"])
@pytest.mark.parametrize("perm_mode", ["per_sample", "fixed_key"])
@pytest.mark.parametrize("upsample,side,dtype", [(True, 32, torch.float64), (True, 32, torch.float32),
                                                 (False, 4, torch.float32)])
def test_output_shape_and_self_normalisation(mix_mode, perm_mode, upsample, side, dtype):
    d = PpfrFd(mix_mode=mix_mode, perm_mode=perm_mode, upsample=upsample)
    r = d.encode(torch.rand(4, 1, 32, 32, dtype=dtype), G())
    assert r.shape == (4, 63, side, side) and r.dtype == dtype
    assert torch.allclose(r.mean(dim=(2, 3)), torch.zeros(4, 63, dtype=dtype), atol=1e-4)
    std = r.std(dim=(2, 3), unbiased=False)
    unit = (std - 1).abs() < 1e-3
    if upsample:  # a channel built only from the identically-zero BDCT channels stays zero
        assert torch.all(unit | (std < 1e-3)) and unit.float().mean() > 0.8
    else:
        assert torch.all(unit)


@pytest.mark.parametrize("upsample,dtype", [(False, torch.float32), (True, torch.float64),
                                            (True, torch.float32)])
def test_dc_is_removed_so_brightness_shifts_do_not_change_the_mask(upsample, dtype):
    d = PpfrFd(perm_mode="fixed_key", upsample=upsample)
    x = torch.rand(2, 1, 32, 32, dtype=dtype) * 0.5
    # float32: the weakest AC channels (~1e-5) are normalised to unit variance, so rounding
    # shows at ~1e-2 (measured 8.5e-3); before the exact zeros the upsampled maps moved by ~7
    tol = 1e-3 if dtype == torch.float64 or not upsample else 2e-2
    assert torch.allclose(d.encode(x, G()), d.encode(x + 0.3, G()), atol=tol)


def test_upsampled_bdct_has_the_identically_zero_channels_the_tests_assume():
    c = bdct(torch.rand(4, 1, 16, 16, dtype=torch.float64), upsample=True)
    zero = (c.abs().amax(dim=(0, 2, 3)) < 1e-12).nonzero().flatten().tolist()
    assert zero == UPSAMPLED_ZERO_CHANNELS
    c32 = bdct(torch.rand(4, 1, 16, 16), upsample=True)  # float32: exact zeros, not rounding noise
    assert torch.all(c32[:, UPSAMPLED_ZERO_CHANNELS] == 0)
    assert (c32.abs().amax(dim=(0, 2, 3)) > 1e-6).sum() == 64 - len(UPSAMPLED_ZERO_CHANNELS)


# Regression: upsampled maps have 15 identically-zero channels whose float32 rounding noise
# self-normalisation used to amplify to unit variance (defenses/bdct.py now zeroes them exactly).
@pytest.mark.parametrize("mix_mode", ["adjacent_sum", "random_orthogonal"])
def test_float32_upsampled_masking_matches_float64(mix_mode):
    d = PpfrFd(perm_mode="fixed_key", mix_mode=mix_mode)
    x = torch.rand(2, 1, 32, 32, generator=G(3))
    r32, r64 = d.encode(x, G()), d.encode(x.double(), G())
    # float32 rounding after two normalisations stays below 1e-2 (measured 5e-3); the bug was O(1)
    assert torch.allclose(r32.double(), r64, atol=1e-2)


def test_fixed_key_is_deterministic_and_per_sample_is_not():
    x = torch.rand(3, 1, 16, 16)
    fixed = PpfrFd(perm_mode="fixed_key")
    assert torch.equal(fixed.encode(x, G(1)), fixed.encode(x, G(2)))
    per = PpfrFd(perm_mode="per_sample")
    assert not torch.equal(per.encode(x, G(1)), per.encode(x, G(2)))
    assert torch.equal(per.encode(x, G(1)), per.encode(x, G(1)))


def _masker(**options):
    return PpfrMasker(PpfrOptions(**options))


def _mixing_matrix(masker, n, gen_seed=0):
    """The linear map of the masker's channel mixing on n channels, read off the real code by
    mixing each basis vector alone with an identically seeded generator (so ``per_sample`` draws
    the same mixing parameters for every column)."""
    basis = torch.eye(n, dtype=torch.float64)[:, None, :, None, None]  # e_i as a 1-sample batch
    cols = [masker._mix(e, G(gen_seed))[0, :, 0, 0] for e in basis]  # M e_i
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("n", [63, 5, 36])
def test_adjacent_sum_mixing_is_each_channel_plus_its_successor(n):
    """§1: channel j of the mixed map is c_j + c_{(j+1) mod C} — checked on the real mixing code
    against an explicit per-channel loop."""
    c = torch.randn(3, n, 4, 5, generator=G(n), dtype=torch.float64)
    got = _masker(mix_mode="adjacent_sum")._mix(c, G())
    want = torch.stack([c[:, j] + c[:, (j + 1) % n] for j in range(n)], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_random_pair_sum_adds_one_cyclic_partner_per_sample():
    n = 63
    c = torch.randn(4, n, 3, 3, generator=G(1), dtype=torch.float64)
    got = _masker(mix_mode="random_pair_sum")._mix(c, G(7))
    for b in range(4):  # one shift s ≠ 0 per sample: out_j = c_j + c_{(j+s) mod n} for every j
        shifts = [s for s in range(1, n) if torch.allclose(got[b], c[b] + c[b].roll(-s, 0))]
        assert len(shifts) == 1, b


def test_random_orthogonal_mixing_preserves_the_channel_norm_at_every_pixel():
    c = torch.randn(2, 63, 4, 4, generator=G(2), dtype=torch.float64)
    got = _masker(mix_mode="random_orthogonal")._mix(c, G(3))
    torch.testing.assert_close(got.norm(dim=1), c.norm(dim=1))
    assert not torch.allclose(got, c)


@pytest.mark.parametrize("mix_mode", ["adjacent_sum", "random_pair_sum", "random_orthogonal"])
@pytest.mark.parametrize("perm_mode", ["per_sample", "fixed_key"])
@pytest.mark.parametrize("n", [63, 35, 7])
def test_mixing_is_invertible_for_odd_channel_counts(mix_mode, perm_mode, n):
    """C = 63 (and any odd keep_channels count): the mixing loses nothing — I + P_s has
    eigenvalues 1 + ω^k ≠ 0 when C is odd. For even C the adjacent sum is singular (ω^{C/2} = −1);
    the (even) complement of a rank check would not see that."""
    keep = list(range(1, n + 1))
    masker = _masker(mix_mode=mix_mode, perm_mode=perm_mode, keep_channels=keep)
    for seed in range(3):
        m = _mixing_matrix(masker, n, seed)
        assert torch.linalg.matrix_rank(m) == n, (mix_mode, seed)
    if mix_mode == "adjacent_sum":
        even = _mixing_matrix(_masker(mix_mode=mix_mode, keep_channels=list(range(1, 37))), 36)
        assert torch.linalg.matrix_rank(even) == 35


def _self_normalise_np(c):
    mean = c.mean(axis=(2, 3), keepdims=True)
    std = c.std(axis=(2, 3), keepdims=True)  # population std, as ALGORITHMS §1
    return (c - mean) / (std + 1e-5)


@pytest.mark.parametrize("mix_mode", ["adjacent_sum", "random_pair_sum", "random_orthogonal"])
def test_fixed_key_masking_matches_an_independent_numpy_pipeline(mix_mode):
    """The whole §1 pipeline, recomputed in numpy from the plain BDCT and the key: drop DC, π₁,
    normalise, mix, π₂, normalise."""
    import numpy as np

    d = PpfrFd(perm_mode="fixed_key", mix_mode=mix_mode, upsample=False)
    x = torch.rand(2, 1, 32, 32, generator=G(4), dtype=torch.float64)
    key = d.masker.secrets()
    c = bdct(x)[:, 1:].numpy()  # the 63 AC channels, channel index 8u + v
    c = _self_normalise_np(c[:, key["perm1"].numpy()])
    n = c.shape[1]
    if mix_mode == "adjacent_sum":
        c = np.stack([c[:, j] + c[:, (j + 1) % n] for j in range(n)], axis=1)
    elif mix_mode == "random_pair_sum":
        s = int(key["mix"].reshape(-1)[0])
        c = np.stack([c[:, j] + c[:, (j + s) % n] for j in range(n)], axis=1)
    else:
        q = key["mix"].reshape(n, n).numpy()
        c = np.einsum("ij,bjhw->bihw", q, c)
    want = _self_normalise_np(c[:, key["perm2"].numpy()])
    np.testing.assert_allclose(d.encode(x, G()).numpy(), want, atol=1e-8)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(half=st.integers(1, 31), seed=st.integers(0, 2**31 - 1),
       mix_mode=st.sampled_from(["adjacent_sum", "random_pair_sum", "random_orthogonal"]),
       perm_mode=st.sampled_from(["per_sample", "fixed_key"]))
def test_mixing_round_trips_for_every_odd_channel_count(half, seed, mix_mode, perm_mode):
    """Property: for every odd C in 3..63 and any maps, the mixed maps determine the unmixed ones
    (solving with the mixing matrix read off the code recovers them)."""
    n = 2 * half + 1
    masker = _masker(mix_mode=mix_mode, perm_mode=perm_mode, keep_channels=list(range(1, n + 1)))
    c = torch.randn(1, n, 3, 2, generator=G(seed), dtype=torch.float64)
    mixed = masker._mix(c, G(seed))
    m = _mixing_matrix(masker, n, seed)
    back = torch.linalg.solve(m, mixed[0].reshape(n, -1)).reshape(c[0].shape)
    torch.testing.assert_close(back, c[0], rtol=0, atol=1e-8)


def test_per_sample_permutation_is_a_permutation():
    c = torch.arange(12.0).view(1, 12, 1, 1).repeat(3, 1, 1, 1)
    perms = torch.argsort(torch.rand(3, 12), 1)
    out = permute_channels(c, perms)
    assert torch.equal(out.sort(1).values, c)


def test_self_normalise_is_scale_invariant():
    c = torch.randn(2, 4, 5, 5)
    assert torch.allclose(self_normalise(c), self_normalise(3 * c + 2), atol=1e-4)


@pytest.mark.parametrize("upsample,side", [(True, 16), (False, 2)])
def test_keep_channels_variant_and_view(upsample, side):
    d = PpfrFd(keep_channels=list(range(1, 37)), upsample=upsample)
    r = d.encode(torch.rand(2, 1, 16, 16), G())
    assert r.shape == (2, 36, side, side)
    v = d.view(r)
    assert v.shape == (2, 1, 16, 16) and v.min() >= 0 and v.max() <= 1


def _pearson(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _minmax(img):
    lo, hi = img.amin(dim=(1, 2, 3), keepdim=True), img.amax(dim=(1, 2, 3), keepdim=True)
    return (img - lo) / (hi - lo)


def test_view_of_upsampled_maps_is_the_antialiased_shrink_of_the_inverse_bdct():
    # A smooth separable sinusoid: without DC, each 8×8 block of the ×8 image is a local ramp, and
    # the antialiased shrink turns them into −Laplacian(x) ∝ x − mean (a sinusoid's own shape). A
    # plain nearest shrink samples each ramp at one end instead (∝ the gradient: uncorrelated).
    side, period = 16, 8
    t = torch.sin(2 * math.pi * (torch.arange(side) + 0.5) / period)
    x = (0.5 + 0.4 * t[:, None] * t[None, :]).expand(2, 1, side, side)
    r = bdct_image(x, upsample=True)[:, 1:]  # the AC maps, in order: what the view re-slots
    v = PpfrFd().view(r)
    assert v.shape == x.shape and v.min() >= 0 and v.max() <= 1
    assert torch.all(_pearson(v, x) > 0.9)
    big = ibdct(torch.cat([torch.zeros_like(r[:, :1]), r], 1))  # [2, 1, 8·side, 8·side]
    nearest = _minmax(F.interpolate(big, size=(side, side), mode="nearest"))
    assert torch.all(_pearson(nearest, x) < 0.5)
    antialiased = _minmax(F.interpolate(big, size=(side, side), mode="bilinear", align_corners=False,
                                        antialias=True))
    torch.testing.assert_close(v, antialiased, atol=1e-5, rtol=0)
    plain = _minmax(F.interpolate(big, size=(side, side), mode="bilinear", align_corners=False))
    assert (v - plain).abs().max() > 0.05  # antialiasing really is on
    # the 8×8 maps of the same image invert at the image side with no shrink at all
    small = bdct_image(x)[:, 1:]
    torch.testing.assert_close(PpfrFd(upsample=False).view(small),
                               _minmax(ibdct(torch.cat([torch.zeros_like(small[:, :1]), small], 1))))


@pytest.mark.parametrize("upsample", [True, False])
def test_the_masked_map_is_not_the_plain_spectrum(upsample):
    x = torch.rand(2, 1, 32, 32)
    r = PpfrFd(upsample=upsample).encode(x, G())
    assert r.shape[-1] == (32 if upsample else 4)
    assert not torch.allclose(r, bdct(x, upsample=upsample)[:, 1:], atol=1e-2)


@pytest.mark.parametrize("bad", [{"mix_mode": "x"}, {"perm_mode": "y"}, {"keep_channels": [0, 1]},
                                 {"keep_channels": [1, 1]}, {"nope": 1}])
def test_invalid_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        PpfrFd(**bad)
