"""IR-SE-50, IR-50 and IR-18: the improved-residual face recognizers of ALGORITHMS §0.2.

Reference followed: face.evoLVe ``backbone/model_irse.py`` (``bottleneck_IR``,
``bottleneck_IR_SE``, ``get_blocks(50)``, ``Backbone``), itself the PyTorch port of insightface's
``fresnet`` IR units:

* input layer: Conv3×3 s1 (no bias) – BN – PReLU(64); no max-pool;
* unit: BN – Conv3×3 s1 – PReLU – Conv3×3 (stride) – BN (– SE, r = 16) plus a shortcut that is
  MaxPool2d(1, stride) when the channel count is kept, else Conv1×1 (stride, no bias) + BN;
* stages (64, 3) (128, 4) (256, 14) (512, 3), the first unit of every stage with stride 2;
* output layer BN2d – Dropout – Flatten – Linear(512·7·7 → 512) – BN1d (see :func:`ir_neck`).

IR-18 has no face.evoLVe definition: it takes insightface ``iresnet18``'s unit counts (2, 2, 2, 2)
with the face.evoLVe unit above. (Tencent/TFace ``torchkit/backbone/model_irse.py`` also has an
``IR_18`` with these counts, but its ``BasicBlockIR`` adds a BN after the first conv; we keep the
face.evoLVe unit so that IR-18, IR-50 and IR-SE-50 differ only in depth and SE.)

The modules expose the timm-ResNet attribute names the harness splits and reaches into
(``conv1``, ``bn1``, ``act1``, ``maxpool``, ``layer1``..``layer4``, ``global_pool``, ``fc``).
"""
from __future__ import annotations

from torch import Tensor, nn

from bench.backbones.staged import StagedTrunk

#: Units per stage (ALGORITHMS §0.2; face.evoLVe ``get_blocks``; insightface ``iresnet18``).
UNITS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 18: (2, 2, 2, 2)}
SE_REDUCTION = 16


class SEModule(nn.Module):
    """Squeeze-and-excitation with bias-free 1×1 convs, as in face.evoLVe's ``SEModule``."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)  # narrow test widths (< 16) would give 0 channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * w


class IRUnit(nn.Module):
    """One improved-residual unit (``bottleneck_IR``; with ``se=True`` ``bottleneck_IR_SE``)."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool) -> None:
        super().__init__()
        if in_channels == depth:
            # kernel-1 max-pool = strided sub-sampling: a parameter-free identity at stride 1
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),  # the unit strides on its 2nd conv
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_neck(embedding_dim: int, dropout: float, feat_shape: tuple[int, int, int]) -> nn.Module:
    """The IR output layer BN2d – Dropout – Flatten – Linear(C·h·w → emb) – BN1d (face.evoLVe
    ``Backbone.output_layer``; at 112 px ``feat_shape`` is (512, 7, 7)). Also the harness's default
    neck for backbones that define none."""
    c, h, w = feat_shape
    return nn.Sequential(
        nn.BatchNorm2d(c), nn.Dropout(dropout), nn.Flatten(),
        nn.Linear(c * h * w, embedding_dim), nn.BatchNorm1d(embedding_dim),
    )


class IRNet(StagedTrunk):
    """IR / IR-SE trunk: input layer and four stages; ``forward`` returns the last feature map.

    ``in_chans`` changes only the input conv (a frequency map keeps the 3×3 stride-1 input layer,
    which already suits 112×112 maps: ALGORITHMS §0.2 "Stem adapted to the representation").
    ``widths`` scales the stage widths (the input layer takes ``widths[0]``); the reference is
    (64, 128, 256, 512).
    """

    def __init__(self, units: tuple[int, ...], se: bool, in_chans: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        if len(units) != 4 or len(widths) != 4:
            raise ValueError(f"IRNet needs four stages, got units={units} widths={widths}")
        self.units, self.se = tuple(units), se
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.PReLU(widths[0])
        self.maxpool = nn.Identity()  # the IR input layer has no pooling
        in_c = widths[0]
        for i, (depth, n) in enumerate(zip(widths, units), start=1):
            stage = []
            for k in range(n):
                stage.append(IRUnit(in_c, depth, 2 if k == 0 else 1, se))
                in_c = depth
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.num_features = in_c

    def make_neck(self, embedding_dim: int, dropout: float,
                  feat_shape: tuple[int, int, int]) -> nn.Module:
        """The reference output layer, from this trunk's feature map to the embedding."""
        return ir_neck(embedding_dim, dropout, feat_shape)


def ir_se_50(in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512)) -> IRNet:
    """IR-SE-50 (face.evoLVe ``IR_SE_50``), the recognizer of ALGORITHMS §0.2."""
    return IRNet(UNITS[50], se=True, in_chans=in_chans, widths=widths)


def ir_50(in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512)) -> IRNet:
    """IR-50 (face.evoLVe ``IR_50``): IR-SE-50 without the SE modules."""
    return IRNet(UNITS[50], se=False, in_chans=in_chans, widths=widths)


def ir_18(in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512)) -> IRNet:
    """IR-18: insightface ``iresnet18`` unit counts (2, 2, 2, 2) with the face.evoLVe IR unit."""
    return IRNet(UNITS[18], se=False, in_chans=in_chans, widths=widths)
