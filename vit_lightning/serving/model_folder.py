"""The model folder: ``model.safetensors`` (weights, no pickle), ``config.json`` (architecture, class names,
normalisation) and a ``README.md`` model card. Loading a folder needs PyTorch, safetensors and huggingface_hub,
not Lightning: this module imports nothing of the training code at load time."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from vit_lightning.architecture import ARCHITECTURE, architecture
from vit_lightning.data.datasets import DATASETS, normalize
from vit_lightning.errors import UserError
from vit_lightning.model import VisionTransformer
from vit_lightning.serving.checkpoints import dataset_for, model_settings

FOLDER_FILES = ("config.json", "model.safetensors")


class PretrainedViT(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="vit-lightning",
    license="mit",
    pipeline_tag="image-classification",
    tags=["vision-transformer", "image-classification"],
):
    """A trained :class:`VisionTransformer` (``.model``) with its dataset's class names and normalisation.

    Input: float images ``[B, C, H, W]`` scaled to [0, 1], light strokes on a dark background (the normalisation
    is part of the model); output: logits ``[B, classes]``. ``save_pretrained(folder)``,
    ``PretrainedViT.from_pretrained(folder)`` and ``push_to_hub(repo_id)`` come from huggingface_hub's
    ``PyTorchModelHubMixin``; :func:`load_model_folder` loads a local folder with one-line errors.
    """

    def __init__(self, architecture: dict, classes: list[str], mean: float, std: float, dataset: str = ""):
        super().__init__()
        self.model = VisionTransformer(**architecture)
        self.architecture = {**ARCHITECTURE, **architecture}
        self.classes = list(classes)
        self.mean, self.std, self.dataset = float(mean), float(std), dataset
        self.eval()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images to the normalised input the ViT was trained on."""
        return normalize(images, self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))

    def attention_rollout(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's attention rollout ``[B, grid, grid]`` for [0, 1] images."""
        return self.model.attention_rollout(self.normalize(images))


def from_checkpoint(checkpoint: dict, path: str | Path, dataset: str | None = None) -> PretrainedViT:
    """The model of a training checkpoint (as loaded by :func:`vit_lightning.serving.checkpoints.load_checkpoint`),
    with the class names and normalisation of the dataset it was trained on (``dataset`` may only repeat it; it
    names the dataset of a checkpoint that does not say)."""
    settings = model_settings(checkpoint, path)
    if not settings:
        raise UserError(f"--ckpt_path {path} holds no model settings (hyper_parameters); pass a .ckpt file written "
                        "by this project's train.py")
    info = dataset_for(checkpoint, path, dataset)
    if info is None:
        raise UserError(f"--ckpt_path {path} does not say which dataset it was trained on; pass --data.dataset "
                        f"({', '.join(DATASETS)})")
    model = PretrainedViT(architecture(settings), list(info.classes), info.mean, info.std, info.name)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else type(error).__name__
        raise UserError(f"--ckpt_path {path}: its weights do not fit its own hyper-parameters ({reason[:160]}); "
                        "pass a checkpoint written by this project's train.py") from None
    return model.eval()


def model_card(model: PretrainedViT, *, checkpoint_name: str, epoch: int | None, test_accuracy: float,
               test_images: int, parameters: int, config: str, config_origin: str) -> str:
    """The folder's ``README.md``: what the model is, how well it did, how it was trained, how to use it, its limits."""
    a = model.architecture
    after = f" after epoch {epoch + 1}" if epoch is not None else ""
    return f"""---
library_name: vit-lightning
license: mit
pipeline_tag: image-classification
tags: [vision-transformer, image-classification, {model.dataset}]
metrics: [accuracy]
---

# Vision Transformer for {model.dataset}

A Vision Transformer written from scratch with the vit-lightning project and trained on {model.dataset}
({len(model.classes)} classes: {", ".join(model.classes)}). {parameters:,} parameters: {a["tokenizer"]} tokenizer
(patch size {a["patch_size"]}), width {a["dim"]}, depth {a["depth"]}, {a["heads"]} heads, MLP ratio {a["mlp_ratio"]},
{a["pos_embedding"]} position embeddings, {a["pool"]} pooling.

## Results

Test accuracy of this checkpoint (`{checkpoint_name}`{after}) on the {model.dataset} test split: **{test_accuracy:.2%}**
({test_images:,} images, single view, no test-time augmentation).

## Use

```python
from vit_lightning.serving.model_folder import load_model_folder   # PyTorch, safetensors, huggingface_hub; no Lightning
model = load_model_folder("THIS_FOLDER")                  # or PretrainedViT.from_pretrained(...)
probabilities = model(images).softmax(-1)                 # images: float [B, 1, 28, 28] in [0, 1]
print(model.classes[probabilities.argmax(-1)[0]])
```

Input: 28x28 grayscale images scaled to [0, 1], light strokes on a dark background as in {model.dataset}
(normalisation mean {model.mean}, std {model.std} is applied inside the model). `model.onnx` (onnxruntime) and
`model.pt2` (`torch.export.load`) take the same input, any batch size, and return the same logits.
`python -m vit_lightning.demo --model THIS_FOLDER` opens a drawing pad in the browser.

## Training

`python train.py fit --config config.yaml`, where `config.yaml` is the run's complete configuration below
(from {config_origin}):

```yaml
{config.strip()}
```

## Intended use and limits

- For learning, demonstrations and tests: classifying small centred grayscale images of the {model.dataset} kind.
- Anything else (photos, several objects, other classes, colour) still gets one of these {len(model.classes)}
  classes, often with high confidence: the model cannot say "none of these".
- The accuracy above holds for the dataset's own test split; drawings, photos and scans differ from it (stroke
  width, centring, background) and are classified less accurately. Dark-on-light images must be inverted and
  framed like the dataset's first (`predict` and the demo do it: see `vit_lightning.data.preprocess`).
- Not for decisions about people, safety or money.
"""


def save_model_folder(model: PretrainedViT, folder: Path, card: str) -> None:
    """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(card)  # first: save_pretrained then keeps it instead of a generic card
    model.save_pretrained(folder)


def load_model_folder(folder: str | Path) -> PretrainedViT:
    """Load a model folder (never from the network), in eval mode; a one-line :class:`UserError` if unusable."""
    folder = Path(folder)
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"--model {folder} is not a model folder (no {', '.join(missing)}); pass a folder "
                        "written by python -m vit_lightning.export")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints "Loading weights from local directory"
            model = PretrainedViT.from_pretrained(folder, local_files_only=True, strict=True)
    except Exception as error:  # noqa: BLE001 - a damaged config or weights file means the same to the user
        raise UserError(f"--model {folder}: cannot load the model ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0][:160] if str(error).strip() else ''}); "
                        "export it again") from None
    return model.eval()
