"""``python -m vit_lightning.demo``: the drawing pad over a model folder or a checkpoint (:mod:`vit_lightning.serving.demo`)."""

from vit_lightning.errors import exit_on_user_error
from vit_lightning.serving.demo import main

if __name__ == "__main__":
    exit_on_user_error(main)
