"""vit-lightning: a Vision Transformer written from scratch, trained with PyTorch Lightning on MNIST-family data."""

__version__ = "0.1.0"
