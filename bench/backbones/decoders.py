"""Feature-inversion decoder networks TransRec / ResRec / URec (ALGORITHMS §7.2).

Shared by the decoder attacks (attacks/decoders.py) and AdvFace's shadow decoder (§6), so they
live with the other networks rather than on either side of the defense/attack contract.

AdvFace's appendix with the layer lists is unavailable, so every architecture below is our
choice ``[ASSUMP]``; only the family shapes come from ``[A]``:

- ``ResRec``: conv3×3 → 6 residual blocks (conv-BN-ReLU-conv-BN + identity) at the input
  resolution → ``ceil(log2(out/in))`` upsampling steps (bilinear ×2 → conv3×3-BN-ReLU) → conv3×3
  → sigmoid.
- ``URec``: the input is bilinearly resized to the output size and replicate-padded to a
  multiple of 16, then a 4-level U-Net (double conv3×3-BN-ReLU per level, max-pool down,
  bilinear up + skip concatenation; widths w, 2w, 4w, 8w, 8w) → conv1×1 → sigmoid, cropped back.
- ``TransRec``: the mirror of a conv encoder: ConvT3×3 → ``ceil(log2(out/in))`` stride-2
  ConvT4×4 steps halving the width (from up to 4w down to w) → ConvT3×3 → sigmoid.

All of them take any ``[N, C_in, h, w]`` to ``[N, C_out, H, W]`` in [0, 1]: an input larger than
the output is first area-downsampled to it, and a size the ×2 steps miss (e.g. 7×7 → 112) is
fixed by a final bilinear resize. BatchNorm throughout, so AdvFace (§6) can run its shadow
decoder with batch statistics.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.training import crop_to, pad_to, resize

Size = tuple[int, int]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _up_steps(in_size: Size, out_size: Size) -> int:
    """×2 steps that bring ``in_size`` to at least ``out_size`` (0 when not smaller)."""
    ratio = max(out_size[0] / in_size[0], out_size[1] / in_size[1])
    return max(0, math.ceil(math.log2(ratio) - 1e-9))


class _Decoder(nn.Module):
    """Common frame: shrink an oversized input, run ``body``, fix the size, sigmoid."""

    def __init__(self, in_channels: int, in_size: Size, out_channels: int, out_size: Size) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.out_size = (int(out_size[0]), int(out_size[1]))
        # Work at min(in, out) per side: decoders only ever upsample.
        self.work_in = (min(int(in_size[0]), self.out_size[0]), min(int(in_size[1]), self.out_size[1]))

    def _shrink(self, x: Tensor) -> Tensor:
        if x.shape[-2] > self.work_in[0] or x.shape[-1] > self.work_in[1]:
            x = resize(x, (min(x.shape[-2], self.work_in[0]), min(x.shape[-1], self.work_in[1])))
        return x


class ResidualBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus identity, then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(width, width),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ResRec(_Decoder):
    """ResRec (ALGORITHMS §7.2): conv → 6 residual blocks → upsampling → conv → sigmoid."""

    def __init__(self, in_channels: int, in_size: Size, out_channels: int, out_size: Size,
                 width: int = 64, blocks: int = 6) -> None:
        super().__init__(in_channels, in_size, out_channels, out_size)
        layers: list[nn.Module] = _conv_bn_relu(in_channels, width)
        layers += [ResidualBlock(width) for _ in range(blocks)]
        for _ in range(_up_steps(self.work_in, self.out_size)):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       *_conv_bn_relu(width, width)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(self._shrink(x))
        # Resize before the last conv so it smooths any non-×2 resize.
        return torch.sigmoid(self.head(resize(h, self.out_size)))


class URec(_Decoder):
    """URec (ALGORITHMS §7.2): 4-level U-Net with skip connections on the upsampled input."""

    levels: ClassVar[int] = 4

    def __init__(self, in_channels: int, in_size: Size, out_channels: int, out_size: Size,
                 width: int = 64) -> None:
        super().__init__(in_channels, in_size, out_channels, out_size)
        m = 2 ** self.levels
        self.grid = (math.ceil(self.out_size[0] / m) * m, math.ceil(self.out_size[1] / m) * m)
        widths = [width * min(2 ** i, 8) for i in range(self.levels + 1)]  # w,2w,4w,8w,8w
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.enc.append(nn.Sequential(*_conv_bn_relu(cin, w), *_conv_bn_relu(w, w)))
            cin = w
        self.dec = nn.ModuleList()
        for i in reversed(range(self.levels)):
            w = widths[i]
            self.dec.append(nn.Sequential(*_conv_bn_relu(cin + w, w), *_conv_bn_relu(w, w)))
            cin = w
        self.head = nn.Conv2d(cin, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = pad_to(resize(self._shrink(x), self.out_size), self.grid)
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        skips.pop()  # the bottleneck has no skip partner
        for block in self.dec:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skips.pop()], 1))
        return torch.sigmoid(crop_to(self.head(h), self.out_size))


class TransRec(_Decoder):
    """TransRec (ALGORITHMS §7.2): mirror of a conv encoder built from transposed convs."""

    def __init__(self, in_channels: int, in_size: Size, out_channels: int, out_size: Size,
                 width: int = 64) -> None:
        super().__init__(in_channels, in_size, out_channels, out_size)
        steps = _up_steps(self.work_in, self.out_size)
        w = width * 2 ** min(steps, 2)  # widest at the input, as an encoder's last stage
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, w, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(w), nn.ReLU()]
        for i in range(steps):
            nw = max(width, w // 2)
            layers += [nn.ConvTranspose2d(w, nw, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(nw), nn.ReLU()]
            w = nw
        if steps == 0:  # same-size input: keep some depth (a stride-1 mirrored stage)
            layers += [nn.ConvTranspose2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.ConvTranspose2d(w, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(self._shrink(x))
        return torch.sigmoid(self.head(resize(h, self.out_size)))


DECODERS: dict[str, type[_Decoder]] = {"resrec": ResRec, "urec": URec, "transrec": TransRec}


def build_decoder(kind: str, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                  width: int = 64) -> nn.Module:
    """A decoder ``[N, *in_shape] → [N, *out_shape]`` in [0, 1] (ALGORITHMS §7.2; AdvFace's
    shadow model, §6). ``kind``: ``resrec``, ``urec`` or ``transrec``; shapes are ``(C, H, W)``."""
    try:
        cls = DECODERS[kind]
    except KeyError:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}") from None
    c_in, h, w = in_shape
    c_out, H, W = out_shape
    return cls(c_in, (h, w), c_out, (H, W), width=width)


class NbBlock(nn.Module):
    """NbNet's neighbourly de-convolution block `[PAPER NbNet TPAMI'19]`, sizes ``[ASSUMP]``: a
    stride-2 ConvT4×4 (×2 upsampling) to ``width`` channels, then ``layers`` conv3×3-BN-ReLU each
    reading the concatenation of every earlier map of the block (densely connected neighbours),
    fused back to ``width`` by a 1×1 conv."""

    def __init__(self, cin: int, width: int, layers: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, width, 4, stride=2, padding=1, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
        grow = max(1, width // 2)
        self.convs = nn.ModuleList(nn.Sequential(*_conv_bn_relu(width + i * grow, grow))
                                   for i in range(layers))
        self.fuse = (nn.Sequential(nn.Conv2d(width + layers * grow, width, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()) if layers else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        maps = [self.up(x)]
        for conv in self.convs:
            maps.append(conv(torch.cat(maps, 1)))
        return self.fuse(torch.cat(maps, 1))


class TemplateDecoder(nn.Module):
    """Embedding (template) → face, NbNet-like (ALGORITHMS §14 "Template inversion"; sizes
    ``[ASSUMP]``): Linear(D → 8w·4·4)-BN-ReLU, then ``ceil(log2(side/4))`` :class:`NbBlock` ×2
    steps halving the width from 8w down to w, conv3×3 → C, a bilinear resize to the exact size
    and sigmoid. ``nb_layers=0`` is the plain transposed-conv stack (NbNet's D-CNN baseline)."""

    start: ClassVar[int] = 4

    def __init__(self, in_dim: int, out_channels: int, out_size: Size, width: int = 64,
                 nb_layers: int = 2) -> None:
        super().__init__()
        self.out_size = (int(out_size[0]), int(out_size[1]))
        w = width * 8
        self.fc = nn.Sequential(nn.Linear(in_dim, w * self.start * self.start, bias=False),
                                nn.BatchNorm1d(w * self.start * self.start), nn.ReLU())
        self.w0 = w
        blocks = []
        for _ in range(_up_steps((self.start, self.start), self.out_size)):
            nw = max(width, w // 2)
            blocks.append(NbBlock(w, nw, nb_layers))
            w = nw
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, t: Tensor) -> Tensor:
        h = self.fc(t.flatten(1)).view(len(t), self.w0, self.start, self.start)
        return torch.sigmoid(self.head(resize(self.body(h), self.out_size)))


def build_template_decoder(in_dim: int, out_shape: tuple[int, int, int], width: int = 64,
                           nb_layers: int = 2) -> nn.Module:
    """A :class:`TemplateDecoder` ``[N, in_dim] → [N, *out_shape]`` in [0, 1]."""
    c_out, H, W = out_shape
    return TemplateDecoder(int(in_dim), c_out, (H, W), width=width, nb_layers=nb_layers)
