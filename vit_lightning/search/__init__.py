"""``python -m vit_lightning.search``: a hyper-parameter search with Optuna, each trial a real ``train.py fit``.

How it works (one design, stated once):

- **The space** is a YAML file (``configs/search.yaml``): ``train.py fit`` options with distributions, the objective,
  the budget, sampler and pruner settings, the flags every trial gets (``fixed``) and trials to run first. It is
  the one source: ``configs/sweep.yaml`` for ``wandb sweep`` is generated from it (``--sweep PATH``,
  :func:`sweep_config`), and a test checks that the committed file is what the space generates.
- **A worker** is this command. It opens the study in its storage (default: SQLite ``DIR/study.db``; ``--storage
  URL``: PostgreSQL or MySQL through SQLAlchemy, or a path: Optuna's journal file), then claims trials one at a time
  (``study.ask``; a lock file in ``DIR`` makes the count-then-ask of the workers of one machine atomic) until the
  study holds ``--trials`` finished or running trials. Several workers started with the same command, on one
  machine or many, share the study: the storage hands each trial to one worker; TPE samples trial k with seed
  ``seed + k``, so one worker is reproducible and two workers never draw the same values at once.
- **A trial** is a subprocess ``python train.py fit FIXED FLAGS --PARAM=VALUE ...`` in its own run folder
  ``DIR/trial_NNNN`` (checkpoints, logs, config, ``train.log``), in its own session: DDP trials (``--trainer.devices
  N``) work as any fit does. The trial's config adds :class:`StudyReport`, which opens the study from the storage
  inside the fit, reports the objective after every validation and, when the pruner says so (rank 0 decides,
  every rank stops), ends the fit after that validation. The worker then tells Optuna: complete (the last reported
  value), pruned, or failed with the fit's ``error:`` line (a diverged trial: its non-finite loss).
- **Nothing is lost.** Re-running the command continues the study. A trial whose worker died (``kill -9``, a crashed
  machine) is marked failed: at once by the next worker on the same machine (the dead worker's pid), else by
  Optuna's heartbeat (RDB storage, ``--heartbeat``); Optuna's ``RetryHeartbeatStaleTrialCallback`` queues it again with the
  same values, and the retry resumes its run folder's ``last.ckpt``. Ctrl-C (or SIGTERM) is passed to the running
  fit, which saves ``last.ckpt`` after its batch; the trial is marked failed and queued again the same way, and the
  worker stops (a second Ctrl-C: at once). A trial process whose worker is gone exits by itself.
- **Results**: a table of the trials, ``DIR/best.yaml`` (``python train.py fit --config DIR/best.yaml`` trains the
  best trial's settings as is), and plots in ``DIR/plots/`` (and to W&B when the trials log to W&B).

The modules, one concept each: :mod:`.space` (the space file, its distributions and checks, its pruner, the W&B
sweep file), :mod:`.fit` (a trial's ``train.py fit``: its flags, its complete config, its error line),
:mod:`.study` (the storage and the study, the heartbeat, the lock of one machine's workers, dead workers' trials),
:mod:`.report` (:class:`StudyReport`, the callback inside each trial's fit), :mod:`.worker` (claiming and running
trials as subprocesses, signals), :mod:`.results` (the table, ``best.yaml``, the plots) and :mod:`.__main__` (the
command's arguments and ``main``).
"""

# Trial configs written before the split (and a user's own config) name the callback by this class path.
from vit_lightning.search.report import StudyReport

__all__ = ["StudyReport"]
