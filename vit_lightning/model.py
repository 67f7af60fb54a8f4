"""A Vision Transformer in plain PyTorch (no Lightning): tokenizers, attention, blocks, pooling, head.

One file on purpose: the whole architecture reads top to bottom, from pixels to logits, and each part is used
only here (export, the model folder and the demo import ``VisionTransformer`` alone).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vit_lightning.errors import SettingError


def create_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split a batch of images ``[B, C, H, W]`` into flattened patches ``[B, N, C * patch_size**2]``.

    Patches are ordered row by row; each patch is flattened channel-first, then row, then column.
    """
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch_size}")
    gh, gw = h // patch_size, w // patch_size
    patches = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch_size * patch_size)


def get_positional_embeddings(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoidal position embeddings ``[num_tokens, dim]`` (Vaswani et al.)."""
    if dim % 2:
        raise SettingError(f"sinusoidal position embeddings need an even width, got {dim}; use an even dim")
    position = torch.arange(num_tokens, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    embeddings = torch.zeros(num_tokens, dim)
    embeddings[:, 0::2] = torch.sin(position * frequency)
    embeddings[:, 1::2] = torch.cos(position * frequency)
    return embeddings


class ConvTokenizer(nn.Module):
    """Convolutional stem ("Early Convolutions Help Transformers See Better", Xiao et al. 2021): stride-2 3x3
    convolutions with BatchNorm and ReLU, one per halving, from ``[B, C, H, W]`` to tokens ``[B, N, dim]``.

    ``downsample`` (a power of two) plays the part of the patch size: 4 turns 28x28 images into 7x7 tokens.
    Channels double towards ``dim`` (e.g. 1 -> dim/2 -> dim for two stages). ``stem_channels`` > 0 puts a
    stride-1 3x3 convolution with that many channels first, at full resolution: every strided stage then sees
    features rather than raw pixels, for about 10% more compute at width 64.
    """

    def __init__(self, in_channels: int, dim: int, downsample: int, stem_channels: int = 0):
        super().__init__()
        stages = downsample.bit_length() - 1
        if downsample < 2 or 2**stages != downsample:
            raise SettingError(f"the conv tokenizer halves the image per stage, so patch_size must be a power of two "
                               f"(2, 4, ...), got {downsample}; use the patch tokenizer for other sizes")
        if stem_channels < 0:
            raise SettingError(f"stem_channels={stem_channels} must be 0 (no full-resolution convolution) or more")
        widths = [in_channels] + [max(1, dim // 2 ** (stages - 1 - i)) for i in range(stages)]
        strides = [2] * stages
        if stem_channels:
            widths.insert(1, stem_channels)
            strides.insert(0, 1)
        layers = []
        for width_in, width_out, stride in zip(widths, widths[1:], strides):
            layers += [nn.Conv2d(width_in, width_out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width_out), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stem(images).flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]


class PatchTokenizer(nn.Sequential):
    """The origin's patch embedding: non-overlapping patches, each a Linear projection followed by LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__(nn.Linear(in_channels * patch_size**2, dim), nn.LayerNorm(dim))
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(create_patches(images, self.patch_size))


OBSOLETE_PARAMETERS = ("sequence_pool.score.bias",)  # in checkpoints of earlier versions; loading discards them


class SequencePooling(nn.Module):
    """CCT's sequence pooling (Hassani et al. 2021): a softmax-weighted sum of the tokens, weights learned.

    The score has no bias: softmax is shift-invariant, so a bias would never receive a gradient. Checkpoints made
    before it was dropped still load (:meth:`_load_from_state_dict` discards the inert value).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)

    def weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooling weights ``[B, N]``, summing to 1 over the tokens."""
        return torch.softmax(self.score(tokens).squeeze(-1), dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.weights(tokens).unsqueeze(1) @ tokens).squeeze(1)  # [B, 1, N] @ [B, N, dim] -> [B, dim]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "score.bias", None)  # see the class docstring
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, written out as ``softmax(q k^T / sqrt(d)) v``.

    Explicit matrix products rather than ``F.scaled_dot_product_attention``: for the few tokens of a 28x28 image
    (49) they train about 8% faster on a CPU than PyTorch's fused kernel, export to ONNX as plain operators, and
    :meth:`attention_weights` shares the code that trains.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, d]
        return qkv.unbind(0)  # unbind, not indexing: its backward stacks instead of filling zeros three times

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)  # [B, heads, N, N]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        weights = F.dropout(self._weights(q, k), self.dropout, self.training)
        return self.proj((weights @ v).transpose(1, 2).flatten(2))  # [B, N, dim]

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix ``[B, heads, N, N]`` (for visualisation, not training)."""
        q, k, _ = self._split_heads(x)
        return self._weights(q, k)


class TokenGridConv(nn.Module):
    """A depthwise 3x3 convolution over the tokens that form a ``grid`` x ``grid`` image: ``[B, N, C]`` -> ``[B, N, C]``.

    Tokens before the grid's (a class token) pass through unchanged, as in CeiT's locally-enhanced feed-forward.
    """

    def __init__(self, channels: int, grid: int):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        extra, grid_tokens = tokens.split([n - self.grid**2, self.grid**2], dim=1)
        image = grid_tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # row-major tokens back to the grid
        return torch.cat([extra, self.conv(image).flatten(2).transpose(1, 2)], dim=1)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attention(LN(x))`` then ``x + MLP(LN(x))``.

    ``conv_grid`` > 0 (tokens on that square grid, after a class token if any) puts a :class:`TokenGridConv` between the MLP's
    first layer and its activation (PVTv2's convolutional feed-forward, Wang et al. 2022; LocalViT, Li et al. 2021):
    each token mixes with its 8 neighbours, a locality that attention must otherwise learn from the data.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, conv_grid: int = 0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        local = [TokenGridConv(hidden, conv_grid)] if conv_grid else []
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), *local, nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier: tokenizer, position embedding, ``depth`` blocks, pooling, head.

    ``tokenizer``: ``patch`` (linear patch embedding) or ``conv`` (:class:`ConvTokenizer`, ``patch_size`` a power of
    two); either way the image becomes a ``(image_size / patch_size)``-square grid of tokens.
    ``stem_channels``: a full-resolution convolution before the conv tokenizer's strided ones (0: none).
    ``conv_mlp``: a depthwise 3x3 convolution over the token grid inside every block's MLP (:class:`ViTBlock`).
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
        pool: Literal["cls", "mean", "seq"] = "cls",
        pos_embedding: Literal["sincos", "learned"] = "sincos",
        tokenizer: Literal["patch", "conv"] = "patch",
        stem_channels: int = 0,
        conv_mlp: bool = False,
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
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp_ratio, dropout, grid) for grid in conv_grids)
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
