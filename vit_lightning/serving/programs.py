"""The exported programs, without Lightning: ``model.onnx`` (PyTorch's dynamo exporter, run with onnxruntime) and
``model.pt2`` (``torch.export``) of a :class:`~vit_lightning.serving.model_folder.PretrainedViT`, with a dynamic
batch size, and the timed runs that compare them.

Both take float32 images ``[batch, 1, 28, 28]`` scaled to [0, 1] (uint8 pixels / 255:
:func:`~vit_lightning.data.datasets.unit_range`), light strokes on a dark background, any batch size; the dataset's
normalisation is inside the graph. They return logits ``[batch, classes]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Callable

import torch

from vit_lightning.architecture import describe
from vit_lightning.data.datasets import unit_range
from vit_lightning.errors import UserError
from vit_lightning.serving.model_folder import PretrainedViT


def export_onnx(model: PretrainedViT, path: Path) -> None:
    """``model`` to one ONNX file (weights inside) through PyTorch's dynamo exporter, with a dynamic batch size."""
    example = torch.rand(2, *_image_shape(model))  # batch 2: an example batch of 1 would be specialised
    try:
        with _quiet_exporter():
            torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              input_names=["images"], output_names=["logits"])
    except Exception as error:  # noqa: BLE001 - whatever the exporter rejects is reported the same way
        raise UserError(f"cannot export this model to ONNX ({describe(model.architecture)}): {_first_line(error)}") from None


def export_program(model: PretrainedViT, path: Path) -> None:
    """``model`` as a ``torch.export`` program with a dynamic batch size, saved with ``torch.export.save``."""
    example = torch.rand(2, *_image_shape(model))
    try:
        with _quiet_exporter():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # noqa: BLE001
        raise UserError(f"cannot export this model with torch.export ({describe(model.architecture)}): {_first_line(error)}") from None
    torch.export.save(program, path)


def _image_shape(model: PretrainedViT) -> tuple[int, int, int]:
    return model.architecture["in_channels"], model.architecture["image_size"], model.architecture["image_size"]


@contextlib.contextmanager
def _quiet_exporter():
    """Keep what the exporters write to stderr (warnings, and the whole graph when a trace fails) off the
    terminal: a failure is reported in one line."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    """The first line of the error's root cause (the exporters wrap it), without terminal colour codes."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def run_batches(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                batch_size: int) -> tuple[torch.Tensor, float]:
    """Logits of ``forward`` over uint8 ``images`` ``[N, H, W]`` in batches, and its images/s (after one warm-up
    batch, which is not timed)."""
    batches = images.split(batch_size)
    with torch.inference_mode():
        forward(batches[0])
        start = time.perf_counter()
        logits = torch.cat([forward(batch) for batch in batches])
    return logits, len(images) / (time.perf_counter() - start)


def onnxruntime_forward(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime session on the CPU with PyTorch's thread count, as a function of uint8 images."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": unit_range(images).numpy()})[0])
