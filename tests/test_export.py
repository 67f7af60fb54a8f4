"""python -m vit_lightning.export: onnxruntime and torch.export against the Lightning model; one-line errors."""

import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

from support import CONV_SEQ, PATCH_CLS, REPO
from vit_lightning.data.idx import find_idx_files, load_split
from vit_lightning.errors import exit_on_user_error
from vit_lightning.export import main
from vit_lightning.training.module import ViTClassifier
from vit_lightning.serving.model_folder import PretrainedViT

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def export_error(capsys, *args: str) -> str:
    """Run the export command in this process, expect one ``error: ...`` line and exit status 1, return it."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main(list(args)))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, repr(err)
    return err.strip()


@pytest.mark.slow
@pytest.mark.parametrize("flags", [PATCH_CLS, CONV_SEQ], ids=["patch-cls", "conv-seq"])
def test_exported_programs_match_the_lightning_model_on_the_test_split(exported, flags):
    run = exported(*flags)
    images, labels = load_split(find_idx_files(run.data, "mnist"), "test")
    classifier = ViTClassifier.load_from_checkpoint(run.ckpt, map_location="cpu").eval()
    with torch.no_grad():
        reference = classifier((images.unsqueeze(1).float() / 255 - MNIST_MEAN) / MNIST_STD)
    unit = images.unsqueeze(1).float() / 255  # the exported programs' input: [0, 1], normalisation inside

    graph = onnx.load(run.folder / "model.onnx")
    (model_input,) = graph.graph.input
    dims = [d.dim_param or d.dim_value for d in model_input.type.tensor_type.shape.dim]
    assert model_input.name == "images" and dims[1:] == [1, 28, 28] and isinstance(dims[0], str)  # dynamic batch
    session = onnxruntime.InferenceSession(run.folder / "model.onnx", providers=["CPUExecutionProvider"])
    program = torch.export.load(run.folder / "model.pt2").module()
    for batch in (1, 7, len(images)):
        onnx_logits = torch.cat([torch.from_numpy(session.run(None, {"images": chunk.numpy()})[0])
                                 for chunk in unit.split(batch)])
        with torch.no_grad():
            program_logits = torch.cat([program(chunk) for chunk in unit.split(batch)])
        for logits in (onnx_logits, program_logits):
            assert logits.shape == reference.shape
            assert (logits - reference).abs().max() <= 1e-4
            assert torch.equal(logits.argmax(-1), reference.argmax(-1))

    # The command printed the same check: figures, agreement and speeds.
    out = run.output
    accuracy = (reference.argmax(-1) == labels).float().mean().item()
    assert f"parity on {len(images)} test images (Lightning model's test accuracy {accuracy:.2%})" in out
    for name in ("onnxruntime", "torch.export"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert f"same class {len(images)}/{len(images)} (100.00%)" in line
        assert float(re.search(r"max \|logit difference\| (\S+)", line).group(1)) <= 1e-4
        assert re.search(r"[\d,]+ images/s \(\d+\.\d\dx\)", line)
    assert re.search(r"PyTorch \(Lightning\)\s+[\d,]+ images/s", out)


@pytest.mark.slow
def test_bad_inputs_are_one_line_each(exported, tmp_path, capsys):
    run = exported(*PATCH_CLS)
    output = str(tmp_path / "out")
    assert "--ckpt_path best: no" in export_error(
        capsys, "--ckpt_path", "best", "--output", output, "--trainer.default_root_dir", str(tmp_path / "none"))
    assert "does not exist" in export_error(capsys, "--ckpt_path", str(tmp_path / "gone.ckpt"), "--output", output)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    assert "is not a readable checkpoint" in export_error(
        capsys, "--ckpt_path", str(tmp_path / "notes.ckpt"), "--output", output)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    assert "holds no model settings (hyper_parameters)" in export_error(
        capsys, "--ckpt_path", str(tmp_path / "foreign.ckpt"), "--output", output)
    (tmp_path / "file").write_text("")
    assert "--output: cannot create" in export_error(
        capsys, "--ckpt_path", str(run.ckpt), "--output", str(tmp_path / "file" / "out"))
    assert "--data.root" in export_error(
        capsys, "--ckpt_path", str(run.ckpt), "--output", output, "--data.root", str(tmp_path / "nodata"),
        "--data.download", "false")
    assert not Path(output).exists()


@pytest.mark.slow
def test_a_model_the_exporter_cannot_handle_is_one_line(exported, tmp_path, capsys, monkeypatch):
    run = exported(*PATCH_CLS)
    forward = PretrainedViT.forward

    def data_dependent(self, images):  # Python control flow on a tensor's value: no static graph exists
        return forward(self, images) if images.sum() > 0 else -forward(self, images)

    monkeypatch.setattr(PretrainedViT, "forward", data_dependent)
    error = export_error(capsys, "--ckpt_path", str(run.ckpt), "--output", str(tmp_path / "out"), "--limit", "8")
    assert error.startswith("error: cannot export this model to ONNX (tokenizer=patch, pool=cls, "
                            "pos_embedding=sincos): ")


@pytest.mark.slow  # a python process
def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vit_lightning.export", "--ckpt_path", "last", "--output", str(tmp_path / "out"),
         "--trainer.default_root_dir", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: --ckpt_path last: no {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}; "
                                      "train first or pass --ckpt_path PATH")
