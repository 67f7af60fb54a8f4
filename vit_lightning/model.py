"""A Vision Transformer in plain PyTorch (no Lightning): from pixels to logits, the attention maps and their rollout.

Its parts (tokenizers, attention, blocks, pooling) are in :mod:`vit_lightning.layers`; export, the model folder and
the demo import ``VisionTransformer`` alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vit_lightning.errors import SettingError
from vit_lightning.layers import (ConvTokenizer, PatchTokenizer, SequencePooling, ViTBlock,
                                  get_positional_embeddings)


class VisionTransformer(nn.Module):
    """ViT classifier: tokenizer, position embedding, ``depth`` blocks, pooling, head.

    ``tokenizer``: ``patch`` (linear patch embedding) or ``conv`` (:class:`ConvTokenizer`, ``patch_size`` a power of
    two); either way the image becomes a ``(image_size / patch_size)``-square grid of tokens.
    ``stem_channels``: a full-resolution convolution before the conv tokenizer's strided ones (0: none).
    ``conv_mlp``: a depthwise 3x3 convolution over the token grid inside every block's MLP (:class:`ViTBlock`).
    ``locality_attention``: locality self-attention in every block (LSA: learned temperatures, no attention of a token
    to itself; :class:`~vit_lightning.layers.MultiHeadSelfAttention`).
    ``drop_path``: stochastic depth in training, rising linearly over the blocks from 0 in the first to ``drop_path``
    in the last (DeiT's and CCT's rule; :func:`~vit_lightning.layers.stochastic_depth`).
    ``pool``: the class token (``cls``), the mean of the tokens (``mean``) or :class:`SequencePooling` (``seq``).
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        patch_size: int = 4,
        num_classes: int = 10,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        pool: Literal["cls", "mean", "seq"] = "cls",
        pos_embedding: Literal["sincos", "learned"] = "sincos",
        tokenizer: Literal["patch", "conv"] = "patch",
        stem_channels: int = 0,
        conv_mlp: bool = False,
        locality_attention: bool = False,
    ):
        super().__init__()
        counts = dict(image_size=image_size, in_channels=in_channels, patch_size=patch_size, num_classes=num_classes,
                      dim=dim, depth=depth, heads=heads)
        for name, value in counts.items():  # before any division by them
            if value < 1:
                raise SettingError(f"{name}={value} must be at least 1; choose a positive {name}")
        if mlp_ratio <= 0:
            raise SettingError(f"mlp_ratio={mlp_ratio} must be positive; choose e.g. 4.0")
        if image_size % patch_size:
            raise SettingError(f"image_size={image_size} is not divisible by patch_size={patch_size}; "
                               f"choose a patch_size that divides {image_size}")
        if dim % heads:
            raise SettingError(f"dim={dim} is not divisible by heads={heads}; choose heads that divide dim")
        if pool not in ("cls", "mean", "seq"):
            raise SettingError(f"pool must be 'cls', 'mean' or 'seq', got {pool!r}")
        if tokenizer not in ("patch", "conv"):
            raise SettingError(f"tokenizer must be 'patch' or 'conv', got {tokenizer!r}")
        if pos_embedding not in ("sincos", "learned"):
            raise SettingError(f"pos_embedding must be 'sincos' or 'learned', got {pos_embedding!r}")
        if not 0.0 <= dropout < 1.0:
            raise SettingError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= drop_path < 1.0:
            raise SettingError(f"drop_path must be in [0, 1), got {drop_path}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.pool = pool
        self.grid_size = image_size // patch_size
        num_tokens = self.grid_size**2 + (pool == "cls")

        if tokenizer == "conv":
            self.patch_embed: nn.Module = ConvTokenizer(in_channels, dim, patch_size, stem_channels)
        else:
            self.patch_embed = PatchTokenizer(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        if pos_embedding == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        else:
            self.register_buffer("pos_embedding", get_positional_embeddings(num_tokens, dim).unsqueeze(0))
        self.dropout = nn.Dropout(dropout)
        conv_grids = [self.grid_size if conv_mlp else 0] * depth
        if pool == "cls":  # the last block's grid tokens never reach the head: a convolution there could not learn
            conv_grids[-1] = 0
        drop_rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp_ratio, dropout, grid, locality_attention, rate)
                                    for grid, rate in zip(conv_grids, drop_rates))
        self.norm = nn.LayerNorm(dim)
        self.sequence_pool = SequencePooling(dim) if pool == "seq" else None
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)
        nn.init.zeros_(self.head.weight)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` to input tokens ``[B, N, dim]`` (class token first, if any)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        tokens = self.patch_embed(images)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.dropout(tokens + self.pos_embedding)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            pooled = features[:, 0]
        elif self.pool == "seq":
            pooled = self.sequence_pool(features)
        else:
            pooled = features.mean(dim=1)
        return self.head(pooled)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that take no weight decay besides biases and norms (timm's convention)."""
        return {name for name in ("cls_token", "pos_embedding") if isinstance(getattr(self, name), nn.Parameter)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Attention weights of every block, ``[depth, B, heads, N, N]`` (eval-mode forward)."""
        return self._attention_maps_and_features(images)[0]

    @torch.no_grad()
    def _attention_maps_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attention_maps` and :meth:`forward_features` from one pass through the blocks."""
        maps = []
        x = self.embed(images)
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.norm1(x)))
            x = block(x)
        return torch.stack(maps), self.norm(x)

    def attention_rollout(self, images: torch.Tensor) -> torch.Tensor:
        """Attention rollout (Abnar & Zuidema, 2020) to the patch grid: ``[B, grid, grid]``, rows summing to 1.

        Uses the class token's attention with ``pool='cls'``, the pooling weights with ``pool='seq'``, the mean
        over tokens with ``pool='mean'``.
        """
        maps, features = self._attention_maps_and_features(images)
        maps = maps.mean(dim=2)  # average heads: [depth, B, N, N]
        eye = torch.eye(maps.shape[-1], device=maps.device)
        rollout = eye.expand_as(maps[0])
        for attention in maps:
            attention = 0.5 * attention + 0.5 * eye
            rollout = (attention / attention.sum(dim=-1, keepdim=True)) @ rollout
        if self.pool == "cls":
            relevance = rollout[:, 0, 1:]
        elif self.pool == "seq":
            weights = self.sequence_pool.weights(features)  # [B, N]
            relevance = (weights.unsqueeze(1) @ rollout).squeeze(1)
        else:
            relevance = rollout.mean(dim=1)
        relevance = relevance / relevance.sum(dim=-1, keepdim=True)
        return relevance.reshape(-1, self.grid_size, self.grid_size)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
