"""The parts of the Vision Transformer in :mod:`vit_lightning.model`, in plain PyTorch (no Lightning): patches and
position codes, the tokenizers, attention, the block with its MLP, sequence pooling. Shapes: ``B`` images, ``N``
tokens of width ``dim`` (``C`` channels where the tokens are an image)."""

from __future__ import annotations

import math

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

    ``locality`` turns on locality self-attention (LSA, Lee et al. 2021, "Vision Transformer for Small-Size
    Datasets"): each head learns its own scale of ``q k^T`` (a temperature, starting at ``1/sqrt(d)``), and no token
    attends to itself, so attention goes to the other tokens rather than mostly to its own.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, locality: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # one dimension: the optimizer takes no weight decay on it, as on biases and norms
        self.scale = nn.Parameter(torch.full((heads,), self.head_dim**-0.5)) if locality else None

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, d]
        return qkv.unbind(0)  # unbind, not indexing: its backward stacks instead of filling zeros three times

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scale = self.head_dim**-0.5 if self.scale is None else self.scale.view(-1, 1, 1)
        scores = (q * scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        if self.scale is not None:  # locality: no token attends to itself
            itself = torch.eye(scores.shape[-1], dtype=torch.bool, device=scores.device)
            # the most negative float rather than -inf: a single token (a 1x1 grid) then attends to itself, not NaN
            scores = scores.masked_fill(itself, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        weights = F.dropout(self._weights(q, k), self.dropout, self.training)
        return self.proj((weights @ v).transpose(1, 2).flatten(2))  # [B, N, dim]

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix ``[B, heads, N, N]`` (for visualisation, not training)."""
        q, k, _ = self._split_heads(x)
        return self._weights(q, k)


def stochastic_depth(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016) on a residual branch ``[B, ...]``: in training, each image's branch is
    dropped (zero) with probability ``rate`` and the kept ones are scaled by ``1 / (1 - rate)``, so the expected
    output is unchanged; evaluation passes the branch through."""
    if not training or rate == 0.0:
        return branch
    keep = 1.0 - rate
    mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
    return branch * mask.div_(keep)


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
        # [B, N, C] is the grid in channels-last layout: viewed as [B, C, h, w] without a copy, and back likewise
        image = grid_tokens.reshape(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        mixed = self.conv(image).permute(0, 2, 3, 1).reshape(b, self.grid**2, c)
        return torch.cat([extra, mixed], dim=1) if n > self.grid**2 else mixed


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attention(LN(x))`` then ``x + MLP(LN(x))``.

    ``conv_grid`` > 0 (tokens on that square grid, after a class token if any) puts a :class:`TokenGridConv` between the MLP's
    first layer and its activation (PVTv2's convolutional feed-forward, Wang et al. 2022; LocalViT, Li et al. 2021):
    each token mixes with its 8 neighbours, a locality that attention must otherwise learn from the data.
    ``locality_attention``: locality self-attention (see :class:`MultiHeadSelfAttention`).
    ``drop_path``: the probability that training skips each branch for an image (:func:`stochastic_depth`).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, conv_grid: int = 0,
                 locality_attention: bool = False, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout, locality_attention)
        self.norm2 = nn.LayerNorm(dim)
        local = [TokenGridConv(hidden, conv_grid)] if conv_grid else []
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), *local, nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + stochastic_depth(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + stochastic_depth(self.mlp(self.norm2(x)), self.drop_path, self.training)
