"""timm backbones (ResNet family first) with the stem adapted to the representation.

ALGORITHMS §0.2 "Stem adapted to the representation": a frequency or feature map (upsampled BDCT
with 63/64 channels, DuetFace's 162, a split recognizer's feature map) never meets a 7×7 stride-2
stem or a max-pool, whatever its side; images keep timm's stem.
"""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

from bench.core.errors import ConfigError

#: timm families whose stage widths follow ``channels=`` (``recognizer.widths``).
WIDTH_FAMILIES = ("resnet", "seresnet", "resnext")


def is_timm_model(name: str) -> bool:
    """True when timm has an architecture of that name (no weights are fetched)."""
    return bool(timm.is_model(name))


def timm_backbone(name: str, in_chans: int, *, widths: tuple[int, ...] = (64, 128, 256, 512),
                  freq_map: bool = False) -> nn.Module:
    """``timm.create_model(name)`` without classifier or pooling (``forward`` returns the last
    feature map); with ``freq_map`` the stem becomes Conv3×3 stride 1 (no bias) and the max-pool
    ``nn.Identity``. Models without ``conv1`` (non-ResNet families) keep their own stem."""
    kwargs: dict[str, Any] = {"in_chans": in_chans, "num_classes": 0, "global_pool": ""}
    if name.startswith(WIDTH_FAMILIES):
        kwargs["channels"] = tuple(widths)
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"recognizer.backbone {name!r} cannot be built: {exc}") from None
    if isinstance(net, timm.models.resnet.ResNet):
        # global_pool="" pools nothing already; plain Identity = the interface the harness expects
        net.global_pool = nn.Identity()
    if freq_map and hasattr(net, "conv1"):
        # bn1 fixes the stem width (64, or 2·stem_width for timm's deep 'd' stems)
        bn1 = getattr(net, "bn1", None)
        if isinstance(bn1, nn.BatchNorm2d):
            stem_out = bn1.num_features
        elif isinstance(net.conv1, nn.Conv2d):
            stem_out = net.conv1.out_channels
        else:
            stem_out = widths[0]
        net.conv1 = nn.Conv2d(in_chans, stem_out, 3, 1, 1, bias=False)
        if hasattr(net, "maxpool"):
            net.maxpool = nn.Identity()
    return net
