"""Training: the loop, its state and schedule, callbacks, the distributed seam, and whole runs.

    from tinygpt.train import Session
    Session.start({"data": "my_book.txt", "max_time": "15m"}).fit()

A :class:`Trainer` takes a model, a :class:`TrainConfig` and any iterator of
``tinygpt.data.Batch``; everything else (evaluation, checkpoints, metrics, progress,
samples) is a :class:`Callback`. :func:`resolve_new_run` / :func:`resolve_run` decide a run
from settings once; :class:`Session` builds the standard run from that.
"""

from .callbacks import (
           Callback,
           Checkpointer,
           EarlyStop,
           Evaluator,
           LambdaCallback,
           MetricsLog,
           PeriodicSampler,
           ProgressBar,
)
from .config import (
           DEFAULT_TIME_BUDGET,
           RunConfig,
           RunSection,
           SessionOptions,
           TrainConfig,
)
from .distributed import DistContext
from .resolve import (
           ResolvedRun,
           resolve_new_run,
           resolve_run,
           resumed_run_config,
           run_dir,
)
from .session import Session, fit_and_report, run_data
from .state import TrainState
from .trainer import DivergedError, Trainer

__all__ = ["Callback", "Checkpointer", "DEFAULT_TIME_BUDGET", "DistContext", "EarlyStop", "Evaluator", "LambdaCallback",
           "MetricsLog", "PeriodicSampler", "ProgressBar", "ResolvedRun", "RunConfig", "RunSection", "Session", "SessionOptions",
           "TrainConfig", "TrainState", "DivergedError", "Trainer", "fit_and_report", "resolve_new_run", "resolve_run",
           "resumed_run_config", "run_data", "run_dir"]
