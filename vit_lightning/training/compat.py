"""Two messages every run would print that say nothing about it, and the filter that drops them (and no others)."""

import logging
import warnings


def silence_library_noise() -> None:
    """Drop Lightning's advertisement for its LitLogger product, and a deprecation warning raised inside
    Lightning's own pytree code (not user code)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage())
