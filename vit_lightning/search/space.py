"""The search space: a YAML file of ``train.py fit`` options with distributions, the objective, the budget, the
sampler and pruner settings, the flags every trial gets and trials to run first; the W&B sweep file generated from
it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)

from vit_lightning.errors import UserError

SPACE_KEYS = ("objective", "budget", "sampler", "pruner", "fixed", "first", "parameters")
PRUNERS = ("median", "halving", "none")
SWEEP_HEADER = """\
# W&B hyper-parameter sweep over `train.py fit`, GENERATED from configs/search.yaml (edit that file, then run
#   python -m vit_lightning.search --space configs/search.yaml --sweep configs/sweep.yaml
# ); the same space is searched offline by `python -m vit_lightning.search` (README, Hyper-parameter search).
#   wandb sweep configs/sweep.yaml      # prints the sweep ID
#   wandb agent ENTITY/PROJECT/ID       # runs train.py fit with each suggested setting as --key=value overrides
# Every run of the sweep writes under runs/sweep (its W&B run holds its config, metrics and pictures).
"""


@dataclass
class Space:
    """A parsed space file (see ``configs/search.yaml``)."""

    path: Path
    parameters: dict[str, BaseDistribution]
    metric: str = "val/acc"
    direction: str = "maximize"
    trials: int | None = 12
    timeout: float | None = None
    seed: int = 0
    startup_trials: int = 10
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    fixed: list[str] = field(default_factory=list)
    first: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any]:
        """What a study is bound to: its parameters' distributions and its objective."""
        return {"metric": self.metric, "direction": self.direction,
                "parameters": {name: distribution_to_json(d) for name, d in self.parameters.items()}}


def load_space(path: Path) -> Space:
    """Read a space file, or raise a one-line :class:`UserError` naming what is wrong in it."""
    where = f"--space {path}"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; give a space file such as configs/search.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{where} is not readable YAML ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise UserError(f"{where} has no `parameters:` mapping of train.py fit options; see configs/search.yaml")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(SPACE_KEYS)}")
    parameters = {}
    for name, spec in raw["parameters"].items():
        if str(name).startswith("-"):
            raise UserError(f"{where}: parameter {name} is written without dashes, e.g. model.dim")
        parameters[str(name)] = make_distribution(str(name), spec, where)
    objective, budget = _section(raw, "objective", where), _section(raw, "budget", where)
    sampler, pruner = _section(raw, "sampler", where), _section(raw, "pruner", where) or {"type": "median"}
    direction = objective.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise UserError(f"{where}: objective.direction is {direction!r}; use maximize or minimize")
    if pruner.get("type", "median") not in PRUNERS:
        raise UserError(f"{where}: pruner.type is {pruner.get('type')!r}; use one of {', '.join(PRUNERS)}")
    fixed = raw.get("fixed") or []
    if not isinstance(fixed, list):
        raise UserError(f"{where}: fixed is a list of train.py fit flags, e.g. [--config, configs/quick.yaml]")
    space = Space(path, parameters, metric=str(objective.get("metric", "val/acc")), direction=direction,
                  trials=budget.get("trials", 12), timeout=budget.get("timeout"), seed=int(sampler.get("seed", 0)),
                  startup_trials=int(sampler.get("startup_trials", 10)), pruner=pruner,
                  fixed=[str(flag) for flag in fixed], first=raw.get("first") or [])
    for point in space.first:
        require_point_in_space(point, space, where)
    return space


def _section(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} is a mapping (see configs/search.yaml), not {value!r}")
    return value


def make_distribution(name: str, spec: Any, where: str) -> BaseDistribution:
    """The Optuna distribution of one parameter's spec, or a one-line :class:`UserError`."""
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise UserError(f"{where}: parameter {name} needs a type: float, int or categorical, e.g. "
                        "{type: float, low: 0.001, high: 0.1, log: true}")
    kind = spec["type"]
    extra = sorted(set(spec) - ({"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}))
    if extra:
        raise UserError(f"{where}: parameter {name} ({kind}) has an unknown key {extra[0]!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: parameter {name} is categorical with no choices; give choices: [a, b, ...]")
        if not all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
            raise UserError(f"{where}: parameter {name}: choices are numbers, strings, booleans or null")
        return CategoricalDistribution(choices)
    low, high, log = _number(spec.get("low"), kind), _number(spec.get("high"), kind), spec.get("log", False)
    if low is None or high is None:
        raise UserError(f"{where}: parameter {name} ({kind}) needs {kind} values low and high")
    if low > high:
        raise UserError(f"{where}: parameter {name} has low {low} > high {high}; swap them")
    if not isinstance(log, bool):
        raise UserError(f"{where}: parameter {name}: log is true or false, not {log!r}")
    if log and low <= 0:
        raise UserError(f"{where}: parameter {name} is log-scaled, so low must be > 0, not {low}")
    return IntDistribution(low, high, log=log) if kind == "int" else FloatDistribution(low, high, log=log)


def _number(value: Any, kind: str) -> int | float | None:
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    try:  # YAML reads 3e-4 (no dot) as a string
        return float(value)
    except (TypeError, ValueError):
        return None


def contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, IntDistribution) and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    return isinstance(value, (int, float)) and distribution.low <= value <= distribution.high


def require_point_in_space(point: Any, space: Space, where: str) -> None:
    if not isinstance(point, dict) or set(point) != set(space.parameters):
        missing = sorted(set(space.parameters) - set(point or {})) if isinstance(point, dict) else []
        raise UserError(f"{where}: each trial under first: gives every parameter once"
                        + (f" (missing {missing[0]})" if missing else f" ({point!r} does not)"))
    for name, value in point.items():
        if not contains(space.parameters[name], value):
            raise UserError(f"{where}: first: {name} {value!r} is outside the parameter's distribution")


def sweep_config(space: Space) -> dict[str, Any]:
    """The W&B sweep of the same space (``wandb sweep`` format), as configs/sweep.yaml holds it."""
    parameters = {}
    for name, d in space.parameters.items():
        if isinstance(d, CategoricalDistribution):
            parameters[name] = {"values": list(d.choices)}
        elif isinstance(d, IntDistribution):
            parameters[name] = ({"distribution": "q_log_uniform_values", "min": d.low, "max": d.high, "q": 1}
                                if d.log else {"distribution": "int_uniform", "min": d.low, "max": d.high})
        else:
            parameters[name] = {"distribution": "log_uniform_values" if d.log else "uniform",
                                "min": d.low, "max": d.high}
    sweep: dict[str, Any] = {"program": "train.py", "method": "bayes",
                             "metric": {"name": space.metric, "goal": space.direction}}
    if space.pruner.get("type", "median") != "none":
        sweep["early_terminate"] = {"type": "hyperband", "min_iter": int(space.pruner.get("warmup_epochs", 0)) + 1}
    sweep["parameters"] = parameters
    sweep["command"] = ["${env}", "${interpreter}", "${program}", "fit", *space.fixed, "--config", "configs/wandb.yaml",
                        "--trainer.default_root_dir", "runs/sweep", "${args}"]
    return sweep


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner of a space's ``pruner:`` section; steps are validations (1 = the first)."""
    kind, warmup = spec.get("type", "median"), int(spec.get("warmup_epochs", 0))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("startup_trials", 3)),
                                           n_warmup_steps=warmup + 1)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1)
    return optuna.pruners.NopPruner()
