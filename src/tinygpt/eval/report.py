"""What every evaluation records: which model was scored, and the run's eval.json that keeps
the rows (one list, appended per evaluation, with its time and library versions)."""

from __future__ import annotations

from pathlib import Path

from ..generation import TinyGPT


def given_or_loaded(source: str | Path, lm: TinyGPT | None = None, *, checkpoint: str = "best",
                    device: str = "auto", dtype: str = "fp32") -> TinyGPT:
    """``lm`` when the caller loaded it already, else the model at ``source`` (in fp32 unless
    asked otherwise: scores compare exactly)."""
    from ..generation import load

    return lm if lm is not None else load(source, checkpoint=checkpoint, device=device, dtype=dtype)


def model_row(source: str | Path, lm: TinyGPT) -> dict:
    return {"model": str(source), "tokenizer": lm.tokenizer.kind, "checkpoint": str(lm.checkpoint), "step": lm.step}


def keep(source: str | Path, kind: str, row: dict, libraries: tuple[str, ...] = ()) -> None:
    """Append ``row`` to the run's eval.json (nothing when ``source`` is not a tinygpt run), with
    the time and the versions of tinygpt, torch, Python and the named ``libraries``."""
    import time

    from .. import versions
    from ..run import RunDir

    if RunDir.is_run(source):
        RunDir(source).append_result("eval", {**row, "kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "versions": versions(*libraries)})
