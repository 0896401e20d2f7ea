"""Training: the loop, its state and schedule, callbacks, the distributed seam, and whole runs.

    from tinygpt.train import Session
    Session.start({"data": "my_book.txt", "max_time": "15m"}).fit()

A :class:`Trainer` takes a model, a :class:`TrainConfig` and any iterator of
``tinygpt.data.Batch``; everything else (evaluation, checkpoints, metrics, progress,
samples) is a :class:`Callback`. :class:`Session` builds the standard run from settings.
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
from .config import RunConfig, TrainConfig
from .distributed import DistContext
from .session import (
           Session,
           default_run_dir,
           new_run_config,
           resumed_run_config,
           run_data,
)
from .state import TrainState
from .trainer import DEFAULT_TIME_BUDGET, DivergedError, Trainer

__all__ = ["Callback", "Checkpointer", "DEFAULT_TIME_BUDGET", "DistContext", "EarlyStop", "Evaluator", "LambdaCallback",
           "MetricsLog", "PeriodicSampler", "ProgressBar", "RunConfig", "Session", "TrainConfig", "TrainState",
           "DivergedError", "Trainer", "default_run_dir", "new_run_config", "resumed_run_config",
           "run_data"]
