"""Everything that happens during training besides the step itself, as callbacks.

The trainer calls each callback, in list order: ``on_train_start`` once;
``on_step_end(trainer, record)`` after every optimizer step, where a callback may add
to the step's record and later callbacks see the addition (the evaluator adds
``val_loss``, the checkpointer reads it, the metrics log writes it); ``on_nonfinite``
instead when the loss is not finite; ``on_train_end`` when the loop ends by budget or
stop request; and ``close`` always, even after an error.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TextIO

from ..data import Batch
from ..run import CheckpointInfo, RunDir

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    main_process_only = True  # in a distributed run only rank 0 runs it (see distributed.py)

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, record: dict) -> None: ...

    def on_nonfinite(self, trainer: Trainer, record: dict) -> None: ...

    def on_train_end(self, trainer: Trainer, summary: dict) -> None: ...

    def close(self) -> None: ...


class LambdaCallback(Callback):
    """``on_step_end`` from a function, for quick hooks: ``LambdaCallback(lambda t, r: ...)``."""

    def __init__(self, on_step_end: Callable[[Trainer, dict], None]):
        self._fn = on_step_end

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        self._fn(trainer, record)


class Evaluator(Callback):
    """Every ``every`` steps and at the end: the mean loss of each split over ``n_batches``,
    and whether the validation loss is a new best (``record["best"]``, kept in the state).

    ``splits`` maps a name to a function giving a fresh batch iterator, so every
    evaluation sees the same windows and successive values are comparable."""

    main_process_only = False  # every rank takes part

    def __init__(self, splits: dict[str, Callable[[], Iterator[Batch]]], every: int, n_batches: int):
        self.splits, self.every, self.n_batches = splits, every, n_batches

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.at_interval(self.every):
            for name, batches in self.splits.items():
                record[f"{name}_loss"] = trainer.evaluate(batches(), self.n_batches)
                if not math.isfinite(record[f"{name}_loss"]):  # stops the run before anything is written
                    raise trainer.diverged(f"the {name} loss became {record[f'{name}_loss']}", trainer.state.step,
                                           trainer.state.step)
            state, val = trainer.state, record.get("val_loss")
            state.last_val = val
            record["best"] = val is not None and val < state.best_val
            if val is not None:
                state.evals_since_best = 0 if record["best"] else state.evals_since_best + 1
            if record["best"]:
                state.best_val = val


class Checkpointer(Callback):
    """At every evaluation: the latest weights, the best-by-validation weights when they
    improved, and the trainer state. On a stop request: the latest weights and state.

    It comes last among the callbacks that write: a step's metrics and diagnostics lines are
    on disk before the checkpoint that covers that step, so a kill between the two resumes
    from the checkpoint before (and writes the lines again, once: resume trims what follows
    its checkpoint), never past lines that were lost.

    Nothing non-finite is ever saved: a non-finite weight (or evaluated loss, which the
    evaluator finds) stops the run (:class:`DivergedError`) with the previous checkpoint, the
    last good one, on disk."""

    def __init__(self, run: RunDir, every: int, has_val: bool, every_rank: bool = False):
        self.run, self.every, self.has_val = run, every, has_val
        self.saved_step = 0  # the step of the last checkpoint written (or resumed from)
        # A sharded model's whole weights (ZeRO-1: optimizer state) are gathered from every rank;
        # rank 0 alone writes them.
        self.main_process_only = not every_rank

    def on_train_start(self, trainer: Trainer) -> None:
        self.saved_step = trainer.state.step

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.at_interval(self.every):
            self.save(trainer, trainer.state.last_val if self.has_val else None, improved=record.get("best", False))

    def on_train_end(self, trainer: Trainer, summary: dict) -> None:
        # A stop request, or a time budget whose last step's callbacks took it past the end
        # after that step was judged not the last: the steps since the last save are saved.
        if trainer.state.step > self.saved_step:
            self.save(trainer, None)

    def save(self, trainer: Trainer, val_loss: float | None, *, improved: bool = False) -> None:
        """Write the checkpoint: the best weights too where ``improved`` (the evaluator's verdict)."""
        self.saved_step = trainer.state.step
        model, whole_state = trainer.model, None
        if trainer.gathers:  # every rank gathers; rank 0 writes
            model, whole_state = trainer.gather_whole(), trainer.state_dict()
            if model is None:
                return
        elif trainer.zero:  # ZeRO-1: every rank sends rank 0 its share of the optimizer state
            whole_state = trainer.state_dict()
            if not trainer.dist.is_main:
                return
        if not trainer.weights_finite(model):
            raise trainer.diverged("a weight became non-finite", trainer.state.step, trainer.state.step)
        state = trainer.state
        info = CheckpointInfo(step=state.step, tokens=state.tokens, val_loss=val_loss)
        if improved or (not self.has_val and val_loss is None):  # no validation split: best = latest
            self.run.save_weights(model, "best", info)
        self.run.save_weights(model, "last", info)
        self.run.save_state(whole_state or trainer.state_dict())


class MetricsLog(Callback):
    """Appends each step's record to a JSONL file, flushed line by line, and synced to the disk
    every ``sync_every`` steps (before the checkpoint of that step is written: see
    :class:`Checkpointer`) and at the end. (A resumed run's file is first cut back to its
    checkpoint: :meth:`RunDir.trim_metrics`.)"""

    def __init__(self, path: Path, sync_every: int = 0):
        self.path, self.file, self.sync_every = Path(path), None, sync_every

    def on_train_start(self, trainer: Trainer) -> None:
        self.file = open(self.path, "a", encoding="utf-8")

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.sync_every and trainer.at_interval(self.sync_every):
            os.fsync(self.file.fileno())

    on_nonfinite = on_step_end  # the record that went wrong is the most useful one

    def on_train_end(self, trainer: Trainer, summary: dict) -> None:
        if self.file is not None:
            os.fsync(self.file.fileno())  # before a stop's checkpoint

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ProgressBar(Callback):
    """Step, smoothed loss, val loss, learning rate, tokens/s and ETA over the budget.

    On a terminal, a tqdm bar redrawn in place. Otherwise (``nohup ... > train.log``) a
    plain line every ``interval`` seconds and one at the end, each on its own line."""

    RESOLUTION = 1000
    FORMAT = "{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"

    def __init__(self, stream: TextIO | None = None, interval: float | None = None):
        from tqdm.auto import tqdm

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = (0.5 if self.tty else 10.0) if interval is None else interval
        self.ema: float | None = None
        self.bar = None
        self._started = self._last_line = time.perf_counter()
        self._line: str | None = None
        if self.tty:
            self.bar = tqdm(total=self.RESOLUTION, dynamic_ncols=True, mininterval=self.interval, file=self.stream,
                            bar_format=self.FORMAT)

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        loss = record["loss"]
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        val = trainer.state.last_val
        desc = (f"step {trainer.state.step} | loss {self.ema:.4f}" + (f" | val {val:.4f}" if val is not None else "")
                + f" | lr {record['lr']:.2e} | {record['tok_per_s']:,.0f} tok/s |")
        n = int(trainer.progress() * self.RESOLUTION)
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=False)
            self.bar.update(n - self.bar.n)
            return
        from tqdm import tqdm

        self._line = tqdm.format_meter(n, self.RESOLUTION, time.perf_counter() - self._started, prefix=desc,
                                       bar_format="{desc} {percentage:3.0f}% [{elapsed}<{remaining}]")
        if time.perf_counter() - self._last_line >= self.interval:
            self._emit()

    def _emit(self) -> None:
        if self._line is not None:
            self.stream.write(self._line + "\n")
            self.stream.flush()
            self._line, self._last_line = None, time.perf_counter()

    def write(self, text: str) -> None:
        """Print ``text`` to stdout without breaking the bar."""
        if self.bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._emit()  # the final state, if it was not the last line printed


class PeriodicSampler(Callback):
    """Every ``every`` steps (not at the very end), write a sample of the current model."""

    def __init__(self, every: int, sample: Callable[[], str], write: Callable[[str], None]):
        self.every, self.sample, self.write = every, sample, write

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        if self.every and trainer.state.step % self.every == 0 and not trainer.done():
            self.write(f"--- sample at step {trainer.state.step} ---\n{self.sample()}")


class EarlyStop(Callback):
    """End the run (as a stop request: the checkpointer saves) once the validation loss has
    not improved for ``patience`` evaluations in a row; the best weights are kept."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        if "val_loss" in record and trainer.state.evals_since_best >= self.patience:
            trainer.request_stop(f"early stop: the validation loss has not improved for {self.patience} "
                                 f"evaluations (best {trainer.state.best_val:.4f})")
