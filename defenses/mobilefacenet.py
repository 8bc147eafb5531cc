"""A small MobileFaceNet-style network: DuetFace's client model (ALGORITHMS §5).

Our own implementation of the MobileFaceNet recipe [PAPER Chen et al. 2018]
[CODE Tencent/TFace:recognition/tasks/duetface/local_backbones.py]: conv3×3 stem → depthwise
conv3×3 → stages of inverted-residual bottlenecks (1×1 expand → depthwise 3×3 → 1×1 project,
BN + PReLU) → 1×1 conv → global depthwise conv (GDC) → linear → BN embedding.

It exposes the output of each of its four stages (:meth:`MobileFaceNet.stages`), which DuetFace's
server blocks use as attention (TFace hooks MobileFaceNet body blocks 1, 3, 5, 7: three downsampling
bottlenecks and the final 1×1 conv). [ASSUMP] widths ``(w, 2w, 2w, 4w)``, expansion 2, two blocks
per stage; inputs of side ≤ 16 (frequency maps) keep a stride-1 stem and downsample twice.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.recognition import ArcFaceHead


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expand → depthwise 3×3 (stride) → 1×1 linear projection; identity
    shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 2) -> None:
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(conv_bn(cin, mid), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet-style embedding network on ``in_chans`` maps of side ``in_side``."""

    def __init__(self, in_chans: int, in_side: int, embedding_dim: int, width: int = 64,
                 expansion: int = 2) -> None:
        super().__init__()
        small = in_side <= 16
        self.stem = nn.Sequential(conv_bn(in_chans, width, 3, 1 if small else 2),
                                  conv_bn(width, width, 3, groups=width))
        widths = (width, 2 * width, 2 * width, 4 * width)
        strides = (1, 2, 2, 1) if small else (2, 2, 2, 1)
        blocks, cin = [], width
        for i, (w, s) in enumerate(zip(widths, strides)):
            if i == len(widths) - 1:  # the last "stage" is the 1×1 conv before the GDC
                blocks.append(conv_bn(cin, w))
            else:
                blocks.append(nn.Sequential(Bottleneck(cin, w, s, expansion),
                                            Bottleneck(w, w, 1, expansion)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.stage_channels = widths
        with torch.no_grad():
            self.eval()
            side = self.stages(torch.zeros(1, in_chans, in_side, in_side))[-1].shape[-1]
            self.train()
        self.gdc = nn.Sequential(nn.Conv2d(cin, cin, side, groups=cin, bias=False),  # global depthwise
                                 nn.BatchNorm2d(cin))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(cin, embedding_dim),
                                   nn.BatchNorm1d(embedding_dim))

    def stages(self, x: Tensor) -> list[Tensor]:
        """The four stage outputs (DuetFace's client activations)."""
        out, h = [], self.stem(x)
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(x)[-1]
        return self.embed(self.gdc(h))


class ClientRecognizer(nn.Module):
    """MobileFaceNet + ArcFace head; the Recognizer interface (forward, loss, mixed_loss, head)."""

    def __init__(self, net: MobileFaceNet, head: ArcFaceHead) -> None:
        super().__init__()
        self.net, self.head = net, head

    def forward(self, r: Tensor) -> Tensor:
        return self.net(r)

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)
