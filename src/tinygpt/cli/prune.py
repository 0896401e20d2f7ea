"""``tinygpt prune``: remove a model's least important weights, heads or neurons, as a run of its own;
optionally fine-tuned afterwards to win back what they did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote

from ..compress import PruneOptions, prune_run
from ..config import add_command, section
from ..console import log
from ..device import RuntimeConfig
from ..errors import TinyGPTError
from ..finetune import FinetuneSession
from ..options import OutputOptions
from ..run import RunDir
from ..source import ModelSource
from ..train import TrainConfig, fit_and_report


@dataclass
class Recovery:
    """The settings of --recover-steps' fine-tune that may be given here (laid over finetune's)."""
    train: TrainConfig = section(TrainConfig, only=("lr", "batch_size", "progress", "max_new_tokens"),
                                 shown={"lr": "finetune --method full's", "batch_size": "finetune's"})
    runtime: RuntimeConfig = section(RuntimeConfig, only=("device", "dtype"))


@dataclass
class PruneCommand(Recovery):
    source: ModelSource = field(default_factory=ModelSource)
    prune: PruneOptions = field(default_factory=PruneOptions)
    output: OutputOptions = section(OutputOptions, only=("out", "force"), shown={"out": "MODEL-pruned beside it"})


def add_parser(sub) -> None:
    add_command(sub, "prune", PruneCommand, run, given=Recovery,
                help="remove the least important weights, heads or neurons",
                description="Write MODEL with --amount of each block linear layer's weights set to zero: the "
                            "smallest (--criterion magnitude) or those with the smallest |w| times input norm over "
                            "a calibration text (wanda; --data, the run's training text by default). The tensors "
                            "keep their shapes, unless --structured heads|neurons|both removes whole units, which "
                            "shrinks them. --recover-steps N then fine-tunes the pruned model (distilling from the "
                            "unpruned one with --distill-weight).")


def run(cmd: PruneCommand, given: dict) -> int:
    src, opts = cmd.source.model, cmd.prune
    name = Path(str(src).rstrip("/")).name
    out = Path(cmd.output.out) if cmd.output.out else Path(str(src).rstrip("/")).with_name(f"{name}-pruned")
    raw = out.with_name(out.name + "-unrecovered") if opts.recover_steps else out
    if opts.recover_steps:
        RunDir.check_new(out, force=cmd.output.force)   # before anything is written
    prune_run(src, raw, opts, checkpoint=cmd.source.checkpoint, force=cmd.output.force, log=log)
    what = f"{opts.amount:g} of {opts.structured or 'weights'}, {opts.criterion}"
    if not opts.recover_steps:
        log(f"{src} pruned ({what}) -> {out}; score it: tinygpt eval {quote(str(src))} {quote(str(out))}")
        return 0
    log(f"{src} pruned ({what}) -> {raw}; recovering for {opts.recover_steps} steps")
    session = recovery(src, raw, out, opts, cmd.source.checkpoint, cmd.output.force, given)
    code = fit_and_report(session, resumed=False, log=log)
    if code == 0:
        log(f"recovered -> {out}; score both: tinygpt eval {quote(str(src))} {quote(str(raw))} {quote(str(out))}")
    return code


def recovery(src: str, raw: Path, out: Path, opts: PruneOptions, checkpoint: str, force: bool,
             given: dict) -> FinetuneSession:
    """A full fine-tune of the pruned run ``raw`` into ``out``, on --data or the source run's
    own training text (its held-out part kept out), optionally distilling from ``src``."""
    if opts.data is not None:
        data = {"data": opts.data}
    elif RunDir.is_run(src):
        saved = RunDir.open(src).read_config().get("data", {})
        data = {k: saved[k] for k in ("data", "val_fraction", "encoding", "text_field", "sampling") if k in saved}
    else:
        raise TinyGPTError(f"{src} is not a tinygpt run, so it has no training text: give --data to recover on")
    finetune = {"method": "full", "distill_weight": opts.distill_weight}
    if opts.distill_weight:
        finetune["teacher"] = str(Path(src).resolve()) if Path(src).exists() else src
        if checkpoint != "best":
            raise TinyGPTError("distilling reads the teacher's best checkpoint; leave --checkpoint out")
    return FinetuneSession.start(str(raw), {"data": data, "finetune": finetune, "run": {"out": str(out)},
                                            "train": {"max_steps": opts.recover_steps}}, given, force=force, log=log)
