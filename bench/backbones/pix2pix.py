"""pix2pix networks for the CGAN attack (ALGORITHMS §7.1).

Written from the description of junyanz/pytorch-CycleGAN-and-pix2pix (``models/networks.py``):
a U-Net generator of recursive skip blocks and the 70×70 PatchGAN discriminator, BatchNorm
everywhere (so convolutions before a norm carry no bias), weights initialised N(0, 0.02) and
BatchNorm scales N(1, 0.02).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``x → down → submodule → up`` and, except at the outermost level,
    ``cat([x', up], 1)`` where ``x'`` is the skip (ALGORITHMS §7.1).

    The reference applies the down path's ``LeakyReLU(0.2)`` *in place*, so the tensor it
    concatenates as the skip is the activated one. We reproduce that numerically, without
    in-place ops: the skip carries ``LeakyReLU(x)``.
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, use_dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        # BatchNorm follows, so no bias (as the reference does for BatchNorm).
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        # Outermost: no activation on the raw input; elsewhere LeakyReLU(0.2) first.
        self.down_act: nn.Module = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        layers: list[nn.Module]
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            assert submodule is not None
            layers = [downconv, submodule, nn.ReLU(), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=False)
            # The innermost level has no norm on its down path (its output is 1×1 at full depth).
            layers = [downconv, nn.ReLU(), upconv, nn.BatchNorm2d(outer_nc)]
        else:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2,
                                        padding=1, bias=False)
            layers = [downconv, nn.BatchNorm2d(inner_nc), submodule, nn.ReLU(), upconv,
                      nn.BatchNorm2d(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))  # pix2pix's noise z
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        h = self.down_act(x)
        if self.outermost:
            return self.model(h)
        return torch.cat([h, self.model(h)], 1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net generator (ALGORITHMS §7.1): ``num_downs`` stride-2 levels, so an input
    side of ``2**num_downs`` reaches a 1×1 bottleneck (``unet_128`` = 7 downs for 128 px).
    Channels ngf, 2ngf, 4ngf, then 8ngf for every deeper level; dropout 0.5 in the
    ``num_downs - 5`` intermediate 8ngf levels; Tanh output in [-1, 1].
    """

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64,
                 use_dropout: bool = True) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5, got {num_downs}")
        self.num_downs = num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block,
                                            use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (ALGORITHMS §7.1); ``n_layers=3`` is the 70×70 PatchGAN.

    Kernel 4, padding 1: ``n_layers`` stride-2 convs (first without norm), one stride-1 conv
    with BatchNorm, and a stride-1 conv to one logit per patch. For a 256 px input the map is
    30×30, for 64 px it is 6×6, for 32 px 2×2.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def patch_map_size(side: int, n_layers: int = 3) -> int:
    """Side of the PatchGAN logit map for a ``side`` px input (k4/p1: s2 halves, s1 takes 1)."""
    for _ in range(n_layers):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def auto_num_downs(size: tuple[int, int]) -> int:
    """pix2pix depth for an image: ``ceil(log2(max side))``, at least 5 (7 for 128 px)."""
    return max(5, math.ceil(math.log2(max(size))))


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """pix2pix ``normal`` init: conv weights N(0, gain), biases 0, BatchNorm weight N(1, gain)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
