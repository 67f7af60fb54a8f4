"""Train, evaluate and predict with the Vision Transformer: ``python train.py fit|validate|test|predict --help``."""

import os
import signal


def _stop_while_starting(signum, frame):
    """Ctrl-C while the libraries load (seconds): nothing has run yet, so stop at once.

    A handler rather than ``except KeyboardInterrupt``: some libraries' imports swallow or mangle the exception
    (a bare ``except``, numpy's lazy submodules), so it would not reliably reach this file.
    """
    os.write(2, b"Ctrl-C: stopped while starting; nothing ran\n")
    os._exit(130)


signal.signal(signal.SIGINT, _stop_while_starting)
from vit_lightning.training.cli import main  # noqa: E402  (after the handler: the import takes seconds)

signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Lightning handles Ctrl-C gracefully

if __name__ == "__main__":
    main()
