"""Pictures of what the model does: predictions, confusion matrix and attention, for W&B, TensorBoard or PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from vit_lightning.errors import SettingError


class Pictures(Callback):
    """At the end of validation (every ``every_n_epochs`` epochs and after the last; never with 0) and of
    testing, draw:

    - ``predictions``: the first ``num_images`` images with predicted and true labels, mistakes in red;
    - ``confusion_matrix``: over the whole set (synchronised across processes);
    - ``attention``: the attention rollout over the token grid for the first images (from the class token,
      the sequence-pooling weights or the mean over tokens, as the model pools; see ``attention_rollout``).

    They go to W&B (``WandbLogger.log_image``) or TensorBoard as images under ``val/...`` or ``test/...``;
    with other loggers (CSV) they are written as PNG files in ``LOG_DIR/pictures/``.
    Expects ``pl_module.model`` to be a :class:`~vit_lightning.model.VisionTransformer` and evaluation steps to
    return the logits.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 16):
        if every_n_epochs < 0 or num_images < 1:
            raise SettingError(f"--pictures.every_n_epochs must be >= 0 and --pictures.num_images >= 1, "
                               f"got {every_n_epochs} and {num_images}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._confusion: MulticlassConfusionMatrix | None = None
        self._active = False
        self._images: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None
        self._predictions: torch.Tensor | None = None

    def _due(self, trainer: Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not self.every_n_epochs:
            return False
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    def _start(self, pl_module: LightningModule) -> None:
        self._active = True
        if self._confusion is None:
            self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_classes)
        self._confusion.to(pl_module.device).reset()
        self._images = None

    def _collect(self, logits: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if not self._active:
            return
        images, targets = batch
        self._confusion.update(logits, targets)
        if self._images is None:
            self._images = images[: self.num_images].detach().float().cpu()
            self._targets = targets[: self.num_images].cpu()
            self._predictions = logits[: self.num_images].argmax(dim=-1).cpu()

    def _finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self._active:
            return
        self._active = False
        confusion = self._confusion.compute().cpu().numpy()  # collective: every rank takes part
        log_dir = trainer.log_dir or trainer.default_root_dir  # collective too (a broadcast)
        if not trainer.is_global_zero or self._images is None:
            return
        rollout = pl_module.model.attention_rollout(self._images.to(pl_module.device)).float().cpu()
        classes = getattr(trainer.datamodule, "classes", None) or [str(i) for i in range(len(confusion))]
        pictures = {
            "predictions": draw_predictions(self._images, self._targets, self._predictions, classes),
            "confusion_matrix": draw_confusion_matrix(confusion, classes),
            "attention": draw_attention(self._images, rollout),
        }
        publish(trainer, stage, pictures, Path(log_dir) / "pictures")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._due(trainer):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


def publish(trainer: Trainer, stage: str, pictures: dict[str, np.ndarray], folder: Path) -> None:
    """Send RGB pictures to the first logger that takes images (W&B, TensorBoard), else write PNG files to
    ``folder``."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for name, picture in pictures.items():
                logger.log_image(key=f"{stage}/{name}", images=[picture], step=step)
            return
        if isinstance(logger, TensorBoardLogger):
            for name, picture in pictures.items():
                logger.experiment.add_image(f"{stage}/{name}", picture, step, dataformats="HWC")
            return
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in pictures.items():
        Image.fromarray(picture).save(folder / f"{stage}_{name}_epoch{trainer.current_epoch:03d}.png")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _pixels(figure) -> np.ndarray:
    """Render a matplotlib figure to an RGB ``uint8`` array ``[H, W, 3]``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _grid(count: int) -> tuple[int, int]:
    columns = min(count, 8)
    return -(-count // columns), columns


def draw_predictions(images: torch.Tensor, targets: torch.Tensor, predictions: torch.Tensor,
                     classes: list[str]) -> np.ndarray:
    """Images with ``predicted (true)`` titles; mistakes in red."""
    rows, columns = _grid(len(images))
    figure = _figure(1.6 * columns, 1.8 * rows)
    for index, (image, target, prediction) in enumerate(zip(images, targets, predictions)):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(image[0].numpy(), cmap="gray")
        right = int(prediction) == int(target)
        axis.set_title(f"{classes[prediction]}\n({classes[target]})", fontsize=7, color="black" if right else "red")
        axis.axis("off")
    return _pixels(figure)


def draw_confusion_matrix(confusion: np.ndarray, classes: list[str]) -> np.ndarray:
    """Counts of true (rows) against predicted (columns) classes."""
    figure = _figure(6, 5.5)
    axis = figure.add_subplot()
    axis.imshow(confusion, cmap="Blues")
    ticks = range(len(classes))
    axis.set_xticks(ticks, classes, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(ticks, classes, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = confusion.max() / 2
    for (row, column), count in np.ndenumerate(confusion):
        axis.text(column, row, int(count), ha="center", va="center", fontsize=6,
                  color="white" if count > threshold else "black")
    return _pixels(figure)


def draw_attention(images: torch.Tensor, rollout: torch.Tensor) -> np.ndarray:
    """Each image with its attention rollout (upsampled to the image) laid over it."""
    rows, columns = _grid(len(images))
    figure = _figure(1.6 * columns, 1.6 * rows)
    height, width = images.shape[-2:]
    for index, (image, attention) in enumerate(zip(images, rollout)):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(image[0].numpy(), cmap="gray")
        axis.imshow(attention.numpy(), cmap="inferno", alpha=0.6, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        axis.axis("off")
    return _pixels(figure)
