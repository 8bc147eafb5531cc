"""A ViT recognizer split into a client front and a server tail (ALGORITHMS §9, §0.2).

XNN's public code [CODE bryanduran99/privdl] cuts a ViT-B/16 after its 5th block: the client
holds the patch embedding, the position embedding and the first blocks and uploads the token
map ``h [T, d]``; the cloud holds the remaining blocks, an embedding layer and the margin head.
Here the ViT is timm's ``VisionTransformer`` built directly (no pretrained weights, nothing
downloads) and cut the same way:

- :class:`ViTClient`: (resize to ``img_size`` when the input side differs) → patch embedding →
  + position embedding → ``norm_pre`` → blocks ``[0, client_depth)``; returns the token map as a
  *token grid* ``[B, d, gh, gw]`` (token ``t = i·gw + j`` at row ``i``, column ``j``), so the
  harness's 2-D decoders (§7.2, §7.1) read it as a ``d``-channel map. ``grid_to_tokens`` /
  ``tokens_to_grid`` convert.
- :class:`ViTServer`: blocks ``[client_depth, client_depth + server_depth)`` → LayerNorm → mean
  over tokens → Linear(d → embedding) → BN1d, with an ArcFace head (same interface as
  :class:`bench.recognition.Recognizer`: ``forward`` → embedding, ``loss``, ``mixed_loss``).

[ASSUMP] no class token (``class_token=False``) and mean pooling: the token map is then exactly
the ``gh × gw`` patch grid (64 tokens in the quick preset, as §9 asks), and the server tail —
attention blocks without position information, a LayerNorm and a mean — is equivariant/invariant
to a permutation of the tokens, which XNN relies on. The public code's MoCo-v3 ViT has a class
token (197 = 1 + 196 tokens); this is the one structural difference.

Sizes (:class:`ViTSplitConfig`): the quick preset uses 32 px gray faces with ``patch_size=4``
(an 8 × 8 grid, 64 tokens; no upsampling) and a narrow, shallow ViT; the paper preset uses
ViT-B/16 (``embed_dim=768``, 12 heads, client 5 blocks, server 6 blocks) with the image resized
inside the client to ``img_size`` (112 or 224 px).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from bench.core.errors import ConfigError


@dataclass(frozen=True)
class ViTSplitConfig:
    """Architecture of the split ViT (ALGORITHMS §9). ``img_size``: the side the client works at
    (inputs of another side are bilinearly resized to it inside the client)."""

    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 96
    num_heads: int = 4
    client_depth: int = 2
    server_depth: int = 2
    mlp_ratio: float = 2.0

    def validate(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError(f"vit img_size {self.img_size} must be a multiple of patch_size "
                              f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"vit embed_dim {self.embed_dim} must be a multiple of num_heads "
                              f"{self.num_heads}")
        if self.client_depth < 0 or self.server_depth < 1:
            raise ConfigError("vit client_depth must be >= 0 and server_depth >= 1, got "
                              f"{self.client_depth}, {self.server_depth}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    @property
    def tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def token_shape(self) -> tuple[int, int, int]:
        """Per-sample shape of the client's output token grid ``(d, gh, gw)``."""
        return (self.embed_dim, *self.grid)


def grid_to_tokens(r: Tensor) -> Tensor:
    """``[B, d, gh, gw]`` → ``[B, T, d]`` (row-major tokens); ``[B, T, d]`` passes through."""
    return r.flatten(2).transpose(1, 2) if r.ndim == 4 else r


def tokens_to_grid(h: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, T, d]`` → ``[B, d, gh, gw]`` (inverse of :func:`grid_to_tokens`)."""
    return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], *grid)


def build_vit(cfg: ViTSplitConfig) -> VisionTransformer:
    """The whole timm ViT (``client_depth + server_depth`` blocks), randomly initialised."""
    cfg.validate()
    return VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size,
                             in_chans=cfg.in_chans, num_classes=0, embed_dim=cfg.embed_dim,
                             depth=cfg.client_depth + cfg.server_depth, num_heads=cfg.num_heads,
                             mlp_ratio=cfg.mlp_ratio, class_token=False, global_pool="avg",
                             fc_norm=False)


class ViTClient(nn.Module):
    """Patch + position embedding and the first ``client_depth`` blocks → token grid."""

    def __init__(self, vit: VisionTransformer, cfg: ViTSplitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = vit.patch_embed
        self.pos_embed = vit.pos_embed
        self.pos_drop, self.norm_pre = vit.pos_drop, vit.norm_pre
        self.blocks = nn.Sequential(*list(vit.blocks)[:cfg.client_depth])

    def forward(self, x: Tensor) -> Tensor:
        side = self.cfg.img_size
        if x.shape[-2:] != (side, side):  # e.g. 112 px faces into a 224 px ViT-B/16
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        h = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        h = self.blocks(self.norm_pre(h))
        return tokens_to_grid(h, self.cfg.grid)


class ViTServer(nn.Module):
    """Remaining blocks → LayerNorm → token mean → Linear → BN1d embedding, ArcFace ``head``.
    Reads a token grid ``[B, d, gh, gw]`` or tokens ``[B, T, d]``."""

    def __init__(self, vit: VisionTransformer, cfg: ViTSplitConfig, head: nn.Module,
                 embedding_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.Sequential(*list(vit.blocks)[cfg.client_depth:])
        self.norm = vit.norm
        self.neck = nn.Sequential(nn.Linear(cfg.embed_dim, embedding_dim, bias=False),
                                  nn.BatchNorm1d(embedding_dim))
        self.head = head
        self.in_shape = cfg.token_shape

    def forward(self, r: Tensor) -> Tensor:
        h = self.norm(self.blocks(grid_to_tokens(r)))
        return self.neck(h.mean(1))

    def loss(self, r: Tensor, y: Tensor) -> Tensor:
        return self.head.loss(self(r), y)

    def mixed_loss(self, r: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.head.mixed_loss(self(r), gt, co)


class ViTRecognizer(nn.Module):
    """Client and server together: the clean split recognizer on images (stage 0 / teacher)."""

    def __init__(self, client: ViTClient, server: ViTServer) -> None:
        super().__init__()
        self.client, self.server = client, server
        self.in_shape = (client.cfg.in_chans, client.cfg.img_size, client.cfg.img_size)

    @property
    def head(self) -> nn.Module:
        return self.server.head

    def forward(self, x: Tensor) -> Tensor:
        return self.server(self.client(x))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.server.loss(self.client(x), y)

    def mixed_loss(self, x: Tensor, gt: Tensor, co: Tensor) -> Tensor:
        return self.server.mixed_loss(self.client(x), gt, co)


def vit_split(cfg: ViTSplitConfig, num_classes: int, embedding_dim: int, s: float,
              m: float) -> ViTRecognizer:
    """A fresh split ViT recognizer (client + server + ArcFace head). Initialised from torch's
    global RNG: build it under :func:`bench.recognition.build_seeded`."""
    from bench.recognition import ArcFaceHead

    vit = build_vit(cfg)
    client = ViTClient(vit, cfg)
    server = ViTServer(vit, cfg, ArcFaceHead(embedding_dim, num_classes, s, m), embedding_dim)
    return ViTRecognizer(client, server)


def fresh_tail(cfg: ViTSplitConfig, num_classes: int, embedding_dim: int, s: float,
               m: float) -> ViTServer:
    """A freshly initialised server tail of the same architecture (XNN's cloud tail, XNN-d's
    auxiliary/attacker tails, the expected-recognition attacker's tail)."""
    return vit_split(cfg, num_classes, embedding_dim, s, m).server
