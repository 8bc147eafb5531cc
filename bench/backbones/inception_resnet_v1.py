"""FaceNet's Inception-ResNet-v1, the AdvFace recognizer (ALGORITHMS §6).

Reference followed: timesler/facenet-pytorch ``models/inception_resnet_v1.py``
(``InceptionResnetV1(classify=False)``, a port of davidsandberg/facenet's TensorFlow model):
conv2d_1a (3×3 s2, 32) – conv2d_2a (3×3, 32) – conv2d_2b (3×3 pad 1, 64) – maxpool_3a (3, s2) –
conv2d_3b (1×1, 80) – conv2d_4a (3×3, 192) – conv2d_4b (3×3 s2, 256) – 5 × Block35 (scale .17) –
Mixed_6a – 10 × Block17 (.10) – Mixed_7a – 5 × Block8 (.20) – Block8 (no ReLU); head avg-pool –
dropout – Linear(1792 → 512, no bias) – BN1d(eps 1e-3) (see :func:`inception_neck`). Every plain
conv is ``BasicConv2d`` = Conv (no bias) – BN(eps 1e-3, momentum 0.1) – ReLU; the residual blocks'
1×1 "up" convs carry a bias, as in the reference.

At 160 px the client side of AdvFace's split, the first three convs, gives z ∈ R^{64×77×77}
(ALGORITHMS §6); here those three convs are ``conv1`` so that "the stem" is exactly that split.
Stage mapping onto the timm-ResNet names the harness uses: ``layer1`` = maxpool_3a … conv2d_4b,
``layer2`` = repeat_1 + mixed_6a, ``layer3`` = repeat_2 + mixed_7a, ``layer4`` = repeat_3 + block8.
Only conv2d_1a's input channel count follows ``in_chans``; the architecture is otherwise fixed
(its valid convs need inputs of at least :data:`MIN_SIDE` px).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from bench.backbones.staged import StagedTrunk

BN_EPS = 1e-3  # the TensorFlow value facenet-pytorch keeps for its ported weights
BN_MOMENTUM = 0.1
FEATURES = 1792
#: Smallest input side for which every unpadded stride-2 conv still has a 3×3 window.
MIN_SIDE = 75


class BasicConv2d(nn.Sequential):
    """Conv (no bias) – BN(eps 1e-3, momentum 0.1) – ReLU."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, bias=False),
            bn=nn.BatchNorm2d(out_planes, eps=BN_EPS, momentum=BN_MOMENTUM),
            relu=nn.ReLU(inplace=False),
        ))


class _Residual(nn.Module):
    """Concatenate the branches, 1×1 conv (with bias) back to the trunk width, add ``scale`` times
    it to the input, then ReLU (unless ``relu=False``, the last Block8)."""

    def __init__(self, branches: list[nn.Module], cat_channels: int, channels: int, scale: float,
                 relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.branches = nn.ModuleList(branches)
        self.conv2d = nn.Conv2d(cat_channels, channels, 1)
        self.relu = nn.ReLU(inplace=False) if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d(torch.cat([b(x) for b in self.branches], 1))
        return self.relu(out * self.scale + x)


class Block35(_Residual):
    """Inception-ResNet-A on the 256-channel 35×35-grid trunk (17×17 at 160 px)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__([
            BasicConv2d(256, 32, 1),
            nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
            nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1),
                          BasicConv2d(32, 32, 3, padding=1)),
        ], 96, 256, scale)


class Block17(_Residual):
    """Inception-ResNet-B on the 896-channel trunk, factorised 1×7 / 7×1 convs."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__([
            BasicConv2d(896, 128, 1),
            nn.Sequential(BasicConv2d(896, 128, 1),
                          BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                          BasicConv2d(128, 128, (7, 1), padding=(3, 0))),
        ], 256, 896, scale)


class Block8(_Residual):
    """Inception-ResNet-C on the 1792-channel trunk, factorised 1×3 / 3×1 convs."""

    def __init__(self, scale: float = 1.0, relu: bool = True) -> None:
        super().__init__([
            BasicConv2d(FEATURES, 192, 1),
            nn.Sequential(BasicConv2d(FEATURES, 192, 1),
                          BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                          BasicConv2d(192, 192, (3, 1), padding=(1, 0))),
        ], 384, FEATURES, scale, relu)


class _Concat(nn.Module):
    """Reduction block: branches side by side (256 → 896 in Mixed_6a, 896 → 1792 in Mixed_7a)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def mixed_6a() -> _Concat:
    """Reduction-A: 3×3 s2 conv to 384, a 1×1–3×3–3×3 s2 tower to 256, and a 3×3 s2 max-pool."""
    return _Concat([
        BasicConv2d(256, 384, 3, stride=2),
        nn.Sequential(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1),
                      BasicConv2d(192, 256, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    ])


def mixed_7a() -> _Concat:
    """Reduction-B: three 1×1-led towers (384, 256, 256 channels) and a 3×3 s2 max-pool."""
    return _Concat([
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2)),
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2)),
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                      BasicConv2d(256, 256, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    ])


def inception_neck(embedding_dim: int, dropout: float,
                   feat_shape: tuple[int, int, int]) -> nn.Module:
    """facenet-pytorch's head: AdaptiveAvgPool2d(1) – Dropout – Flatten – Linear(1792 → emb, no
    bias) – BN1d(eps 1e-3, momentum 0.1). (The reference then L2-normalises; ArcFace does that.)"""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout), nn.Flatten(),
        nn.Linear(feat_shape[0], embedding_dim, bias=False),
        nn.BatchNorm1d(embedding_dim, eps=BN_EPS, momentum=BN_MOMENTUM),
    )


class InceptionResnetV1(StagedTrunk):
    """The Inception-ResNet-v1 trunk; ``forward`` returns the 1792-channel map (3×3 at 160 px)."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        # AdvFace's client-side extractor E (ALGORITHMS §6): z = 64×77×77 at 160 px
        self.conv1 = nn.Sequential(OrderedDict(
            conv2d_1a=BasicConv2d(in_chans, 32, 3, stride=2),
            conv2d_2a=BasicConv2d(32, 32, 3),
            conv2d_2b=BasicConv2d(32, 64, 3, padding=1),
        ))
        self.bn1 = nn.Identity()  # BN and ReLU live inside each BasicConv2d
        self.act1 = nn.Identity()
        self.maxpool = nn.Identity()  # maxpool_3a opens layer1, after the split point
        self.layer1 = nn.Sequential(OrderedDict(
            maxpool_3a=nn.MaxPool2d(3, stride=2),
            conv2d_3b=BasicConv2d(64, 80, 1),
            conv2d_4a=BasicConv2d(80, 192, 3),
            conv2d_4b=BasicConv2d(192, 256, 3, stride=2),
        ))
        self.layer2 = nn.Sequential(*[Block35(0.17) for _ in range(5)], mixed_6a())
        self.layer3 = nn.Sequential(*[Block17(0.10) for _ in range(10)], mixed_7a())
        self.layer4 = nn.Sequential(*[Block8(0.20) for _ in range(5)], Block8(relu=False))
        self.num_features = FEATURES

    def make_neck(self, embedding_dim: int, dropout: float,
                  feat_shape: tuple[int, int, int]) -> nn.Module:
        """The reference head, from the 1792-channel map to the embedding."""
        return inception_neck(embedding_dim, dropout, feat_shape)


def inception_resnet_v1(in_chans: int = 3) -> InceptionResnetV1:
    """facenet-pytorch ``InceptionResnetV1(classify=False)`` without its head."""
    return InceptionResnetV1(in_chans)
