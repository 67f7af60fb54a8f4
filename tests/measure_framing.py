"""README's framing figures: ``python tests/measure_framing.py CHECKPOINT DATA_ROOT [N]``.

The checkpoint's accuracy on the first N test images (default all) of its dataset, as they are and as photos of
ink on paper (support.on_page: 3x size, dark on a 256x192 light-grey page with noise, at a random place; seed 0),
each prepared without and with the dataset's framing (vit_lightning.data.preprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from support import on_page
from vit_lightning.data.datasets import DATASETS, unit_range
from vit_lightning.data.idx import find_idx_files, load_split
from vit_lightning.data.preprocess import frame, prepare_image
from vit_lightning.serving.checkpoints import load_checkpoint
from vit_lightning.serving.model_folder import from_checkpoint


def accuracy(model, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predicted = torch.cat([model(unit_range(batch)).argmax(-1) for batch in pixels.split(500)])
    return (predicted == labels).float().mean().item()


def main(checkpoint: str, root: str, n: int | None = None) -> None:
    model = from_checkpoint(load_checkpoint(Path(checkpoint)), checkpoint)
    framing = DATASETS[model.dataset].framing
    images, labels = load_split(find_idx_files(Path(root), model.dataset), "test")
    images, labels = images[:n], labels[:n]
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(on_page(image.numpy(), rng)) for image in images]
    rows = {
        "test images as they are": images,
        "test images, framed again": torch.stack([frame(image.numpy().astype(np.float32), 28, framing)
                                                  for image in images]),
        "on paper, resized as a whole (--data.framing false)": torch.stack([prepare_image(page, 28) for page in pages]),
        "on paper, framed (default)": torch.stack([prepare_image(page, 28, framing=framing) for page in pages]),
    }
    print(f"{checkpoint} ({model.dataset}), {len(labels)} test images:")
    for name, pixels in rows.items():
        print(f"  {name:<52} {accuracy(model, pixels, labels):.2%}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
