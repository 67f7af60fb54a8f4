"""Training speed on the current device: ``python -m vit_lightning.benchmark --preset quick [--results-file out.json]``.

Prints, for one model preset (a config in ``configs/``): training images/s through the real Lightning Trainer
and through a plain PyTorch loop over the same model, batches and augmentation (their ratio is Lightning's
overhead), FLOPs per image and MFU against this device's measured dense-matmul peak, the data pipeline's share
of the step time, peak memory, and inference images/s. Synthetic images go through the real IDX loading code.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from vit_lightning.data.idx import SPLIT_FILES, write_idx
from vit_lightning.errors import UserError, exit_on_user_error
from vit_lightning.outputs import atomic_write
from vit_lightning.serving.checkpoints import saved_settings
from vit_lightning.training.cli import ViTCLI
from vit_lightning.training.compat import silence_library_noise
from vit_lightning.training.datamodule import MNISTDataModule
from vit_lightning.training.module import ViTClassifier
from vit_lightning.training.presets import preset_file

def configured(preset: str, root: Path, batch_size: int, compile: bool) -> tuple[ViTClassifier, MNISTDataModule]:
    """The preset's LightningModule and data module, built by the training CLI's own parser (``configs/default.yaml``,
    then the preset, as ``python train.py fit --config PRESET`` does), reading the synthetic IDX files in ``root``."""
    with warnings.catch_warnings():  # the benchmark's own flags are in sys.argv, which is what Lightning warns of
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = ViTCLI(["--config", str(preset_file(preset)), "--data.dataset", "mnist", "--data.root", str(root),
                      "--data.download", "false", "--data.val_size", "1000", "--data.batch_size", str(batch_size),
                      "--data.eval_batch_size", "1024", "--model.compile", str(compile).lower(),
                      "--trainer.default_root_dir", str(root), "--seed_everything", "0"], run=False)
    return cli.model, cli.datamodule


def write_synthetic_idx(folder: Path, n_train: int, n_test: int) -> None:
    """Random 28x28 uint8 images and labels in the four IDX files (the real on-disk format)."""
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        image_name, label_name = SPLIT_FILES[split]
        write_idx(folder / image_name, torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8))
        write_idx(folder / label_name, torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, precision: str):
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def matmul_peak(device: torch.device, precision: str, size: int, seconds: float = 2.0) -> float:
    """Dense matmul FLOP/s measured here: ``size``-square products in the precision's compute dtype, smaller ones
    where a dtype is so slow (bf16 emulated on a CPU without it) that one product would take over ``seconds / 8``."""
    dtype = torch.float32 if precision == "32-true" else (torch.bfloat16 if "bf16" in precision else torch.float16)
    probe = torch.randn(256, 256, device=device, dtype=dtype)
    probe @ probe
    synchronize(device)
    start = time.perf_counter()
    probe @ probe
    synchronize(device)
    rough_rate = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
    size = max(256, min(size, int((rough_rate * seconds / 8 / 2) ** (1 / 3))))
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if device.type == "cuda" and runs % 10:
            continue
        synchronize(device)
    synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start)


def _convolution_backward_flops(grad_out, x, weight, _bias, _stride, _padding, _dilation, transposed, _output_padding,
                                _groups, output_mask, *_, **__) -> int:
    """A convolution's backward: the forward's FLOPs once for each gradient asked for (input, weight). PyTorch
    2.14's own formula ignores ``groups`` and counts a depthwise convolution's backward as a dense one's."""
    return conv_flop_count(x, weight, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _convolution_backward_flops}


def plain_training_rate(module: ViTClassifier, datamodule: MNISTDataModule, device: torch.device, precision: str,
                        warmup: int, steps: int) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """Training images/s of a plain PyTorch loop over ``module``'s model with its optimizer and training loss (no
    learning-rate schedule), the data module's batches and augmentation; the data pipeline's share of the step
    time, and the last batch."""
    module = copy.deepcopy(module).to(device)
    module.configure_model()  # compiles the model when the preset asks for it
    model, optimizer = module.model, module.build_optimizer()

    def batches():
        while True:
            for images, targets in datamodule.train_dataloader():
                images = datamodule.transform(images.to(device, non_blocking=True), train=True)
                yield images, targets.to(device, non_blocking=True)

    step_times, data_time = [], 0.0
    iterator = batches()
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        images, targets = next(iterator)
        synchronize(device)
        fetched = time.perf_counter()
        with autocast(device, precision):
            loss, _ = module.losses(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            step_times.append(time.perf_counter() - start)
            data_time += fetched - start
    return steps * images.shape[0] / sum(step_times), data_time / sum(step_times), (images, targets)


class StepTimer(Callback):
    """Wall time of training steps ``warmup`` .. end, batch fetching included."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.end = time.perf_counter()


def checked_device(args: argparse.Namespace) -> torch.device:
    """The device to measure on, after a one-line :class:`UserError` for flags that cannot give a figure."""
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--batch-size", args.batch_size, 1), ("--peak-size", args.peak_size, 1)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: PyTorch sees no CUDA device here; use --device cpu")
    if args.precision == "16-mixed" and device.type != "cuda":  # Lightning would train bf16, the plain loop fp16
        raise UserError(f"--precision 16-mixed is for CUDA devices (Lightning trains bf16-mixed instead on {device.type}, "
                        "which the plain loop would not match); use --precision bf16-mixed")
    return device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick",
                        help="a config in configs/ (or a YAML file) with a model section (default quick)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps, after --warmup steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-size", type=int, default=2048, help="largest matrix size for the matmul peak")
    parser.add_argument("--results-file", type=Path, help="also write every figure to this JSON file (timm's convention)")
    args = parser.parse_args(argv)
    silence_library_noise()
    device = checked_device(args)
    steps = args.warmup + args.steps
    n_train = args.batch_size * steps + 1

    with tempfile.TemporaryDirectory() as root:
        write_synthetic_idx(Path(root), n_train + 1000, 1000)
        module, datamodule = configured(args.preset, Path(root), args.batch_size, args.compile)
        datamodule.setup("fit")
        untrained = copy.deepcopy(module)  # the plain loops start from the same weights

        # Lightning: the real Trainer and LightningModule, one epoch of `steps` steps, no validation.
        timer = StepTimer(args.warmup, device)
        trainer = Trainer(accelerator=device.type, devices=1, precision=args.precision, max_steps=steps,
                          limit_val_batches=0, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
        trainer.fit(module, datamodule=datamodule)
        lightning_rate = args.steps * args.batch_size / (timer.end - timer.start)

        # Plain PyTorch: the same model, batches, augmentation, optimizer and loss.
        plain_rate, data_share, (images, targets) = plain_training_rate(
            untrained, datamodule, device, args.precision, args.warmup, args.steps)

        # The other precision (fp32 <-> bf16-mixed), same loop: which one this device trains the preset faster in.
        other = "bf16-mixed" if args.precision == "32-true" else "32-true"
        other_rate, _, _ = plain_training_rate(untrained, datamodule, device, other, min(args.warmup, 3),
                                               min(args.steps, 10))

        # FLOPs of one training step (forward + backward) per image; inference: the trained model.
        model = module.model.to(device)
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter, autocast(device, args.precision):
            torch.nn.functional.cross_entropy(model(images), targets).backward()
        flops_per_image = counter.get_total_flops() / args.batch_size

        # Inference: eval mode, inference_mode, the evaluation batch size.
        model.eval()
        eval_images = datamodule.transform(datamodule.datasets["val"].images.to(device), train=False)
        with torch.inference_mode(), autocast(device, args.precision):
            model(eval_images)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(3):
                model(eval_images)
            synchronize(device)
        inference_rate = 3 * len(eval_images) / (time.perf_counter() - start)

    peaks = {precision: matmul_peak(device, precision, args.peak_size)
             for precision in dict.fromkeys(("32-true", "bf16-mixed", args.precision))}
    peak = peaks[args.precision]
    if device.type == "cuda":
        memory_mib, memory_kind = torch.cuda.max_memory_allocated() / 2**20, "GPU (max allocated)"
    else:
        memory_mib, memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "(process peak RSS)"
    memory = f"{memory_mib:.0f} MiB {memory_kind}"
    parameters = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    settings = saved_settings(module.hparams)
    print(f"preset {args.preset}: {parameters / 1e6:.2f}M parameters, {settings}")
    print(f"device {name}, precision {args.precision}, batch {args.batch_size}, {args.steps} timed steps"
          f" after {args.warmup} warm-up{', compiled' if args.compile else ''}")
    print(f"training images/s, Lightning Trainer : {lightning_rate:10.0f}")
    print(f"training images/s, plain PyTorch loop: {plain_rate:10.0f}")
    print(f"Lightning / plain ratio               : {lightning_rate / plain_rate:10.3f}")
    print(f"training FLOPs per image (fwd+bwd)    : {flops_per_image / 1e6:10.1f} MFLOP")
    print(f"measured matmul peak                  : {peak / 1e9:10.1f} GFLOP/s")
    print(f"MFU (Lightning images/s x FLOPs/peak) : {lightning_rate * flops_per_image / peak:10.1%}")
    print(f"data pipeline share of step time      : {data_share:10.1%}")
    print(f"inference images/s                    : {inference_rate:10.0f}")
    print(f"peak memory                           : {memory}")
    print(f"matmul peaks, fp32 / bf16             : {peaks['32-true'] / 1e9:.1f} / {peaks['bf16-mixed'] / 1e9:.1f} GFLOP/s")
    rates = {args.precision: plain_rate, other: other_rate}
    faster = max(rates, key=rates.get)
    if args.results_file:
        results = {
            "preset": args.preset, "settings": settings, "parameters": parameters, "device": name,
            "precision": args.precision, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "compile": args.compile, "train_images_per_sec": {"lightning": lightning_rate, "plain": plain_rate},
            "lightning_over_plain": lightning_rate / plain_rate, "train_flops_per_image": flops_per_image,
            "matmul_peak_flops": peaks, "mfu": lightning_rate * flops_per_image / peak, "data_share": data_share,
            "inference_images_per_sec": inference_rate, "peak_memory_mib": memory_mib,
            "plain_images_per_sec_by_precision": rates, "faster_precision": faster,
        }
        with atomic_write(args.results_file) as temporary:
            temporary.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"plain-loop images/s, {args.precision} / {other}: {plain_rate:.0f} / {other_rate:.0f}: {faster} is "
          f"{max(rates.values()) / min(rates.values()):.1f}x faster for this preset here: "
          f"python train.py fit --config {preset_file(args.preset)} --trainer.precision {faster}")


if __name__ == "__main__":
    exit_on_user_error(main)
