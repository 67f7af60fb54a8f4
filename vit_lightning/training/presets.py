"""Where the YAML presets live: ``configs/`` beside the package, as in the repository (``pip install -e .``).

Every run loads ``configs/default.yaml`` first; without it a run would silently train with the classes' own
defaults, so a missing presets folder is an error that says how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from vit_lightning.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def preset_file(preset: str) -> Path:
    """``configs/<preset>.yaml``, or ``preset`` itself when it names a YAML file; raises when it does not exist."""
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else CONFIGS / f"{preset}.yaml"
    if not path.is_file():
        if not CONFIGS.is_dir():
            raise UserError(f"the presets folder {CONFIGS} is missing: vit-lightning runs from its repository; "
                            f"install it with `pip install -e .` from a clone")
        names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise UserError(f"no preset {path}; choose one of {names} or give a YAML file's path")
    return path
