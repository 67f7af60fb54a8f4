"""``python -m vit_lightning.export --ckpt_path best|last|PATH --output DIR``: a training checkpoint to ``model.onnx``
(onnxruntime), ``model.pt2`` (``torch.export``) and a model folder, each checked against the Lightning model on
the test split.

Both exported programs take float32 images ``[batch, 1, 28, 28]`` scaled to [0, 1] (uint8 pixels / 255), light
strokes on a dark background, any batch size; the dataset's normalisation is inside the graph. They return
logits ``[batch, classes]``; the class names are in ``config.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Callable

import torch

from vit_lightning.checkpoint import LOG_DIR, load_checkpoint, resolve_checkpoint
from vit_lightning.data import MNISTDataModule
from vit_lightning.errors import UserError, exit_on_user_error
from vit_lightning.module import ViTClassifier
from vit_lightning.outputs import require_writable_folder
from vit_lightning.pretrained import PretrainedViT, from_checkpoint, model_card, save_model_folder

TOLERANCE = 1e-4  # largest accepted |logit difference| between an exported program and the Lightning model (fp32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_lightning.export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="best, last (in --trainer.default_root_dir) or a .ckpt")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the exported files into")
    parser.add_argument("--trainer.default_root_dir", dest="run_dir", type=Path, default=Path("runs"),
                        help="the run folder whose checkpoints/ holds best and last (default: runs)")
    parser.add_argument("--data.dataset", dest="dataset", help="default: the dataset the checkpoint was trained on")
    parser.add_argument("--data.root", dest="root", help="the test split's folder (default: the training run's)")
    parser.add_argument("--data.download", dest="download", type=_boolean, default=None,
                        help="download the dataset when absent (default: as in the training run)")
    parser.add_argument("--limit", type=int, help="check parity on the first N test images only (default: all)")
    parser.add_argument("--batch_size", type=int, default=256, help="batch for the parity check and timing")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch_size and --limit must be positive")
    return args


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def export_onnx(model: PretrainedViT, path: Path) -> None:
    """``model`` to one ONNX file (weights inside) through PyTorch's dynamo exporter, with a dynamic batch size."""
    example = torch.rand(2, *_image_shape(model))  # batch 2: an example batch of 1 would be specialised
    try:
        with _quiet_exporter():
            torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              input_names=["images"], output_names=["logits"])
    except Exception as error:  # noqa: BLE001 - whatever the exporter rejects is reported the same way
        raise UserError(f"cannot export this model to ONNX ({_options(model)}): {_first_line(error)}") from None


def export_program(model: PretrainedViT, path: Path) -> None:
    """``model`` as a ``torch.export`` program with a dynamic batch size, saved with ``torch.export.save``."""
    example = torch.rand(2, *_image_shape(model))
    try:
        with _quiet_exporter():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # noqa: BLE001
        raise UserError(f"cannot export this model with torch.export ({_options(model)}): {_first_line(error)}") from None
    torch.export.save(program, path)


def _image_shape(model: PretrainedViT) -> tuple[int, int, int]:
    return model.architecture["in_channels"], model.architecture["image_size"], model.architecture["image_size"]


def _options(model: PretrainedViT) -> str:
    return ", ".join(f"{name}={model.architecture[name]}" for name in ("tokenizer", "pool", "pos_embedding"))


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
    return lambda images: torch.from_numpy(session.run(None, {"images": _unit_range(images).numpy()})[0])


def _unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W]`` to the exported programs' input: float ``[B, 1, H, W]`` in [0, 1]."""
    return images.unsqueeze(1).float() / 255.0


def run_config(checkpoint: dict, path: Path) -> tuple[str, str]:
    """The training run's complete config (the ``config.yaml`` the CLI saved in its log folder) and where it was
    found; without it, the model and data settings the checkpoint holds."""
    import yaml

    log_dir = checkpoint.get(LOG_DIR)
    if log_dir:
        for candidate in (Path(log_dir), path.parent.parent / "logs" / Path(log_dir).name):
            if (candidate / "config.yaml").is_file():
                return (candidate / "config.yaml").read_text(), str(candidate / "config.yaml")
    settings = {"model": checkpoint.get("hyper_parameters", {}), "data": checkpoint.get("datamodule_hyper_parameters", {})}
    settings = {section: {k: v for k, v in values.items() if not k.startswith("_")} for section, values in settings.items()}
    return yaml.safe_dump(settings, sort_keys=False), "the checkpoint's hyper-parameters (the run's config.yaml was not found)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ckpt_path = Path(resolve_checkpoint(args.ckpt_path, args.run_dir / "checkpoints", fit=False))
    checkpoint = load_checkpoint(ckpt_path)
    require_writable_folder(args.output, "--output")
    model = from_checkpoint(checkpoint, ckpt_path, args.dataset)
    data_settings = checkpoint.get("datamodule_hyper_parameters") or {}
    datamodule = MNISTDataModule(
        dataset=model.dataset, root=args.root or data_settings.get("root", "data"),
        download=data_settings.get("download", True) if args.download is None else args.download)
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    images, labels = test.images[:args.limit], test.targets[:args.limit]

    args.output.mkdir(parents=True, exist_ok=True)
    export_onnx(model, args.output / "model.onnx")
    export_program(model, args.output / "model.pt2")

    classifier = ViTClassifier.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    reference, torch_speed = run_batches(lambda x: classifier(datamodule.transform(x, train=False)), images,
                                         args.batch_size)
    program = torch.export.load(args.output / "model.pt2").module()
    results = {
        "onnxruntime": run_batches(onnxruntime_forward(args.output / "model.onnx"), images, args.batch_size),
        "torch.export": run_batches(lambda x: program(_unit_range(x)), images, args.batch_size),
    }
    accuracy = (reference.argmax(-1) == labels).float().mean().item()
    config_text, config_origin = run_config(checkpoint, ckpt_path)
    parameters = sum(p.numel() for p in model.parameters())
    save_model_folder(model, args.output, model_card(
        model, checkpoint_name=ckpt_path.name, epoch=checkpoint.get("epoch"), test_accuracy=accuracy,
        test_images=len(images), parameters=parameters, config=config_text, config_origin=config_origin))

    print(f"exported {ckpt_path} ({model.dataset}, {parameters / 1e6:.2f}M parameters, {_options(model)}) "
          f"to {args.output}/:")
    print("  model.onnx, model.pt2: input float32 images [batch, 1, 28, 28] in [0, 1] (normalisation inside), "
          f"output logits [batch, {len(model.classes)}]")
    print("  model.safetensors, config.json, README.md: the model folder (vit_lightning.pretrained.load_model_folder)")
    print(f"parity on {len(images)} test images (Lightning model's test accuracy {accuracy:.2%}), "
          f"CPU, {torch.get_num_threads()} thread(s), batch {args.batch_size}:")
    print(f"  {'PyTorch (Lightning)':<20} {torch_speed:>10,.0f} images/s")
    failures = []
    for name, (logits, speed) in results.items():
        difference = (logits - reference).abs().max().item()
        agree = (logits.argmax(-1) == reference.argmax(-1)).sum().item()
        print(f"  {name:<20} {speed:>10,.0f} images/s ({speed / torch_speed:.2f}x)   max |logit difference| "
              f"{difference:.2e}   same class {agree}/{len(images)} ({agree / len(images):.2%})")
        if not difference <= TOLERANCE or agree != len(images):
            failures.append(f"{name} (max difference {difference:.2e}, {len(images) - agree} classes differ)")
    if failures:
        raise UserError(f"parity check failed for {', '.join(failures)}: the exported programs in {args.output} "
                        f"do not reproduce the checkpoint within {TOLERANCE:g}")


if __name__ == "__main__":
    exit_on_user_error(main)
