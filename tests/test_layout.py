"""The layout's rules: data and serving never import Lightning, each contract has one home, Lightning's private names
are all in training/compat.py, old module paths still import, and no module grows past 300 lines."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys

import pytest
import yaml

from support import REPO
from vit_lightning import MOVED
from vit_lightning.architecture import ARCHITECTURE, RUN_TIME, SETTINGS
from vit_lightning.training import callbacks, compat
from vit_lightning.training.module import ViTClassifier
from vit_lightning.training.presets import preset_file

PACKAGE = REPO / "vit_lightning"
LIGHTNING_FREE = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for folder in ("data", "serving") for path in (PACKAGE / folder).glob("*.py")
) + ["vit_lightning", "vit_lightning.model", "vit_lightning.architecture", "vit_lightning.errors",
     "vit_lightning.outputs", "vit_lightning.demo"]


def test_data_and_serving_import_in_a_process_where_lightning_cannot_be_imported():
    code = (
        "import importlib, sys\n"
        "class NoLightning:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric'):\n"
        "            raise ImportError(f'{name} may not be imported here')\n"
        "sys.meta_path.insert(0, NoLightning())\n"
        f"for name in {LIGHTNING_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "assert not [name for name in sys.modules if name.startswith(('lightning', 'pytorch_lightning'))]\n"
        "print('imported', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vit_lightning.serving.model_folder" in LIGHTNING_FREE and "vit_lightning.data.memory" in LIGHTNING_FREE


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The training CLI, parsed and instantiated (``fit`` of the default config), not run."""
    from vit_lightning.training.cli import ViTCLI

    return ViTCLI(["--trainer.default_root_dir", str(tmp_path_factory.mktemp("run"))], run=False)


def test_every_private_lightning_name_the_project_relies_on_exists(cli, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    instances = {type(cli).__mro__[1]: cli, type(cli.trainer): cli.trainer, ModelCheckpoint: ModelCheckpoint(),
                 CSVLogger: CSVLogger(tmp_path), ExperimentWriter: ExperimentWriter(str(tmp_path))}
    missing = [f"{owner.__name__}.{name}" for owner, names in compat.RELIES_ON.items() for name in names
               if not hasattr(instances[owner], name)  # set only by some method (LightningCLI's subcommand parsers):
               and not re.search(rf"self\.{name}(: [^=]+)? = ", inspect.getsource(owner))]
    assert not missing, f"gone from this Lightning: {missing}; see training/compat.py"


def test_private_lightning_names_appear_only_in_the_compat_module():
    uses = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        for names in compat.RELIES_ON.values():
            for name in names:
                if f"._{name.lstrip('_')}" in text.replace("def _", "") and name.startswith("_"):
                    uses.setdefault(str(path.relative_to(REPO)), []).append(name)
    overridden = {"vit_lightning/training/checkpointing.py": ["_save_checkpoint"]}  # the override's super() call
    assert uses == overridden


def test_no_module_is_over_300_lines():
    long = {str(path.relative_to(REPO)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 300}
    assert not long


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_module_paths_import_as_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_architecture_is_declared_once_by_the_model_and_taken_over_by_the_module():
    module = inspect.signature(ViTClassifier).parameters
    assert {name: module[name].default for name in ARCHITECTURE} == ARCHITECTURE
    model = ViTClassifier(dim=16, depth=1, heads=2, patch_size=7)
    assert set(ARCHITECTURE) <= set(model.hparams) and not set(RUN_TIME) & set(model.hparams)
    assert set(module) == SETTINGS  # what a checkpoint of this project may hold (serving.checkpoints.model_settings)


def test_callbacks_are_registered_in_one_place(cli):
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in preset_file("default").parent.glob("*.yaml")}
    for name, config in configs.items():
        trainer = (config or {}).get("trainer") or {}
        assert "callbacks" not in trainer, f"configs/{name}.yaml replaces the registered callbacks"
        added = [entry["class_path"] for entry in trainer.get("callbacks+", [])]
        if added:
            assert added == [callbacks.class_path(callbacks.OPT_IN[name])], name
    names = [type(callback) for callback in cli.trainer.callbacks]
    expected = [cls for cls, _ in callbacks.DEFAULTS] + list(callbacks.SECTIONS.values()) + list(callbacks.ALWAYS)
    assert all(cls in names for cls in expected), names
