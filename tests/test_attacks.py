"""Reconstruction attacks (ALGORITHMS §7.1 CGAN, §7.2 decoders): shapes, ranges, learning,
determinism, option validation. Tiny sizes so the file runs in well under a minute on 2 cores."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.decoders import build_decoder
from bench.backbones.pix2pix import (NLayerDiscriminator, UnetGenerator, auto_num_downs,
                                     patch_map_size)
from bench.core.context import Context
from bench.core.contract import Leak
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import ATTACKS
from bench.core.training import Standardizer
from bench.plugins import load_plugins

load_plugins()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads waiting on each other make them ~50× slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Small-but-working hyper-parameters, applied to whichever of them an attack has.
TINY = {"epochs": 2, "batch_size": 8, "ngf": 8, "ndf": 8, "width": 8}


def tiny(name: str, **extra: object):
    entry = ATTACKS.get(name)
    names = [f.name for f in dataclasses.fields(entry.factory.Options)]
    return ATTACKS.create(name, **{k: v for k, v in {**TINY, **extra}.items() if k in names})


def ctx(seed: int = 0) -> Context:
    return Context(seed=seed, progress=False)


def smooth_images(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Random smooth images in [0, 1] (bilinear-upsampled 4×4 noise): learnable structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def leak_for(in_shape: tuple[int, int, int], n_train: int = 12, n_test: int = 5,
             out: tuple[int, int, int] = (1, 32, 32)) -> Leak:
    g = torch.Generator().manual_seed(1)
    x = smooth_images(n_train + n_test, out[1], out[0])
    # Arbitrary scale/offset: the attacks must standardise inputs themselves.
    r = torch.randn(n_train + n_test, *in_shape, generator=g) * 50 + 7
    return Leak(r[:n_train], x[:n_train], r[n_train:], targets=x[n_train:])


# --- every registered attack ------------------------------------------------------------------

#: Attacks that run on any leak of (representation, image) pairs; structural ones (``requires``)
#: are exercised on their own leaks in their test files, and below on a leak that lacks them.
#: Identity-level attacks that return no image (linkage) are tested in their own files.
GENERIC = [n for n in ATTACKS.names() if not ATTACKS.get(n).factory.requires
           and ATTACKS.get(n).factory.reconstructs]
STRUCTURAL = [n for n in ATTACKS.names() if ATTACKS.get(n).factory.requires]


def test_structural_attacks_are_registered() -> None:
    assert "carlini" in STRUCTURAL and "resrec" in GENERIC


@pytest.mark.parametrize("name", STRUCTURAL)
def test_structural_attack_on_a_leak_without_its_structure_says_what_is_missing(name: str) -> None:
    with pytest.raises(TrainingError, match=ATTACKS.get(name).factory.requires[0]):
        tiny(name).run(leak_for((16, 8, 8)).for_attacker(), ctx())

@pytest.mark.parametrize("name", GENERIC)
@pytest.mark.parametrize("in_shape", [(63, 4, 4), (16, 16, 16), (1, 32, 32)])
def test_attack_maps_any_representation_to_images(name: str, in_shape) -> None:
    leak = leak_for(in_shape)
    rec = tiny(name).run(leak.for_attacker(), ctx())
    assert rec.images.shape == (5, 1, 32, 32)
    assert rec.images.dtype == torch.float32
    assert torch.isfinite(rec.images).all()
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    assert rec.info["epochs"] == 2


@pytest.mark.parametrize("name", GENERIC)
def test_same_seed_same_reconstruction(name: str) -> None:
    leak = leak_for((16, 8, 8)).for_attacker()
    state = torch.get_rng_state()
    a = tiny(name).run(leak, ctx(3)).images
    b = tiny(name).run(leak, ctx(3)).images
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is untouched
    c = tiny(name).run(leak, ctx(4)).images
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_invalid_options_raise_config_error(name: str) -> None:
    with pytest.raises(ConfigError):
        ATTACKS.create(name, epochs=0)
    with pytest.raises(ConfigError):
        ATTACKS.create(name, no_such_option=1)
    with pytest.raises(ConfigError):
        ATTACKS.create(name, lr=-1.0)


@pytest.mark.parametrize("name", ["cgan", "resrec"])
def test_rgb_and_non_power_of_two_images(name: str) -> None:
    leak = leak_for((63, 6, 6), n_train=8, n_test=3, out=(3, 48, 48))
    rec = tiny(name).run(leak.for_attacker(), ctx())
    assert rec.images.shape == (3, 3, 48, 48)


def test_nan_loss_raises_training_error() -> None:
    leak = leak_for((4, 8, 8))
    leak.train_targets[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="NaN at epoch 1; lower attacks.resrec.lr"):
        tiny("resrec").run(leak, ctx())


# --- pix2pix networks (§7.1) ------------------------------------------------------------------

@pytest.mark.parametrize("side,downs", [(32, 5), (64, 6), (128, 7)])
def test_unet_depth(side: int, downs: int) -> None:
    assert auto_num_downs((side, side)) == downs
    G = UnetGenerator(5, 1, downs, ngf=4)
    convs = [m for m in G.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == downs and all(m.stride == (2, 2) for m in convs)
    ups = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == downs
    assert sum(isinstance(m, nn.Dropout) for m in G.modules()) == downs - 5
    seen = []
    innermost = [m for m in G.modules() if isinstance(m, nn.Conv2d)][-1]
    innermost.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    y = G(torch.randn(2, 5, side, side))
    assert seen == [1]  # bottleneck reaches 1×1
    assert y.shape == (2, 1, side, side) and y.abs().max() <= 1


def test_patchgan_output_shape_and_init() -> None:
    D = NLayerDiscriminator(2, ndf=8, n_layers=3)
    assert D(torch.randn(2, 2, 64, 64)).shape == (2, 1, 6, 6)
    assert D(torch.randn(2, 2, 256, 256)).shape == (2, 1, 30, 30)  # the 70×70 PatchGAN map
    assert patch_map_size(64) == 6 and patch_map_size(256) == 30
    conv = next(m for m in D.modules() if isinstance(m, nn.Conv2d))
    assert abs(conv.weight.std().item() - 0.02) < 0.005
    bn = next(m for m in D.modules() if isinstance(m, nn.BatchNorm2d))
    assert abs(bn.weight.mean().item() - 1) < 0.02 and bn.bias.abs().max() == 0


# --- decoders (§7.2) --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["resrec", "urec", "transrec"])
@pytest.mark.parametrize("in_shape,out_shape", [((63, 8, 8), (1, 64, 64)),
                                                ((64, 32, 32), (3, 64, 64)),
                                                ((3, 64, 64), (3, 64, 64)),
                                                ((8, 7, 7), (1, 112, 112)),
                                                ((8, 64, 64), (1, 32, 32))])
def test_build_decoder_shapes(kind: str, in_shape, out_shape) -> None:
    net = build_decoder(kind, in_shape, out_shape, width=4)
    y = net(torch.randn(2, *in_shape))
    assert y.shape == (2, *out_shape) and y.min() >= 0 and y.max() <= 1


def test_build_decoder_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        build_decoder("nope", (1, 8, 8), (1, 32, 32))


@pytest.mark.parametrize("kind", ["resrec", "urec", "transrec"])
def test_decoder_learns_an_easy_mapping(kind: str) -> None:
    """~100 steps on (noisy fixed projection of x → x) beat the same training on noise inputs."""
    n_train, n_test = 64, 16
    x = smooth_images(n_train + n_test, seed=5)
    g = torch.Generator().manual_seed(6)
    proj = torch.randn(8, 1, 4, 4, generator=g)  # a fixed random 4×4-stride "encoder"
    r = F.conv2d(x, proj, stride=4) + 0.01 * torch.randn(n_train + n_test, 8, 8, 8, generator=g)
    noise = torch.randn_like(r)
    opts = dict(epochs=25, batch_size=16, width=8, lr=3e-3)  # 4 steps/epoch → 100 steps

    def test_l1(inputs: torch.Tensor) -> float:
        leak = Leak(inputs[:n_train], x[:n_train], inputs[n_train:])
        rec = ATTACKS.create(kind, **opts).run(leak, ctx())
        return F.l1_loss(rec.images, x[n_train:]).item()

    learned, from_noise = test_l1(r), test_l1(noise)
    assert learned < 0.6 * from_noise, (learned, from_noise)


def test_standardizer_is_per_channel_and_handles_constant_channels() -> None:
    x = torch.randn(10, 3, 4, 4) * torch.tensor([1.0, 100.0, 0.0]).view(1, 3, 1, 1) + 5
    z = Standardizer(x)(x)
    assert torch.allclose(z[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z[:, :2].std(dim=(0, 2, 3)), torch.ones(2), atol=1e-4)
    assert torch.isfinite(z).all() and z[:, 2].abs().max() == 0
