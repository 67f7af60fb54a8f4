"""Batched, on-device image augmentation: one random affine transform per image, no per-image Python."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vit_lightning.errors import SettingError


class RandomAffine:
    """Random rotation, translation, scale and (with probability ``hflip``) horizontal flip for a batch
    ``[B, C, H, W]`` of float images.

    Parameters are drawn from its own CPU generator (seed it per rank for reproducible runs); the warp itself
    runs on the images' device with one ``affine_grid`` + ``grid_sample`` call.
    """

    def __init__(self, degrees: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1),
                 hflip: float = 0.0, seed: int = 0):
        if degrees < 0 or not 0 <= translate < 1 or not 0 < scale[0] <= scale[1] or not 0 <= hflip <= 1:
            raise SettingError(
                f"augmentation needs degrees >= 0, 0 <= translate < 1, 0 < scale[0] <= scale[1] and 0 <= hflip <= 1;"
                f" got degrees={degrees}, translate={translate}, scale={tuple(scale)}, hflip={hflip}"
            )
        self.degrees = degrees
        self.translate = translate
        self.scale = tuple(scale)
        self.hflip = hflip
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def is_identity(self) -> bool:
        return self.degrees == 0 and self.translate == 0 and self.scale == (1.0, 1.0) and self.hflip == 0

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (high - low) + low

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return images
        n = images.shape[0]
        angle = self._uniform(n, -self.degrees, self.degrees) * (math.pi / 180)
        scale = self._uniform(n, *self.scale)
        # affine_grid maps output to input coordinates in [-1, 1]: invert scale, translation is 2x the fraction.
        shift = self._uniform(2 * n, -2 * self.translate, 2 * self.translate).reshape(n, 2)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        flip = 1.0 - 2.0 * (torch.rand(n, generator=self.generator) < self.hflip).float()  # -1 mirrors x
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
