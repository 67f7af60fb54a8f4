"""Batched, on-device image augmentation, no per-image Python: one random affine transform per image
(:class:`RandomAffine`), then random erasing (:class:`RandomErasing`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vit_lightning.errors import SettingError


def uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``n`` draws from U(low, high) on the CPU."""
    return torch.rand(n, generator=generator) * (high - low) + low


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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return images
        n = images.shape[0]
        angle = uniform(self.generator, n, -self.degrees, self.degrees) * (math.pi / 180)
        scale = uniform(self.generator, n, *self.scale)
        # affine_grid maps output to input coordinates in [-1, 1]: invert scale, translation is 2x the fraction.
        shift = uniform(self.generator, 2 * n, -2 * self.translate, 2 * self.translate).reshape(n, 2)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        flip = 1.0 - 2.0 * (torch.rand(n, generator=self.generator) < self.hflip).float()  # -1 mirrors x
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomErasing:
    """Random erasing (Zhong et al. 2020) for a batch ``[B, C, H, W]`` of images in [0, 1]: with probability
    ``probability`` an image gets one rectangle of uniform noise, of ``area`` (a fraction of the image, 2-40%) and
    an aspect ratio from ``aspect`` to ``1 / aspect`` (0.3-3.3), the paper's settings; a rectangle taller or wider
    than the image is cut to it (the paper draws again).

    Draws come from ``generator`` (a :class:`RandomAffine`'s, so one seed fixes both); the noise is made on the CPU
    and moved to the images' device.
    """

    def __init__(self, probability: float, generator: torch.Generator, area: tuple[float, float] = (0.02, 0.4),
                 aspect: float = 0.3):
        if not 0 <= probability <= 1:
            raise SettingError(f"--data.erasing is the probability of erasing a rectangle of a training image, from 0 "
                               f"to 1; got {probability}")
        self.probability = probability
        self.generator = generator
        self.area = area
        self.aspect = aspect

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.probability == 0:
            return images
        n, _, height, width = images.shape
        area = uniform(self.generator, n, *self.area) * height * width
        ratio = torch.exp(uniform(self.generator, n, math.log(self.aspect), -math.log(self.aspect)))
        rows, columns = (area * ratio).sqrt().clamp(max=height), (area / ratio).sqrt().clamp(max=width)
        top = torch.rand(n, generator=self.generator) * (height - rows)
        left = torch.rand(n, generator=self.generator) * (width - columns)
        erase = torch.rand(n, generator=self.generator) < self.probability
        y, x = torch.arange(height), torch.arange(width)
        in_rows = (y >= top[:, None]) & (y < (top + rows)[:, None])
        in_columns = (x >= left[:, None]) & (x < (left + columns)[:, None])
        mask = (in_rows[:, :, None] & in_columns[:, None, :] & erase[:, None, None])[:, None]
        noise = torch.rand(images.shape, generator=self.generator)
        return torch.where(mask.to(images.device), noise.to(images.device, images.dtype), images)
