"""What the papers' trunks share: the timm-ResNet surface the harness reaches into (stem, four
stages, identity pool/fc) and a forward that returns the last feature map. Subclasses build
``conv1, bn1, act1, maxpool, layer1..layer4`` and define ``make_neck`` (their output layer)."""
from __future__ import annotations

from torch import Tensor, nn


class StagedTrunk(nn.Module):
    """Stem → ``layer1..layer4`` → feature map; no pooling, no head (the neck is the recognizer's)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_pool = nn.Identity()
        self.fc = nn.Identity()
        self.drop_rate = 0.0

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        """No head: the embedding layer is the recognizer's neck (:meth:`make_neck`)."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def make_neck(self, embedding_dim: int, dropout: float,
                  feat_shape: tuple[int, int, int]) -> nn.Module:
        raise NotImplementedError
