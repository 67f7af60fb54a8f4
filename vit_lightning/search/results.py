"""The study's results: a table of its trials, ``DIR/best.yaml`` (the best trial's complete config) and Optuna's
plots in ``DIR/plots/`` (and to W&B)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vit_lightning.search.fit import param_flags, print_config
from vit_lightning.search.space import Space
from vit_lightning.search.study import NO_HEARTBEAT

def _clip(text: str, length: int = 160) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def show_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_table(study: optuna.Study, space: Space) -> None:
    """Print the study's trials as a table (rich)."""
    from rich.console import Console
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState
                       if any(t.state == s for t in trials))
    table = Table(title=f"study {study.study_name}: {counts}" + (f"; best: trial {best}" if complete else ""))
    for column in ("#", "state", space.metric, *map(short_name, space.parameters), "epochs", "time", "note"):
        table.add_column(column, justify="left" if column in ("state", "note") else "right")
    for t in trials:
        values = t.intermediate_values
        value = t.value if t.value is not None else (values[max(values)] if values else None)
        note = {TrialState.PRUNED: f"pruned after epoch {t.user_attrs.get('pruned_at_epoch', '?')}",
                TrialState.FAIL: _clip(str(t.user_attrs.get("error", NO_HEARTBEAT)))}.get(t.state, "")
        if "failed_trial" in t.system_attrs and t.state != TrialState.FAIL:
            note = f"retry of {t.system_attrs['failed_trial']}" + (f"; {note}" if note else "")
        seconds = t.duration.total_seconds() if t.duration else None
        table.add_row(f"{t.number}" + (" *" if t.number == best else ""), t.state.name.lower(),
                      "" if value is None else f"{value:.4f}",
                      *(show_value(t.params.get(n, "")) for n in space.parameters),
                      str(max(values)) if values else "", "" if seconds is None else f"{seconds:.0f} s", note)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_best(study: optuna.Study, space: Space, folder: Path, flags: list[str]) -> Path:
    """``DIR/best.yaml``: the complete config of the best trial, training into ``DIR/best``."""
    best = study.best_trial
    text = print_config([*flags, *param_flags(best.params), "--trainer.default_root_dir", str(folder / "best")])
    header = (f"# The best trial ({best.number}, {space.metric} {best.value:.4f}) of study {study.study_name}, "
              f"written by python -m vit_lightning.search.\n# Train it: python train.py fit --config "
              f"{folder / 'best.yaml'}\n")
    path = folder / "best.yaml"
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(header + text)
    os.replace(temporary, path)
    return path


PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
         "parallel_coordinate": "plot_parallel_coordinate", "slice": "plot_slice",
         "intermediate_values": "plot_intermediate_values"}


def write_plots(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """Optuna's matplotlib plots of the study as ``DIR/plots/NAME.png``; those that cannot be drawn yet (e.g.
    importances with fewer than two complete trials) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as plots

    (folder / "plots").mkdir(exist_ok=True)
    written = {}
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
            try:
                axes = getattr(plots, function)(study)
            except Exception:  # noqa: BLE001 - not enough trials for this plot yet
                plt.close("all")
                continue
        figure = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure
        path = folder / "plots" / f"{name}.png"
        temporary = path.with_suffix(f".{os.getpid()}.tmp.png")
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
        plt.close(figure)
        os.replace(temporary, path)
        written[name] = path
    return written


def send_plots_to_wandb(study: optuna.Study, space: Space, folder: Path, plots: dict[str, Path],
                        logger: dict) -> None:
    """The plots and the best trial to one W&B run of the study's group (job type ``search``)."""
    import wandb
    from jsonargparse import Namespace

    from vit_lightning.training.tracking import prepare_wandb

    config = Namespace(class_path=logger["class_path"], init_args=Namespace(**(logger.get("init_args") or {})))
    prepare_wandb(config, str(folder), None)
    init_args = config.init_args
    run = wandb.init(project=init_args.project, entity=init_args.get("entity"), dir=str(init_args.save_dir),
                     group=study.study_name, name=f"{study.study_name}-search", job_type="search",
                     mode="offline" if init_args.get("offline") else None,
                     config={"best_trial": study.best_trial.number, **study.best_trial.params})
    run.log({f"search/{name}": wandb.Image(str(path)) for name, path in plots.items()})
    run.summary[f"best/{space.metric}"] = study.best_value
    run.finish()
