import pytest
import torch

from bench.errors import ConfigError
from defenses.bdct import bdct
from defenses.ppfr_fd import PpfrFd, permute_channels, self_normalise

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731


@pytest.mark.parametrize("mix_mode", ["adjacent_sum", "random_pair_sum", "random_orthogonal"])
@pytest.mark.parametrize("perm_mode", ["per_sample", "fixed_key"])
def test_output_shape_and_self_normalisation(mix_mode, perm_mode):
    d = PpfrFd(mix_mode=mix_mode, perm_mode=perm_mode)
    r = d.encode(torch.rand(4, 1, 32, 32), G())
    assert r.shape == (4, 63, 4, 4)
    assert torch.allclose(r.mean(dim=(2, 3)), torch.zeros(4, 63), atol=1e-4)
    assert torch.allclose(r.std(dim=(2, 3), unbiased=False), torch.ones(4, 63), atol=1e-3)


def test_dc_is_removed_so_brightness_shifts_do_not_change_the_mask():
    d = PpfrFd(perm_mode="fixed_key")
    x = torch.rand(2, 1, 32, 32) * 0.5
    assert torch.allclose(d.encode(x, G()), d.encode(x + 0.3, G()), atol=1e-3)


def test_fixed_key_is_deterministic_and_per_sample_is_not():
    x = torch.rand(3, 1, 16, 16)
    fixed = PpfrFd(perm_mode="fixed_key")
    assert torch.equal(fixed.encode(x, G(1)), fixed.encode(x, G(2)))
    per = PpfrFd(perm_mode="per_sample")
    assert not torch.equal(per.encode(x, G(1)), per.encode(x, G(2)))
    assert torch.equal(per.encode(x, G(1)), per.encode(x, G(1)))


def test_adjacent_sum_without_shuffles_matches_the_formula():
    c = torch.randn(2, 5, 3, 3)
    mixed = c + torch.roll(c, -1, dims=1)
    assert torch.allclose(mixed[:, 1], c[:, 1] + c[:, 2])
    assert torch.allclose(mixed[:, 4], c[:, 4] + c[:, 0])


def test_per_sample_permutation_is_a_permutation():
    c = torch.arange(12.0).view(1, 12, 1, 1).repeat(3, 1, 1, 1)
    perms = torch.argsort(torch.rand(3, 12), 1)
    out = permute_channels(c, perms)
    assert torch.equal(out.sort(1).values, c)


def test_self_normalise_is_scale_invariant():
    c = torch.randn(2, 4, 5, 5)
    assert torch.allclose(self_normalise(c), self_normalise(3 * c + 2), atol=1e-4)


def test_keep_channels_variant_and_view():
    d = PpfrFd(keep_channels=list(range(1, 37)))
    r = d.encode(torch.rand(2, 1, 16, 16), G())
    assert r.shape == (2, 36, 2, 2)
    assert d.view(r).shape == (2, 1, 16, 16)


def test_the_masked_map_is_not_the_plain_spectrum():
    x = torch.rand(2, 1, 32, 32)
    r = PpfrFd().encode(x, G())
    assert not torch.allclose(r, bdct(x)[:, 1:], atol=1e-2)


@pytest.mark.parametrize("bad", [{"mix_mode": "x"}, {"perm_mode": "y"}, {"keep_channels": [0, 1]},
                                 {"keep_channels": [1, 1]}, {"nope": 1}])
def test_invalid_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        PpfrFd(**bad)
