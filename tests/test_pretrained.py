"""The model folder: round trip of the logits, config.json, the model card, loading without Lightning."""

import json
import subprocess
import sys

import pytest
import torch

from support import CONV_SEQ, PATCH_CLS, REPO
from vit_lightning.serving.checkpoints import load_checkpoint
from vit_lightning.errors import UserError
from vit_lightning.model import VisionTransformer
from vit_lightning.training.module import ViTClassifier
from vit_lightning.architecture import ARCHITECTURE
from vit_lightning.serving.model_folder import PretrainedViT, from_checkpoint, load_model_folder, save_model_folder

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.mark.slow
@pytest.mark.parametrize("flags", [PATCH_CLS, CONV_SEQ], ids=["patch-cls", "conv-seq"])
def test_folder_gives_the_checkpoints_logits(exported, flags):
    run = exported(*flags)
    assert sorted(p.name for p in run.folder.iterdir()) == [
        "README.md", "config.json", "model.onnx", "model.pt2", "model.safetensors"]
    loaded = load_model_folder(run.folder)
    assert not loaded.training and isinstance(loaded.model, VisionTransformer)
    classifier = ViTClassifier.load_from_checkpoint(run.ckpt, map_location="cpu").eval()
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), from_checkpoint(load_checkpoint(run.ckpt), run.ckpt)(images))
        torch.testing.assert_close(loaded(images), classifier((images - MNIST_MEAN) / MNIST_STD), rtol=0, atol=1e-6)

    config = json.loads((run.folder / "config.json").read_text())
    assert config["classes"] == list("0123456789") and config["dataset"] == "mnist"
    assert (config["mean"], config["std"]) == (MNIST_MEAN, MNIST_STD)
    expected = {name: classifier.hparams.get(name, default) for name, default in ARCHITECTURE.items()}
    assert config["architecture"] == expected and expected["dim"] == 16


@pytest.mark.slow
def test_model_card_describes_the_run(exported):
    run = exported(*PATCH_CLS)
    card = (run.folder / "README.md").read_text()
    accuracy = next(line for line in run.output.splitlines() if "test accuracy" in line).split("test accuracy ")[1]
    assert f"**{accuracy[:accuracy.index('%') + 1]}**" in card  # the accuracy the export measured
    parameters = sum(p.numel() for p in load_model_folder(run.folder).parameters())
    assert f"{parameters:,} parameters" in card and "trained on mnist" in card
    assert "python train.py fit --config config.yaml" in card
    assert "  dim: 16" in card and "max_epochs: 2" in card  # the run's own config.yaml
    assert "## Intended use and limits" in card and card.startswith("---\nlibrary_name: vit-lightning\n")


@pytest.mark.slow
def test_folder_loads_in_a_process_that_never_imports_lightning(exported):
    run = exported(*CONV_SEQ)
    code = (
        "import json, sys, torch\n"
        "from vit_lightning.serving.model_folder import load_model_folder\n"
        f"model = load_model_folder({str(run.folder)!r})\n"
        "images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))\n"
        "with torch.no_grad(): print(json.dumps(model(images).tolist()))\n"
        "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'Lightning was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_model_folder(run.folder)(images)
    assert torch.equal(torch.tensor(json.loads(result.stdout.splitlines()[-1])), expected)


def test_unusable_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"^--model .*missing is not a model folder \(no config.json, model.safetensors\)"):
        load_model_folder(tmp_path / "missing")
    model = PretrainedViT({**ARCHITECTURE, "dim": 16, "depth": 1, "heads": 2}, list("0123456789"), 0.5, 0.5)
    save_model_folder(model, tmp_path / "folder", "# card\n")
    assert (tmp_path / "folder" / "README.md").read_text() == "# card\n"  # the given card, not a generic one
    weights = tmp_path / "folder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=r"^--model .*folder: cannot load the model \(.*\); export it again$"):
        load_model_folder(tmp_path / "folder")
