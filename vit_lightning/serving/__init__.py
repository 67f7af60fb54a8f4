"""Serving a trained model, without Lightning: reading and resolving checkpoint files (:mod:`.checkpoints`), the model
folder (:mod:`.model_folder`), the ONNX and ``torch.export`` programs (:mod:`.programs`) and the demo page
(:mod:`.demo`).

Nothing here imports Lightning (tests/test_layout.py checks it). The command that turns a training checkpoint into
these files and checks them against the Lightning model is :mod:`vit_lightning.export`.
"""
