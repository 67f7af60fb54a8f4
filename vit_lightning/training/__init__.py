"""Training with Lightning: the LightningModule (:mod:`.module`), the data module (:mod:`.datamodule`), the CLI
(:mod:`.cli`, ``python train.py``), every callback of a run, registered in :mod:`.callbacks`, checkpointing
(:mod:`.checkpointing`), the metrics log (:mod:`.metrics_log`), experiment tracking (:mod:`.tracking`), pictures
(:mod:`.pictures`), the run lock (:mod:`.run_lock`) and the presets folder (:mod:`.presets`).

It uses :mod:`vit_lightning.data`, :mod:`vit_lightning.serving` (checkpoint files) and the model; they never import
it. Lightning's private names used here are all in :mod:`.compat`.
"""
