"""Recognizer backbones: the papers' networks beside timm's, behind one :func:`build_backbone`
(ARCHITECTURE "What grows next": Backbones; ALGORITHMS §0.2 and §6).

Every backbone returned speaks timm-ResNet: ``conv1``, ``bn1``, ``act1``, ``maxpool`` (the stem),
``layer1``..``layer4`` (four ``nn.Sequential`` stages), ``global_pool`` and ``fc``
(``nn.Identity``), ``drop_rate`` (0.0); ``forward(x)`` returns the last feature map
``[B, C, h, w]`` and ``forward_head(x)`` returns ``x``. The papers' backbones also define
``make_neck(embedding_dim, dropout, feat_shape)``, their reference output layer; without one the
harness uses the IR output layer (:func:`bench.backbones.irse.ir_neck`).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import timm
from torch import nn

from bench.backbones import inception_resnet_v1 as _inception
from bench.backbones import irse
from bench.backbones.irse import ir_neck
from bench.backbones.timm_resnet import is_timm_model, timm_backbone
from bench.core.errors import ConfigError

__all__ = ["BACKBONES", "BackboneSpec", "backbone_names", "build_backbone", "ir_neck"]

DEFAULT_WIDTHS = (64, 128, 256, 512)
#: Input channel counts that are images (gray, RGB); anything else is a frequency/feature map.
IMAGE_CHANNELS = (1, 3)


@dataclass(frozen=True)
class BackboneSpec:
    """A paper backbone: ``build(in_chans, widths)`` and the reference it follows."""

    build: Callable[[int, tuple[int, ...]], nn.Module]
    reference: str
    min_side: int = 1  # smallest input side its unpadded convs accept


def _inception_resnet_v1(in_chans: int, widths: tuple[int, ...]) -> nn.Module:
    return _inception.inception_resnet_v1(in_chans)  # fixed architecture: widths do not apply


BACKBONES: dict[str, BackboneSpec] = {
    "ir_se_50": BackboneSpec(irse.ir_se_50,
                             "face.evoLVe backbone/model_irse.py IR_SE_50 (ALGORITHMS §0.2)"),
    "ir_50": BackboneSpec(irse.ir_50, "face.evoLVe backbone/model_irse.py IR_50"),
    "ir_18": BackboneSpec(irse.ir_18, "insightface iresnet18 unit counts, face.evoLVe IR unit"),
    "inception_resnet_v1": BackboneSpec(
        _inception_resnet_v1, "facenet-pytorch models/inception_resnet_v1.py (ALGORITHMS §6)",
        min_side=_inception.MIN_SIDE),
}


def backbone_names() -> list[str]:
    """The papers' backbones this package defines itself (any timm name is accepted besides)."""
    return list(BACKBONES)


def build_backbone(name: str, in_chans: int, side: int, *,
                   widths: tuple[int, ...] = DEFAULT_WIDTHS,
                   freq_map: bool | None = None) -> nn.Module:
    """The recognizer trunk ``name`` for ``[in_chans, side, side]`` inputs.

    ``name`` is one of :func:`backbone_names` or any timm architecture. ``freq_map`` (default:
    ``in_chans`` is not 1 or 3) gives timm ResNets a Conv3×3 stride-1 stem without max-pool
    (ALGORITHMS §0.2); the IR nets already have that stem, and Inception-ResNet-v1 keeps its
    reference stem (AdvFace's split point, §6). For every backbone ``in_chans`` changes only the
    first conv. ``widths`` sets the stage widths of the IR nets and timm ResNet family; the
    Inception-ResNet-v1 architecture is fixed. Raises :class:`ConfigError` on an unknown name or
    an input too small for the network.
    """
    if freq_map is None:
        freq_map = in_chans not in IMAGE_CHANNELS
    spec = BACKBONES.get(name)
    if spec is not None:
        if side < spec.min_side:
            raise ConfigError(f"recognizer.backbone {name!r} needs inputs of at least "
                              f"{spec.min_side} px, got {side}; raise data.image_size or pick "
                              f"another backbone")
        return spec.build(in_chans, tuple(widths))
    if is_timm_model(name):
        return timm_backbone(name, in_chans, widths=tuple(widths), freq_map=freq_map)
    near = difflib.get_close_matches(name, backbone_names() + timm.list_models(), n=4, cutoff=0.6)
    if near:
        raise ConfigError(f"unknown recognizer backbone {name!r}; near matches: {', '.join(near)}; "
                          f"fix it with --set recognizer.backbone={near[0]}")
    raise ConfigError(f"unknown recognizer backbone {name!r} and no near match; fix it with "
                      f"--set recognizer.backbone=<one of {', '.join(BACKBONES)} or a timm model>")
