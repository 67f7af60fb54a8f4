"""Outside images to model input, the same for ``predict`` and the demo: grayscale, resized, and light strokes on a
dark background like MNIST (photos and scans of ink on paper are inverted); image files and folders for
``predict``. No Lightning import: the demo and the exported model folder use it without the training code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vit_lightning.errors import UserError

# An image is "dark strokes on a light background" when its outermost pixels average above mid-grey. On the
# Fashion-MNIST test set the 1-pixel frame averages at most 95 (of 255), so no test image is inverted, and every
# inverted test image is inverted back.
LIGHT_BACKGROUND = 127.5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}


def has_light_background(image: torch.Tensor) -> bool:
    """Whether a uint8 image ``[H, W]`` has a light background: the mean of its 1-pixel frame is above mid-grey."""
    frame = torch.cat([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return frame.float().mean().item() > LIGHT_BACKGROUND


def grayscale(image: Image.Image) -> Image.Image:
    """An 8-bit grayscale (``L``) PIL image; 16-bit images (modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) are
    scaled from 0..65535 to 0..255, where Pillow's own conversion would clip everything above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled)
    return image.convert("L")


def prepare_image(image: Image.Image, size: int, auto_invert: bool = True) -> torch.Tensor:
    """A PIL image as the model sees it: uint8 ``[size, size]``, grayscale, bilinear resize.

    Transparent pixels count as white (drawing apps and the demo's sketchpad leave the background transparent).
    With ``auto_invert``, an image with a light background (see :func:`has_light_background`) is inverted, so a
    digit written on paper looks like an MNIST digit.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    gray = grayscale(image).resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(size, size)
    if auto_invert and has_light_background(pixels):
        pixels = 255 - pixels
    return pixels


def load_images(path: Path, size: int, auto_invert: bool = True) -> tuple[torch.Tensor, list[str], list[str]]:
    """Grayscale uint8 images ``[N, size, size]`` from an image file or a folder of them, prepared as in
    :func:`prepare_image` (light backgrounds inverted when ``auto_invert``).

    Returns the images, their file names, and one line per file that could not be read.
    """
    if not path.exists():
        raise UserError(f"--data.predict_path {path} does not exist; give an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    images, names, failures = [], [], []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(prepare_image(image, size, auto_invert))
            names.append(str(file.relative_to(path)) if path.is_dir() else file.name)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            failures.append(f"{file}: not a readable image ({type(e).__name__})")
    if not images:
        raise UserError(
            f"no readable images in --data.predict_path {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return torch.stack(images), names, failures
