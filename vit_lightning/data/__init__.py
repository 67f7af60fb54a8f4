"""The data, without Lightning: what is known of each dataset and its pixel scaling (:mod:`.datasets`), the IDX file
format (:mod:`.idx`), images held in memory and the train/validation split (:mod:`.memory`), batched augmentation
(:mod:`.augment`) and outside images for ``predict`` and the demo (:mod:`.preprocess`).

Nothing here imports Lightning (tests/test_layout.py checks it): the Lightning data module that uses these is
:class:`vit_lightning.training.datamodule.MNISTDataModule`, and serving uses them without the training code.
"""
