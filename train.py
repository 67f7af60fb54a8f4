"""Train, evaluate and predict with the Vision Transformer: ``python train.py fit|validate|test|predict --help``."""

import sys

try:
    from vit_lightning.training.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load (seconds): nothing has run yet
    print("Ctrl-C: stopped while starting; nothing ran", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    main()
