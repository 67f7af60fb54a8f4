"""Outside images to model input, the same for ``predict`` and the demo: upright (EXIF orientation), grayscale, light
strokes on a dark background like MNIST (photos and scans of ink on paper are inverted), and framed the way the
dataset's own images were (:class:`~vit_lightning.data.datasets.Framing`); image files and folders for
``predict``. No Lightning import: the demo and the exported model folder use it without the training code."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vit_lightning.data.datasets import Framing
from vit_lightning.errors import UserError

# An image is "dark strokes on a light background" when its outermost pixels average above mid-grey. On the
# Fashion-MNIST test set the 1-pixel frame averages at most 95 (of 255), so no test image is inverted, and every
# inverted test image is inverted back.
LIGHT_BACKGROUND = 127.5
# Framing: the object is what stands out from the background (the median of the image's 1-pixel frame) by more
# than NOISE times the frame's noise (its median absolute deviation, as a standard deviation) and more than LEAST
# of the brightest pixel; less becomes black, as MNIST's background (paper texture). The box leaves out MARGIN of
# the image at each edge (paper edges, scanner shadows) and TRIM of the object's pixels at each side (specks of
# dirt).
NOISE, LEAST, MARGIN, TRIM = 5.0, 0.02, 0.02, 0.005

def outermost_pixels(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The 1-pixel frame of an image ``[H, W]``, as float64: what the background is judged by."""
    pixels = np.asarray(image, dtype=np.float64)
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def has_light_background(image: torch.Tensor | np.ndarray) -> bool:
    """Whether an image ``[H, W]`` (0..255) has a light background: the mean of its 1-pixel frame is above mid-grey."""
    return float(outermost_pixels(image).mean()) > LIGHT_BACKGROUND


def grayscale(image: Image.Image) -> Image.Image:
    """An 8-bit grayscale (``L``) PIL image. 16-bit images (modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) are scaled
    from 0..65535 to 0..255 and 32-bit float images (mode ``F``, e.g. TIFFs) from 0..1 when all their values are
    in 0..1, where Pillow's own conversion would clip them to white or to black."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if 0 <= values.min() and values.max() <= 1:
            values = values * 255.0
    else:
        return image.convert("L")
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))


def prepare_image(image: Image.Image, size: int, auto_invert: bool = True, framing: Framing | None = None
                  ) -> torch.Tensor:
    """A PIL image as the model sees it: uint8 ``[size, size]``, upright as its EXIF orientation says, grayscale.

    Transparent pixels count as white (drawing apps and the demo's sketchpad leave the background transparent).
    With ``auto_invert``, an image with a light background (see :func:`has_light_background`) is inverted, so a
    digit written on paper looks like an MNIST digit. With ``framing`` (the dataset's), an image larger or smaller
    than ``size`` is framed by :func:`frame`; without it, or when it is ``size`` x ``size`` already (the dataset's
    own format), it is resized as a whole (bilinear).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    gray = grayscale(image)
    if framing is None or gray.size == (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(size, size)
        return 255 - pixels if auto_invert and has_light_background(pixels) else pixels
    pixels = np.asarray(gray, dtype=np.float32)
    if auto_invert and has_light_background(pixels):
        pixels = 255 - pixels
    return frame(pixels, size, framing)


def frame(pixels: np.ndarray, size: int, framing: Framing) -> torch.Tensor:
    """Light strokes on a dark background ``[H, W]`` (0..255, any size) framed like the dataset's images: the
    background and its noise (see :data:`NOISE`) subtracted and the levels stretched to 0..255, the bounding box of
    the strokes (see :data:`MARGIN`, :data:`TRIM`) scaled to ``framing.box`` pixels on its longer side
    (anti-aliased, aspect ratio kept) and centred in ``size`` x ``size`` by its centre of mass or its box. A blank
    image becomes black. Returns uint8 ``[size, size]``."""
    border = outermost_pixels(pixels)
    background = np.median(border)
    ink = np.clip(pixels - background, 0, None)
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    peak = float(ink.max())
    floor = max(NOISE * noise, LEAST * peak)
    if peak <= floor:  # blank, or noise only: the background
        return torch.zeros(size, size, dtype=torch.uint8)
    levels = np.clip((ink - floor) / (peak - floor), 0, 1) * 255
    strokes = ink > floor
    height, width = strokes.shape
    dy, dx = int(MARGIN * height), int(MARGIN * width)
    inside = np.zeros_like(strokes)
    inside[dy:height - dy, dx:width - dx] = strokes[dy:height - dy, dx:width - dx]
    if not inside.any():  # only at the edges: use them
        inside = strokes
    top, bottom = _extent(inside.sum(axis=1))
    left, right = _extent(inside.sum(axis=0))
    box = levels[top:bottom, left:right]
    scale = framing.box / max(box.shape)
    shape = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))  # PIL: (width, height)
    scaled = np.asarray(Image.fromarray(box.astype(np.float32)).resize(shape, Image.Resampling.BILINEAR))
    scaled = scaled.clip(0, 255)
    if framing.by_mass and scaled.sum() > 0:
        rows, cols = np.indices(scaled.shape) + 0.5  # pixel centres
        centre = ((rows * scaled).sum() / scaled.sum(), (cols * scaled).sum() / scaled.sum())
    else:
        centre = (scaled.shape[0] / 2, scaled.shape[1] / 2)
    canvas = np.zeros((size, size), dtype=np.float32)
    _paste(canvas, scaled, round(size / 2 - centre[0]), round(size / 2 - centre[1]))
    return torch.from_numpy(canvas.round().astype(np.uint8))


def _extent(counts: np.ndarray) -> tuple[int, int]:
    """``(first, last + 1)`` of the rows (or columns) with ``counts`` of stroke pixels, leaving out :data:`TRIM`
    of them at each end."""
    cumulative = np.cumsum(counts)
    total = cumulative[-1]
    first = int(np.searchsorted(cumulative, TRIM * total, side="right"))
    last = int(np.searchsorted(cumulative, (1 - TRIM) * total, side="left"))
    return first, max(first, last) + 1


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Put ``patch`` into ``canvas`` with its top-left corner at ``(top, left)``; what falls outside is cut off."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + patch.shape[0], canvas.shape[0]), min(left + patch.shape[1], canvas.shape[1])
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]


def printable(text: str) -> str:
    """``text`` with the bytes of file names that are not UTF-8 (Python's surrogate escapes) shown as ``\\xNN``, so
    any file name can be printed."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class NotARegularFile(Exception):
    """A named pipe, a device or a socket: reading it could wait forever."""


def read_image(file: Path, size: int, auto_invert: bool = True, framing: Framing | None = None) -> torch.Tensor:
    """One image file, prepared as in :func:`prepare_image`; a file that is not a regular file raises
    :class:`NotARegularFile` without waiting for a writer, one Pillow cannot read its own errors."""
    descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe opens at once, with or without a writer
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFile
        os.set_blocking(descriptor, True)
        with Image.open(stream) as image:
            return prepare_image(image, size, auto_invert, framing)


def load_images(path: Path, size: int, auto_invert: bool = True, framing: Framing | None = None
                ) -> tuple[torch.Tensor, list[str], list[str]]:
    """Grayscale uint8 images ``[N, size, size]`` from an image file or a folder of them (and its subfolders), in
    any format Pillow reads, prepared as in :func:`prepare_image`.

    Returns the images, their file names (relative to a folder), and one line per file that was skipped.
    """
    if not path.exists():
        raise UserError(f"--data.predict_path {path} does not exist; give an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if not p.is_dir()) if path.is_dir() else [path]
    images, names, failures = [], [], []
    for file in files:
        try:
            images.append(read_image(file, size, auto_invert, framing))
            names.append(str(file.relative_to(path)) if path.is_dir() else file.name)
        except NotARegularFile:
            failures.append(f"{file}: not a regular file")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            failures.append(f"{file}: not a readable image ({type(e).__name__})")
    if not images:
        raise UserError(f"no readable images in --data.predict_path {path} ({len(failures)} files skipped); give "
                        "image files Pillow reads (PNG, JPEG, TIFF, PPM, ...)")
    return torch.stack(images), names, failures
