"""``python -m vit_lightning.export --ckpt_path best|last|PATH --output DIR``: a training checkpoint to ``model.onnx``
(onnxruntime), ``model.pt2`` (``torch.export``) and a model folder, each checked against the Lightning model on
the test split.

The command where training meets serving: it reads a training checkpoint and the test split through the training
code, writes the Lightning-free files of :mod:`vit_lightning.serving` (their input and output:
:mod:`vit_lightning.serving.programs`; the class names are in ``config.json``) and runs both to compare them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vit_lightning.architecture import describe
from vit_lightning.data.datasets import unit_range
from vit_lightning.errors import UserError, exit_on_user_error
from vit_lightning.outputs import RunFolder, require_writable_folder
from vit_lightning.serving.checkpoints import LOG_DIR, load_checkpoint, resolve_checkpoint, saved_settings, trained_on
from vit_lightning.serving.model_folder import from_checkpoint, model_card, save_model_folder
from vit_lightning.serving.programs import export_onnx, export_program, onnxruntime_forward, run_batches
from vit_lightning.training.datamodule import MNISTDataModule
from vit_lightning.training.module import ViTClassifier

TOLERANCE = 1e-4  # largest accepted |logit difference| between an exported program and the Lightning model (fp32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_lightning.export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="best, last (in --trainer.default_root_dir) or a .ckpt")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the exported files into")
    parser.add_argument("--trainer.default_root_dir", dest="run_dir", type=Path, default=Path("runs"),
                        help="the run folder whose checkpoints/ holds best and last (default: runs)")
    parser.add_argument("--data.dataset", dest="dataset", help="the dataset of a checkpoint that does not say (one "
                        "that does is exported with its own dataset)")
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


def run_config(checkpoint: dict, path: Path) -> tuple[str, str]:
    """The training run's complete config (the ``config.yaml`` the CLI saved in its log folder) and where it was
    found; without it, the model and data settings the checkpoint holds."""
    import yaml

    log_dir = checkpoint.get(LOG_DIR)
    if log_dir:
        for candidate in (Path(log_dir), RunFolder.of_checkpoint(path).logs / Path(log_dir).name):
            if (candidate / "config.yaml").is_file():
                return (candidate / "config.yaml").read_text(), str(candidate / "config.yaml")
    settings = {"model": checkpoint.get("hyper_parameters", {}), "data": checkpoint.get("datamodule_hyper_parameters", {})}
    settings = {section: saved_settings(values) for section, values in settings.items()}
    return yaml.safe_dump(settings, sort_keys=False), "the checkpoint's hyper-parameters (the run's config.yaml was not found)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ckpt_path = Path(resolve_checkpoint(args.ckpt_path, RunFolder(args.run_dir).checkpoints, fit=False))
    checkpoint = load_checkpoint(ckpt_path)
    require_writable_folder(args.output, "--output")
    model = from_checkpoint(checkpoint, ckpt_path, args.dataset)
    data_settings = checkpoint.get("datamodule_hyper_parameters") or {}
    datamodule = MNISTDataModule(
        dataset=model.dataset, root=args.root or data_settings.get("root", "data"),
        download=data_settings.get("download", True) if args.download is None else args.download)
    datamodule.info = trained_on(checkpoint, ckpt_path) or datamodule.info  # its recorded normalisation
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    images, labels = test.images[:args.limit], test.targets[:args.limit]

    args.output.mkdir(parents=True, exist_ok=True)
    export_onnx(model, args.output / "model.onnx")
    export_program(model, args.output / "model.pt2")

    classifier = ViTClassifier(**model.architecture)  # the settings test would take (serving.checkpoints.model_settings)
    classifier.load_state_dict(checkpoint["state_dict"])
    classifier.eval()
    reference, torch_speed = run_batches(lambda x: classifier(datamodule.transform(x, train=False)), images,
                                         args.batch_size)
    program = torch.export.load(args.output / "model.pt2").module()
    results = {
        "onnxruntime": run_batches(onnxruntime_forward(args.output / "model.onnx"), images, args.batch_size),
        "torch.export": run_batches(lambda x: program(unit_range(x)), images, args.batch_size),
    }
    accuracy = (reference.argmax(-1) == labels).float().mean().item()
    config_text, config_origin = run_config(checkpoint, ckpt_path)
    parameters = sum(p.numel() for p in model.parameters())
    save_model_folder(model, args.output, model_card(
        model, checkpoint_name=ckpt_path.name, epoch=checkpoint.get("epoch"), test_accuracy=accuracy,
        test_images=len(images), parameters=parameters, config=config_text, config_origin=config_origin))

    print(f"exported {ckpt_path} ({model.dataset}, {parameters / 1e6:.2f}M parameters, {describe(model.architecture)}) "
          f"to {args.output}/:")
    print("  model.onnx, model.pt2: input float32 images [batch, 1, 28, 28] in [0, 1] (normalisation inside), "
          f"output logits [batch, {len(model.classes)}]")
    print("  model.safetensors, config.json, README.md: the model folder (vit_lightning.serving.model_folder.load_model_folder)")
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
