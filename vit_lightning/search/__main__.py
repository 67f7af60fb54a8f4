"""``python -m vit_lightning.search``: the command's arguments and :func:`main`, a worker of the search (see
:mod:`vit_lightning.search`)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from vit_lightning.errors import UserError
from vit_lightning.outputs import require_writable_folder
from vit_lightning.search import __doc__ as DESIGN
from vit_lightning.search.fit import param_flags, print_config
from vit_lightning.search.results import send_plots_to_wandb, show_table, write_best, write_plots
from vit_lightning.search.space import SWEEP_HEADER, load_space, sweep_config
from vit_lightning.search.study import open_study
from vit_lightning.search.worker import Worker
from vit_lightning.training.presets import CONFIGS


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m vit_lightning.search", allow_abbrev=False, description=DESIGN.split("\n")[0],
        epilog="Every other flag is a train.py fit flag, fixed for every trial (after the space's `fixed`), e.g. "
               "--config configs/quick.yaml --data.root DIR --trainer.devices 2. Several workers: start the same "
               "command again (another terminal, another machine with --storage on a shared database).")
    parser.add_argument("--space", default=str(CONFIGS / "search.yaml"), help="the space file (configs/search.yaml)")
    parser.add_argument("--dir", default="runs/search", help="the search folder: the SQLite study, one run folder "
                        "per trial, best.yaml, plots/ (default runs/search)")
    parser.add_argument("--trials", type=int, help="finished (complete or pruned) trials the study should hold in "
                        "TOTAL, over all its workers (default: the space's budget.trials); 0: only print the "
                        "table and write best.yaml and the plots")
    parser.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial "
                        "(default: the space's budget.timeout)")
    parser.add_argument("--storage", help="the study's storage: an SQLAlchemy URL (postgresql://..., mysql+pymysql://"
                        "...) shared by workers on many machines, or a journal file's path on a shared disk "
                        "(default: sqlite:///DIR/study.db)")
    parser.add_argument("--study", help="the study's name (default: the space file's name, e.g. search)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats "
                        "(RDB storage); a trial silent for twice that is failed and queued again (default 60)")
    parser.add_argument("--sweep", metavar="PATH", help="write the space as a W&B sweep file (configs/sweep.yaml) "
                        "and exit")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a worker (see :mod:`vit_lightning.search`); the exit status: 0, 1 after Ctrl-C or when it gave up, 143
    after SIGTERM."""
    args, extra = parse_args(argv)
    space = load_space(Path(args.space))
    if args.sweep:
        Path(args.sweep).write_text(SWEEP_HEADER + yaml.safe_dump(sweep_config(space), sort_keys=False))
        print(f"wrote {args.sweep}")
        return 0
    trials = space.trials if args.trials is None else args.trials
    if not isinstance(trials, int) or trials < 0:
        raise UserError(f"the number of trials is {trials!r}; give --trials N (N >= 0) or the space's budget.trials")
    searched = sorted({flag[2:].split("=", 1)[0] for flag in extra if flag.startswith("--")} & set(space.parameters))
    if searched:
        raise UserError(f"--{searched[0]} is searched ({args.space}); drop it from the command line or the space")
    folder = Path(args.dir)
    require_writable_folder(folder, "--dir")
    folder.mkdir(parents=True, exist_ok=True)
    flags = [*space.fixed, *extra]
    lowest = {name: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
              for name, d in space.parameters.items()}
    config = yaml.safe_load(print_config([*flags, *param_flags(lowest)]))  # every option exists, every value fits
    logger = (config.get("trainer") or {}).get("logger")
    wandb = isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")
    storage_url = args.storage or f"sqlite:///{(folder / 'study.db').absolute()}"
    name = args.study or Path(args.space).stem
    study, storage, retry = open_study(space, name, storage_url, args.heartbeat, folder)
    worker = Worker(study, storage, space, folder, flags, storage_url, trials, args.timeout or space.timeout, retry,
                    wandb)
    gave_up = worker.run() if trials else None
    show_table(study, space)
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = write_best(study, space, folder, flags)
        plots = write_plots(study, folder)
        print(f"best: trial {study.best_trial.number}, {space.metric} {study.best_value:.4f}: python train.py fit "
              f"--config {best}\nplots: {', '.join(str(p) for p in plots.values())}")
        print(f"dashboard: optuna-dashboard {storage_url}")
        if wandb:
            send_plots_to_wandb(study, space, folder, plots, logger)
    if gave_up:
        raise UserError(f"this worker stopped: {gave_up}")
    if worker.signals:
        return 1 if worker.signals[0] == signal.SIGINT else 128 + signal.SIGTERM
    return 0


def run(argv: list[str] | None = None) -> None:
    """The command: :func:`main`, a :class:`UserError` as one ``error: ...`` line and exit status 1."""
    try:
        sys.exit(main(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
