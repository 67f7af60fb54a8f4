"""Weights & Biases through the real wandb client in offline mode: what a run records, resume, DDP, sweeps."""

import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

from support import REPO, run_train, tiny_args, write_dataset
from vit_lightning.training.module import ViTClassifier

pytestmark = pytest.mark.slow  # every test here starts train.py processes

WANDB = ["--config", "configs/wandb.yaml", "--trainer.enable_progress_bar", "false"]


def train(*args: str, mode: str = "offline", **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    environment.update(WANDB_MODE=mode, OMP_NUM_THREADS="1", **env)
    return run_train(*args, env=environment)


def trained(*args: str, **env: str) -> subprocess.CompletedProcess:
    result = train(*args, **env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def read_records(path: Path) -> list:
    """The protobuf records of a ``run-ID.wandb`` file (a LevelDB-style log: a 7-byte file header, 32 KiB
    blocks, each chunk with a 7-byte header of CRC, length and type FULL/FIRST/MIDDLE/LAST)."""
    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    records, chunks, position = [], [], 7
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


class OfflineRun:
    """What one offline run folder holds: its id, config, final summary, metric names and media files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config, self.summary, self.history_keys, self.artifacts = {}, {}, set(), []
        for record in read_records(next(folder.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.id, self.project = record.run.run_id, record.run.project
            elif kind == "config":
                self.config.update({_key(item): yaml.safe_load(item.value_json) for item in record.config.update})
            elif kind == "summary":
                self.summary.update({_key(item): yaml.safe_load(item.value_json) for item in record.summary.update})
            elif kind == "history":
                self.history_keys |= {_key(item) for item in record.history.item}
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
        images = folder / "files" / "media" / "images"
        self.media = sorted(path.relative_to(images).as_posix() for path in images.rglob("*.png"))


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def offline_runs(root: Path) -> list[OfflineRun]:
    return [OfflineRun(folder) for folder in sorted((root / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def wandb_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    data_root = write_dataset(tmp / "data", gz=True)
    run_dir = tmp / "run"
    trained("fit", *tiny_args(data_root, run_dir), *WANDB, "--trainer.logger.init_args.log_model", "true",
            "--trainer.logger.init_args.tags", "[tiny, test]", "--trainer.logger.init_args.group", "ci")
    return data_root, run_dir


def test_offline_run_records_config_metrics_pictures_and_checkpoints(wandb_fit):
    data_root, run_dir = wandb_fit
    [run] = offline_runs(run_dir)
    # The complete resolved CLI config, the parameter count and the package versions.
    assert run.config["model"]["dim"] == 16 and run.config["model"]["optimizer"]["init_args"]["lr"] == 0.003
    assert run.config["data"]["root"] == str(data_root) and run.config["data"]["dataset"] == "mnist"
    assert run.config["trainer"]["max_epochs"] == 2 and run.config["seed_everything"] == 42
    assert run.config["trainer"]["logger"]["init_args"]["group"] == "ci"
    assert run.config["parameters"] == sum(p.numel() for p in ViTClassifier(patch_size=7, dim=16, depth=1, heads=2, mlp_ratio=2.0).parameters())
    assert {"torch", "lightning", "wandb", "python"} <= set(run.config["versions"])
    # Metrics over time and their final values.
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch", "train/images_per_sec"} <= run.history_keys
    assert any(key.startswith("lr-") for key in run.history_keys)
    assert 0.0 <= run.summary["val/acc"] <= 1.0 and run.summary["epoch"] == 1
    # Pictures of the last validation epoch.
    assert [Path(name).parent.as_posix() + "/" + Path(name).name.split("_")[0] for name in run.media] == [
        "val/attention", "val/confusion", "val/predictions"]
    # log_model: the best and the last checkpoint as model artifacts.
    assert all(artifact.type == "model" for artifact in run.artifacts)
    saved = sorted(json.loads(artifact.metadata)["original_filename"] for artifact in run.artifacts)
    assert len(saved) == 2 and saved[0].startswith("epoch") and saved[1] == "last.ckpt"


def test_test_run_logs_test_metrics_and_pictures(wandb_fit):
    data_root, run_dir = wandb_fit
    test_root = run_dir.parent / "test"
    trained("test", *tiny_args(data_root, test_root), *WANDB, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))
    [run] = offline_runs(test_root)
    assert {"test/loss", "test/acc"} <= set(run.summary)
    assert sorted(Path(name).parent.as_posix() for name in run.media) == ["test"] * 3


def test_resumed_fit_continues_the_same_run(wandb_fit):
    data_root, run_dir = wandb_fit
    resumed = run_dir.parent / "resumed"
    shutil.copytree(run_dir, resumed)
    trained("fit", *tiny_args(data_root, resumed), *WANDB, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    first, second = offline_runs(resumed)
    assert first.id == second.id
    assert second.summary["epoch"] == 2


def test_ddp_makes_exactly_one_run(tmp_path):
    data_root = write_dataset(tmp_path / "data", gz=True)
    trained("fit", *tiny_args(data_root, tmp_path / "run"), *WANDB, "--config", "configs/ddp.yaml",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_epochs", "1")
    assert len(offline_runs(tmp_path / "run")) == 1


def test_wandb_dir_and_project_come_from_the_environment(tmp_path):
    data_root = write_dataset(tmp_path / "data", gz=True)
    elsewhere = tmp_path / "wandb_dir"
    elsewhere.mkdir()
    trained("fit", *tiny_args(data_root, tmp_path / "run"), *WANDB, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", WANDB_DIR=str(elsewhere), WANDB_PROJECT="elsewhere")
    [run] = offline_runs(elsewhere)
    assert not (tmp_path / "run" / "wandb").exists()
    assert run.project == "elsewhere"


@pytest.fixture
def server():
    """The URL of a local port that accepts connections: a W&B server that online mode can reach."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_online_without_credentials_is_a_one_line_error(tmp_path, server):
    data_root = write_dataset(tmp_path / "data", gz=True)
    result = train("fit", *tiny_args(data_root, tmp_path / "run"), *WANDB, mode="online", HOME=str(tmp_path),
                   WANDB_BASE_URL=server)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "wandb login" in error and "WANDB_MODE=offline" in error
    assert not (tmp_path / "run").exists()


def test_online_without_a_reachable_server_falls_back_to_offline_at_once(tmp_path):
    data_root = write_dataset(tmp_path / "data", gz=True)
    server = "http://127.0.0.1:9"  # nothing listens there: like a machine without network
    result = trained("fit", *tiny_args(data_root, tmp_path / "run"), *WANDB, "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "1", mode="online", WANDB_API_KEY="0" * 40,
                     WANDB_BASE_URL=server)
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("W&B cannot reach")]
    assert line.startswith(f"W&B cannot reach {server} (") and "logging offline" in line and "wandb sync" in line
    assert len(offline_runs(tmp_path / "run")) == 1


def test_an_empty_wandb_mode_means_unset(tmp_path, server):
    data_root = write_dataset(tmp_path / "data", gz=True)
    result = train("fit", *tiny_args(data_root, tmp_path / "run"), *WANDB, mode="", HOME=str(tmp_path),
                   WANDB_BASE_URL=server)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: W&B is online but has no API key")


def test_credentials_are_only_required_online(tmp_path, monkeypatch, server):
    from jsonargparse import Namespace

    from vit_lightning.errors import UserError
    from vit_lightning.training.tracking import prepare_wandb

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", server)
    for offline in ({"mode": "offline"}, {"offline": True}):
        logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(**offline))
        prepare_wandb(logger, str(tmp_path), resumed_run_id="abc123")
        assert logger.init_args.save_dir == str(tmp_path) and logger.init_args.project == "vit-lightning"
        assert logger.init_args.version == "abc123" and logger.init_args.resume == "allow"
    with pytest.raises(UserError, match="wandb login"):
        prepare_wandb(Namespace(init_args=Namespace()), str(tmp_path), resumed_run_id=None)


def test_sweep_command_line_is_accepted_by_train_fit():
    sweep = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and sweep["metric"]["name"] == "val/acc"
    command = sweep["command"]
    assert command[:3] == ["${env}", "${interpreter}", "${program}"] and command[-1] == "${args}"
    # What `wandb agent` appends: one --key=value per swept parameter.
    chosen = {name: spec["values"][-1] if "values" in spec else spec["max"] for name, spec in sweep["parameters"].items()}
    args = [f"--{name}={value}" for name, value in chosen.items()]
    result = train(*command[3:-1], *args, "--print_config")
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    for name, value in chosen.items():
        node = config
        for part in name.split("."):
            node = node[part]
        assert node == value, name
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
