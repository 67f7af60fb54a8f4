"""The learning-rate search before training (Lightning's range test), its suggestion made the peak of the schedule."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class LearningRateSearch(LearningRateFinder):
    """Lightning's learning-rate range test before training, its suggestion made the peak of the schedule.

    Lightning sets the suggestion as the optimizer's current learning rate only, which the step-wise schedule
    overwrites from its own ``base_lrs`` at the next step; this sets those as well, so the suggestion is the peak
    of one-cycle or warm-up/cosine. A resumed fit (``--ckpt_path``) skips the search: its checkpoint holds the
    learning rate, and the search's own restore would discard the optimizer state and counters it loaded.
    """

    def __init__(self, min_lr: float = 1e-6, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0):
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, mode=mode,
                         early_stop_threshold=early_stop_threshold, update_attr=False)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path:
            rank_zero_info("learning-rate search skipped: a resumed fit keeps its checkpoint's learning rate")
            return
        super().on_fit_start(trainer, pl_module)
        suggestion = self.optimal_lr.suggestion() if self.optimal_lr is not None else None
        if suggestion is None:
            rank_zero_info("learning-rate search: no suggestion (too few steps?); the configured rate stays")
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = suggestion
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [suggestion] * len(scheduler.base_lrs)
            factors = [factor(scheduler.last_epoch) for factor in getattr(scheduler, "lr_lambdas", [])]
            for group, factor in zip(scheduler.optimizer.param_groups, factors):
                group["lr"] = suggestion * factor
        rank_zero_info(f"learning-rate search: peak learning rate {suggestion:.3g}")
