"""Train, evaluate and predict with the Vision Transformer: ``python train.py fit|validate|test|predict --help``."""

from vit_lightning.training.cli import main

if __name__ == "__main__":
    main()
