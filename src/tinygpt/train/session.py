"""A training run from settings to a run directory: what ``tinygpt train`` does, as a library.

    from tinygpt.train import Session
    session = Session.start({"data": "my_book.txt", "max_time": "15m"})   # or Session.resume("runs/x")
    summary = session.fit()
    print(session.sample())

Settings are resolved once (tinygpt.train.resolve: defaults < preset < each given layer,
flat or nested dicts, the machine, the tokenizer's vocabulary), and everything is built
and checked before anything is written to disk.
"""

from __future__ import annotations

import dataclasses
import glob
import time
from pathlib import Path
from shlex import quote
from typing import Callable, Iterator

import torch

from .. import versions
from ..checkpoint import DiskFullError
from ..config import from_dict
from ..data import Batch, Batches, DataConfig, TokenData, absolute_spec, prepare_data
from ..device import seed_everything
from ..errors import TinyGPTError
from ..generation import GenerationConfig, TinyGPT
from ..model import GPT
from ..run import RunDir
from .callbacks import (
    Callback,
    Checkpointer,
    EarlyStop,
    Evaluator,
    MetricsLog,
    PeriodicSampler,
    ProgressBar,
)
from .config import SessionOptions
from .distributed import DistContext, join, launched_by_torchrun
from .health import HealthProbe
from .parallel import parse_layout, prepare_mesh
from .pipeline import bubble, stage_blocks
from .resolve import (
    ResolvedRun,
    given_settings,
    named_run_dir,
    resolve_new_run,
    resolve_run,
    resumed_run_config,
)
from .trainer import DivergedError, Trainer


def prepare_layout(dist: DistContext, parallel: str) -> None:
    """What every rank must set up together, before rank 0 builds the run alone (see
    train/parallel.py's prepare_mesh)."""
    if dist.world_size > 1:
        import torch.distributed

        prepare_mesh(parallel, dist.world_size, "cuda" if torch.distributed.get_backend() == "nccl" else "cpu")


def shared_step(cfg: ResolvedRun, processes: int) -> ResolvedRun:
    """``cfg`` with its tokens per step made explicit when torchrun started this process and
    none was given: a micro-batch on each of the ``processes``' data-parallel ranks (a new
    run; tensor-parallel ranks share one), or one (a resumed run's steps had it). Recorded in
    config.json, so the run keeps its steps when it resumes on another number of processes."""
    t = cfg.train
    if t.tokens_per_step is not None or not launched_by_torchrun():
        return cfg
    layout = parse_layout(t.parallel)
    # A pipeline of one micro-batch is all bubble: two per stage keep it to a third or less.
    micro_batches = max(1, processes // (layout["tp"] * layout["pp"])) * (2 * layout["pp"] if layout["pp"] > 1 else 1)
    tokens = micro_batches * t.batch_size * cfg.model.block_size
    return dataclasses.replace(cfg, train=dataclasses.replace(t, tokens_per_step=tokens))


def run_data(path: str | Path, log: Callable[[str], None] = print) -> TokenData:
    """The tokenized corpus the run at ``path`` trained on, as its config.json records it
    (from the cache when it is there): its held-out split to evaluate on, its training
    split to probe with."""
    run = RunDir.open(path)
    config = run.read_config()
    data = from_dict(DataConfig, config.get("data", {}))
    if "finetune" not in config:
        return prepare_data(data, log=log)
    if data.data.endswith(".jsonl"):  # see tinygpt.data.instruct
        raise TinyGPTError(f"{run.path} was fine-tuned on instruction data ({data.data}), not a text with a held-out "
                           "tail; give --data with a text to use")
    return prepare_data(data, tokenizer=run.load_tokenizer(), log=log)  # a fine-tune reads with its base's


def _prepared_layer(given: DataConfig, data: TokenData) -> dict:
    """A prepared corpus fixes its tokenizer: the settings layer that records it, after checking
    that no other one was asked for (the default kind counts as not asked)."""
    if "prepared" not in data.meta:
        return {}
    tok = data.tokenizer
    if given.tokenizer not in (tok.kind, DataConfig.tokenizer):
        raise TinyGPTError(f"{given.data} was prepared with the {tok.kind} tokenizer, not {given.tokenizer}; drop "
                           f"--tokenizer, or prepare the text again with --tokenizer {given.tokenizer}")
    return {"data": {"tokenizer": tok.kind, **({"bpe_vocab_size": tok.vocab_size} if tok.kind == "bpe" else {})}}


class Session:
    """A run's resolved settings, data, model and trainer, and the run directory they write to."""

    budget_flags = "--max-steps, --max-tokens or --max-time"  # what raises the budget of a finished run

    def __init__(self, cfg: ResolvedRun, run: RunDir, data: TokenData, trainer: Trainer):
        self.cfg, self.run, self.data, self.trainer = cfg, run, data, trainer

    @property
    def dist(self) -> DistContext:
        return self.trainer.dist

    @classmethod
    def from_options(cls, options: SessionOptions, given: dict, *,
                     log: Callable[[str], None] = print) -> "Session":
        """What ``tinygpt train`` opens: the run ``options.resume`` names, continued, or a new
        run; either way with the --config file's settings, then the ``given`` flags, on top."""
        layers = options.layers(given)
        if options.resume:
            if options.force:
                raise TinyGPTError("--force is for starting a new run in --out; --resume never replaces anything")
            return cls.resume(options.resume, *layers, log=log)
        return cls.start(*layers, force=options.force, log=log)

    @classmethod
    def start(cls, *layers: dict, force: bool = False, log: Callable[[str], None] = print) -> "Session":
        """A new run from settings layers (e.g. a config file's, then command-line flags).

        The run directory must be new or empty unless ``force`` (then a run's files there
        are replaced). It is locked for the life of the process.

        Under torchrun, rank 0 does all of that (and alone measures what is measured); the
        other ranks then build the same run from the config.json it wrote."""
        given = given_settings(*layers)
        dist = join(given.runtime.device)
        prepare_layout(dist, given.train.parallel)
        if not dist.is_main:
            return cls._follow(dist)
        return cls._lead(dist, lambda: cls._start(given, layers, force, dist, log))

    @classmethod
    def _start(cls, given, layers: tuple[dict, ...], force: bool, dist: DistContext,
               log: Callable[[str], None]) -> "Session":
        named = named_run_dir(given.run)
        if named is not None:  # checked before the data is prepared, which can take a while
            RunDir.check_new(named, force=force)
        data = prepare_data(given.data, log=log)
        layers = (*layers, _prepared_layer(given.data, data))
        cfg = shared_step(resolve_new_run(*layers, vocab_size=data.tokenizer.vocab_size, log=log), dist.world_size)
        session = cls._build(cfg, data, RunDir(cfg.path), dist)  # checks everything before anything is written
        session.run = RunDir.create(cfg.path, force=force)
        # config.json first: from then on the directory is a run, and one killed before its
        # first checkpoint resumes from step 0 (see resume).
        session._write_config()
        session.run.save_tokenizer(data.tokenizer)
        return session

    @classmethod
    def resume(cls, path: str | Path, *layers: dict, log: Callable[[str], None] = print) -> "Session":
        """Continue the run at ``path`` exactly where its last checkpoint left it (a run
        stopped before its first checkpoint starts over, with its recorded settings)."""
        saved = RunDir.open(path).read_config()
        dist = join(saved.get("runtime", {}).get("device", "auto"))
        given = [layer.get("parallel", layer.get("train", {}).get("parallel")) for layer in layers]
        prepare_layout(dist, next((g for g in reversed(given) if g is not None),
                                  saved.get("train", {}).get("parallel", "")))
        if not dist.is_main:
            return cls._follow(dist)
        return cls._lead(dist, lambda: cls._resume(path, layers, dist, log))

    @classmethod
    def _resume(cls, path: str | Path, layers: tuple[dict, ...], dist: DistContext,
                log: Callable[[str], None]) -> "Session":
        run = RunDir.open(path)
        saved = run.read_config()
        if "finetune" in saved:
            raise TinyGPTError(f"{run.path} is a fine-tune; continue it with: tinygpt finetune --resume {quote(str(run.path))}")
        run.lock()
        try:
            resumed_run_config(saved)  # the recorded settings alone: a failure here is damage, not a bad flag
        except TinyGPTError as e:
            raise TinyGPTError(f"{run.path / 'config.json'}: {e}; the run directory is damaged") from None
        settings = resumed_run_config(saved, *layers)
        recorded = saved.get("data", {}).get("data", settings.data.data)
        if settings.data.data == recorded and absolute_spec(recorded) != recorded and not glob.has_magic(recorded) \
                and not Path(recorded).expanduser().exists():  # tinygpt 0.1 recorded the path as typed
            raise TinyGPTError(f"the run's data {recorded!r} is not found from here (the run recorded it "
                               f"relative to where it started); pass --data with its path")
        data = prepare_data(settings.data, log=log)
        if saved.get("data_key") != data.meta["key"]:
            raise TinyGPTError(f"the text at --data {settings.data.data!r} is not the text {run.path} was trained "
                               f"on (recorded at {recorded!r}); give the same files (names and contents), or start "
                               "a new run")
        if settings.model.vocab_size != data.tokenizer.vocab_size:
            raise TinyGPTError(f"{run.path} has a {settings.model.vocab_size}-token model but the data's tokenizer "
                               f"has {data.tokenizer.vocab_size}; the run directory is inconsistent")
        session = cls._build(shared_step(resolve_run(settings, path=run.path, log=log), 1), data, run, dist)
        if run.has_checkpoint():
            session.trainer.load_state_dict(run.load_state(), source=str(run.state_path))
        else:
            log(f"notice: {run.path} stopped before its first checkpoint; starting it over from step 0 "
                "with its recorded settings")
        run.trim_metrics(session.trainer.state.step, notice=log)
        session._write_config()
        if not run.has_tokenizer():  # a start killed between config.json and the tokenizer
            run.save_tokenizer(data.tokenizer)
        return session

    @classmethod
    def _lead(cls, dist: DistContext, make: Callable[[], "Session"]) -> "Session":
        """Rank 0's side: ``make()`` the session, then tell the other ranks where the run is,
        or that it failed (they would otherwise wait for it until the timeout)."""
        try:
            session = make()
        except BaseException as e:
            dist.broadcast({"error": str(e) or type(e).__name__})
            raise
        dist.broadcast({"path": str(session.run.path)})
        return session

    @classmethod
    def _follow(cls, dist: DistContext) -> "Session":
        """Another rank's side: the run rank 0 started or resumed, built from its config.json
        (every measured choice already made), its data from the cache rank 0 filled, and its
        last checkpoint. It never locks or writes the directory."""
        word = dist.broadcast(None)
        if "error" in word:
            raise SystemExit(1)  # rank 0 says what went wrong, once
        run = RunDir.open(word["path"])
        settings = resumed_run_config(run.read_config())
        quiet = lambda _: None  # noqa: E731 -- rank 0 tells the user
        data = prepare_data(settings.data, log=quiet)
        session = cls._build(resolve_run(settings, path=run.path, log=quiet), data, run, dist)
        if run.has_checkpoint():
            session.trainer.load_state_dict(run.load_state(), source=str(run.state_path))
        return session

    @classmethod
    def _build(cls, cfg: ResolvedRun, data: TokenData, run: RunDir, dist: DistContext | None = None) -> "Session":
        T = cfg.model.block_size
        layout = parse_layout(cfg.train.parallel)
        splits = cfg.train.zero_stage >= 2 or layout["tp"] > 1 or layout["pp"] > 1
        if splits and (dist or DistContext()).world_size > 1 and (cfg.train.diagnostics or cfg.train.sample_interval):
            # Both run the model on rank 0 alone, which a split model cannot: its forward needs every rank.
            raise TinyGPTError("--zero 2/3 and --parallel tp/pp do not go with --diagnostics or --sample-interval yet; "
                               "turn them off (the sample at the end is drawn from the saved weights)")
        # Batch windows first: a corpus too short for one block fails here, before any work.
        batches = data.batches("train", cfg.train.batch_size, T, mode=cfg.data.sampling, seed=cfg.seed)
        if len(data.val):
            Batches(data.val, 1, T, split="val")
        seed_everything(cfg.seed)  # the model's init is the first draw from the seeded generators
        model = GPT(cfg.model).to(cfg.device)
        return cls(cfg, run, data, Trainer(model, cfg.train, batches, device=cfg.device, dtype=cfg.dtype, dist=dist))

    def _write_config(self) -> None:
        self.run.write_config({
            **self.cfg.record(), "tokenizer": self.data.tokenizer.to_dict(), "data_key": self.data.meta["key"],
            "versions": versions(),
        })

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        """A fresh stream of ``split``'s batches (for evaluation and probes) drawn with ``seed``."""
        return self.data.batches(split, self.cfg.train.batch_size, self.cfg.model.block_size, seed=seed)

    def has_val(self) -> bool:
        return len(self.data.val) > 0

    def callbacks(self) -> list[Callback]:
        """The standard ones, in order: evaluate, metrics file, progress, health probe, samples,
        early stop, and the checkpoint last (after every line describing the step is written)."""
        t, seed = self.cfg.train, self.cfg.runtime.seed
        has_val = self.has_val()
        splits = {"train": lambda: self.batches("train", seed + 1)}
        if has_val:
            splits["val"] = lambda: self.batches("val", seed + 2)
        out: list[Callback] = [Evaluator(splits, t.eval_interval, t.eval_batches),
                               MetricsLog(self.run.metrics_path, sync_every=t.eval_interval)]
        write = print
        if t.progress:
            bar = ProgressBar()
            out.append(bar)
            write = bar.write
        if t.diagnostics:
            probe_batch = next(self.batches("train", seed + 3))
            out.append(HealthProbe(self.run.diagnostics_path, t.diagnostics, probe_batch))
        if t.sample_interval and t.max_new_tokens:
            out.append(PeriodicSampler(t.sample_interval, self.sample, write))
        if t.early_stop and has_val:
            out.append(EarlyStop(t.early_stop))
        every_rank = bool(self.trainer.zero or self.trainer.gathers)  # saving is a collective there
        return out + [Checkpointer(self.run, t.eval_interval, has_val, every_rank=every_rank)]

    def fit(self, *extra: Callback) -> dict:
        """Train to the budget (or a stop request); the standard callbacks, then ``extra``.

        Divergence and a full disk end the run with an error that says how to continue
        from the checkpoint on disk (which they never touch)."""
        self.trainer.callbacks = self.callbacks() + list(extra)
        try:
            return self.trainer.fit()
        except DivergedError as e:
            raise TinyGPTError(f"training diverged: {self._after_divergence(e)}") from None
        except DiskFullError as e:
            raise TinyGPTError(f"{e.problem}. Free some space, then continue with: {self.resume_command()}") from None

    def resume_command(self) -> str:
        """The command line that continues this run."""
        return f"tinygpt train --resume {quote(str(self.run.path))}"

    def sample_command(self) -> str:
        """The command line that samples this run's weights (a prompt to add)."""
        return f"tinygpt sample {quote(str(self.run.path))}"

    def _after_divergence(self, e: DivergedError) -> str:
        """What went wrong and the way on that can work from what is on disk."""
        what = e.what  # e.g. "the loss became nan at step 6 (lr 0.003)"
        command = f"{self.resume_command()} {e.flags()}"
        if not self.run.has_checkpoint():
            return f"{what}, before the first checkpoint; start the run over with {e.flags()}: {command}"
        last = self.run.checkpoint_info("last").step or 0
        if last < e.weights_step:
            return (f"{what}; the last checkpoint (step {last}) is intact, continue from it with {e.flags()}: "
                    f"{command}")
        best = self.run.checkpoint_info("best")
        kept = f"step {best.step}" + (f", val loss {best.val_loss:.4f}" if best.val_loss is not None else "")
        return (f"{what}; the last checkpoint (step {last}) holds the weights that diverged, so resuming would "
                f"repeat it: start a new run with {e.flags()} (the best weights so far, {kept}, stay in "
                f"{self.run.weights_path('best')})")

    def sample(self, max_new_tokens: int | None = None) -> str:
        """A sample of the current weights from a document start, drawn exactly as
        ``tinygpt.load(run).generate("", max_new_tokens, seed=<the run's seed>)`` draws it."""
        # A sharded model samples from its whole weights as last saved (every run saves at its end).
        model, device = self.trainer.model, self.trainer.device
        if self.trainer.gathers:
            model, device = self.trainer.whole, torch.device("cpu")
        lm = TinyGPT(model, self.data.tokenizer, device, self.trainer.dtype, autocast=True)
        n = self.cfg.train.max_new_tokens if max_new_tokens is None else max_new_tokens
        return lm.generate("", config=GenerationConfig(max_new_tokens=n), seed=self.cfg.runtime.seed)[0]

    def describe(self) -> list[str]:
        """What the run is, in a few lines for the log."""
        tok = self.data.tokenizer
        train = (f"streamed from {self.cfg.data.data}" if self.data.stream is not None
                 else f"{len(self.data.train):,} train")
        return [f"run: {self.run.path}", self.trainer.describe(),
                f"budget: {self.cfg.train.describe_budget()}; data: {train} / "
                f"{len(self.data.val):,} val tokens ({tok.kind} tokenizer, {tok.vocab_size} tokens)"]


def fit_and_report(session: Session, *, resumed: bool, log: Callable[[str], None] = print) -> int:
    """Describe the run, train it to its budget, say how it went and print a sample: what
    ``tinygpt train`` and ``tinygpt finetune`` do with a session. Returns the exit status:
    128 + the signal after Ctrl+C / SIGTERM (the shell's convention: 130, 143)."""
    run_dir, trainer = session.run.path, session.trainer
    if not session.dist.is_main:  # rank 0 tells the user; the others train and end with it
        if trainer.done():
            return 0
        summary = session.fit()
        return 128 + summary["signal"] if summary["signal"] else 0
    if resumed:
        s = trainer.state
        log(f"resuming {run_dir} at step {s.step} ({s.tokens:,} tokens, {s.elapsed:.0f}s trained)")
    for line in session.describe():
        log(line)
    layout = parse_layout(trainer.cfg.parallel)
    wanted = layout["dp"] * layout["tp"] * layout["pp"]
    if session.dist.world_size == 1 and wanted > 1:
        log(f"notice: --parallel {trainer.cfg.parallel} shares the work among {wanted} processes, and this is one: "
            f"it trains the whole model (start it with --nproc {wanted}, or under torchrun)")
    if trainer.pipeline is not None:
        p = trainer.pipeline
        sizes = "+".join(str(len(r)) for r in stage_blocks(p.stage.config.n_layer, p.pp))
        log(f"pipeline parallel: {p.pp} stages ({sizes} blocks), "
            f"{p.micro_batches} micro-batches per step, {p.kind}: each stage idles {bubble(p.pp, p.micro_batches):.0%} "
            "of a step (the bubble; more micro-batches shrink it)")
    elif trainer.tp > 1:
        replicas = trainer.dist.data_ranks
        log(f"tensor parallel: {trainer.tp} processes share every block (heads and MLP neurons split)"
            + (f"; {replicas} such replicas, data parallel" if replicas > 1 else "")
            + f"; {trainer.grad_accum} micro-batch(es) per {'replica and ' if replicas > 1 else ''}step")
    elif session.dist.world_size > 1:
        log(f"data parallel: {session.dist.world_size} processes, {trainer.grad_accum} micro-batch(es) each per step")
    if trainer.done():
        log(f"{run_dir} already used its budget at step {trainer.state.step}; raise {session.budget_flags} to "
            "train further")
        return 0

    t0, tokens0 = time.time(), trainer.state.tokens
    summary = session.fit()
    val, seconds = summary["val_loss"], time.time() - t0
    log(f"{'stopped' if summary['interrupted'] else 'done'}: step {summary['step']}, "
        f"{summary['tokens']:,} tokens, {seconds:.0f}s this session "
        f"({(summary['tokens'] - tokens0) / max(seconds, 1e-9):,.0f} tokens/s with evaluations)"
        + (f", val loss {val:.4f} (best {summary['best_val']:.4f})" if val is not None else ""))
    if summary["signal"]:
        log(f"checkpoint saved; continue with: {session.resume_command()}")
        return 128 + summary["signal"]
    if summary["interrupted"]:
        log(summary["interrupted"])  # a stop that is not a signal: --early-stop
    if trainer.in_warmup():
        log(f"notice: the run ended at step {summary['step']}, still warming up ({trainer.cfg.warmup_steps} steps): "
            "the learning rate never reached its peak, so the model has barely learned; give it a larger budget "
            f"(raise {session.budget_flags}) or fewer --warmup-steps")
    if session.cfg.train.max_new_tokens and not (trainer.gathers and trainer.whole is None):
        print("--- sample ---")
        print(session.sample(), flush=True)
        print("--------------")
    log(f"weights: {session.run.weights_path('best')}; sample with: {session.sample_command()} --prompt \"...\"")
    return 0
