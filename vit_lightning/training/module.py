"""The LightningModule: a VisionTransformer with its loss, metrics, optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.cli import OptimizerCallable
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from vit_lightning.architecture import RUN_TIME, architecture
from vit_lightning.errors import SettingError
from vit_lightning.model import VisionTransformer
from vit_lightning.training.predictions import Predictions

TIME_STEPS = 10_000  # the schedule's resolution when only --trainer.max_time bounds training


class ViTClassifier(LightningModule):
    """Classify images with a VisionTransformer built from this module's own (saved) init arguments.

    Expects normalised float images ``[B, C, H, W]`` and integer labels; a checkpoint alone restores it.
    ``optimizer`` is any ``torch.optim`` class (``class_path``/``init_args`` in YAML); ``None`` means
    ``AdamW(lr=1e-3, weight_decay=0.05)``. Weight decay skips biases, norms and what the model's
    ``no_weight_decay()`` names (class token, learned position embeddings).
    ``lr_schedule`` runs per optimizer step: linear warm-up for ``warmup_fraction`` of training, then cosine
    decay to zero (``warmup_cosine``), one-cycle (``onecycle``: cosine up from 1/25, cosine down to zero at the
    last step), or ``constant``.
    ``test_time_flip`` makes validation and test average the logits of each image and its mirror image (only
    for data whose classes are mirror-symmetric, such as Fashion-MNIST); ``test_time_shift`` gives half the
    weight to the image moved by one pixel along the diagonal, up-left and down-right (mirrored too with the flip:
    airbench's six views, Jordan 2024), for models trained with shifts; in test only, so that validation stays cheap
    enough to run after every epoch. Like ``compile`` they are not saved.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        patch_size: int = 4,
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
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Literal["warmup_cosine", "onecycle", "constant"] = "warmup_cosine",
        warmup_fraction: float = 0.05,
        compile: bool = False,
        test_time_flip: bool = False,
        test_time_shift: bool = False,
    ):
        super().__init__()
        # run-time choices a checkpoint must not impose; loggers get the whole CLI config (RunConfig)
        self.save_hyperparameters(ignore=list(RUN_TIME), logger=False)
        self.compile_model = compile
        self.test_time_flip = test_time_flip
        self.test_time_shift = test_time_shift
        self.model = VisionTransformer(**architecture(self.hparams))  # the model's arguments above (architecture.py)
        if not 0.0 <= warmup_fraction < 1.0:
            raise SettingError(f"--model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise SettingError(f"--model.label_smoothing must be in [0, 1], got {label_smoothing}")
        self.optimizer = optimizer
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)  # FLOPs in the model summary
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def configure_model(self) -> None:
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model.compile()  # in place: parameter names (and checkpoints) stay those of the plain model
            self._compiled = True

    def on_train_start(self) -> None:
        """A resumed fit follows the schedule computed for its own length from the step it resumes at: the
        checkpoint holds the learning rates of the schedule it was trained with (another length when
        ``max_epochs`` changed), which the first resumed step would otherwise use."""
        for config in self.trainer.lr_scheduler_configs if self.trainer.ckpt_path else ():
            scheduler = config.scheduler
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training objective (cross-entropy with label smoothing) and the plain cross-entropy, which
        validation and test report: ``train/loss`` logs the latter, so the three losses compare directly."""
        log_probs = F.log_softmax(logits, dim=-1)
        cross_entropy = F.nll_loss(log_probs, targets)
        smoothing = self.hparams.label_smoothing
        objective = (1 - smoothing) * cross_entropy - smoothing * log_probs.mean(dim=-1).mean()
        return objective, cross_entropy

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss, cross_entropy = self.losses(logits, targets)
        self.train_acc(logits, targets)
        self.log("train/batch_loss", loss, prog_bar=True)
        self.log("train/loss", cross_entropy, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy, stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self.test_time_logits(images, shift=self.test_time_shift and stage == "test")
        loss_metric.update(F.cross_entropy(logits, targets), weight=len(targets))
        acc_metric.update(logits, targets)
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc_metric, prog_bar=stage == "val")
        return logits

    def test_time_logits(self, images: torch.Tensor, shift: bool) -> torch.Tensor:
        """The logits that validation and test score: the image's, averaged over its mirror image's with
        ``test_time_flip`` and, with ``shift``, over the shifted views too. A shift uncovers a row and a column; they
        take the batch's darkest value, the black background that training's shifts move in too (repeating the edge
        instead gains half as much)."""
        def mirrored(views: torch.Tensor) -> torch.Tensor:
            return (self(views) + self(views.flip(-1))) / 2 if self.test_time_flip else self(views)

        logits = mirrored(images)
        if shift:
            height, width = images.shape[-2:]
            padded = images.amin().expand(*images.shape[:-2], height + 2, width + 2).clone()  # no host sync
            padded[..., 1:-1, 1:-1] = images
            shifted = (mirrored(padded[..., :height, :width]) + mirrored(padded[..., 2:, 2:])) / 2
            logits = (logits + shifted) / 2
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The batch's logits (for callbacks such as :class:`~vit_lightning.training.pictures.Pictures`)."""
        return self._evaluate(batch, self.val_loss, self.val_acc, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, self.test_loss, self.test_acc, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Predictions:
        """Per image: its index in the predict set (the batch's targets), the predicted class and the class
        probabilities."""
        images, indices = batch
        return Predictions.of(indices, self(images))

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the model's parameters, weight decay only on weight matrices the model
        does not exempt (``no_weight_decay()``)."""
        decay, no_decay = [], []
        skip = self.model.no_weight_decay()
        for name, parameter in self.model.named_parameters():
            (decay if parameter.ndim >= 2 and name not in skip else no_decay).append(parameter)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return self.optimizer(groups) if self.optimizer else torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        schedule = self.hparams.lr_schedule
        if schedule == "constant":
            return optimizer
        factor = _one_cycle if schedule == "onecycle" else _warmup_cosine
        total_steps, position = self._schedule_length()
        warmup_steps = int(self.hparams.warmup_fraction * total_steps)
        scheduler = LambdaLR(optimizer, lambda step: factor(position(step), warmup_steps, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_length(self) -> tuple[int, Callable[[int], int]]:
        """The schedule's length in steps and where a step is in it: the steps the trainer will take, or, when
        neither ``max_epochs`` nor ``max_steps`` bounds them, :data:`TIME_STEPS` steps over ``max_time``'s training
        time (Lightning's ``Timer``, which a resumed fit restores)."""
        total = self.trainer.estimated_stepping_batches
        if not math.isinf(total):
            return max(1, int(total)), lambda step: step
        timer = next((callback for callback in self.trainer.callbacks if isinstance(callback, Timer)), None)
        if timer is None:
            raise SettingError(f"--model.lr_schedule {self.hparams.lr_schedule} needs the length of training, and "
                               "--trainer.max_epochs -1 sets none: give --trainer.max_steps or --trainer.max_time too, "
                               "or use --model.lr_schedule constant")

        def position(step: int) -> int:
            elapsed = timer.time_elapsed("train")
            return int(TIME_STEPS * elapsed / (elapsed + timer.time_remaining("train")))

        return TIME_STEPS, position


def _cosine(progress: float) -> float:
    """1 at ``progress`` 0, falling along a half cosine to 0 at ``progress`` >= 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear from ~0 to 1 over ``warmup_steps``, then cosine to 0 at the last step.

    Defined for any step count from 1 up, and for steps past ``total_steps`` (0: a resume with fewer epochs).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return _cosine((step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))


def _one_cycle(step: int, warmup_steps: int, total_steps: int) -> float:
    """Smith's one-cycle factor, as PyTorch's ``OneCycleLR`` shapes it: a half cosine up from 1/25 to 1 over
    ``warmup_steps``, then down to 0 at the last step; defined for any step count, like :func:`_warmup_cosine`."""
    if step < warmup_steps:
        return 1.0 - (1.0 - 1.0 / 25) * _cosine(step / warmup_steps)
    return _cosine((step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
