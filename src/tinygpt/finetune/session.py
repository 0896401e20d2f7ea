"""A fine-tune run: a base model opened, a method applied, the standard trainer and callbacks.

    from tinygpt.finetune import FinetuneSession
    session = FinetuneSession.start("runs/shakespeare", {"data": "qa.jsonl", "method": "lora"})
    session.fit()                                   # or FinetuneSession.resume("runs/qa-lora")

The run directory is a run like any other (config.json with the base's model section, the
base's tokenizer, metrics, trainer.pt for exact resume) plus the fine-tune's record of its
base: where it was and the hash of its weights. A full fine-tune writes whole weights; the
other methods write only their adapter (adapter.safetensors + adapter.json), and every
command loads it on the base (see tinygpt.source).
"""

from __future__ import annotations

import math
from pathlib import Path
from shlex import quote
from typing import Callable, Iterator

from .. import adapters, quant, versions
from ..config import flatten_values, layered, replace
from ..data import Batch
from ..data import instruct as ins
from ..device import seed_everything
from ..errors import TinyGPTError
from ..generation import GenerationConfig, TinyGPT
from ..model import GPT
from ..run import RunDir
from ..source import base_record, open_base, open_source
from ..train import (
    Session,
    SessionOptions,
    Trainer,
    resolve_run,
    resumed_run_config,
    run_dir,
)
from ..train.distributed import launched_by_torchrun
from ..train.resolve import draw_seed
from .config import DEFAULT_EPOCHS, METHOD_LR, FinetuneRun, FinetuneRunConfig
from .data import FinetuneData, prepare
from .distill import attach_teacher

# What cannot change when a fine-tune is resumed: what it is and what it learns from.
FIXED_ON_RESUME = ("data", "finetune")


def _given(layers: tuple[dict, ...], *path: str) -> bool:
    """Whether any settings layer sets the option at ``path``."""
    return any(tuple(path) in flatten_values(FinetuneRunConfig, layer) for layer in layers)


class FinetuneSession(Session):
    """A fine-tune's resolved settings, data, model and trainer, and the run directory they write to."""

    budget_flags = "--max-steps, --epochs or --max-time"
    cfg: FinetuneRun
    data: FinetuneData

    # ------------------------------------------------------------------ start and resume

    @classmethod
    def from_options(cls, options: SessionOptions, given: dict, *, base: str | None = None,
                     log: Callable[[str], None] = print) -> "FinetuneSession":
        """What ``tinygpt finetune`` opens: the fine-tune ``options.resume`` names, continued
        (it keeps its own base), or a new fine-tune of ``base``."""
        if options.nproc > 1 or launched_by_torchrun():
            raise TinyGPTError("fine-tuning runs on one process for now; start it without --nproc or torchrun")
        layers = options.layers(given)
        if options.resume:
            if base:
                raise TinyGPTError("--resume continues a fine-tune with its own base; leave MODEL out")
            if options.force:
                raise TinyGPTError("--force is for starting a new fine-tune in --out; --resume never replaces "
                                   "anything")
            return cls.resume(options.resume, *layers, log=log)
        if not base:
            raise TinyGPTError("give the model to fine-tune: tinygpt finetune MODEL --data FILE (MODEL: a run "
                               "directory, a Hugging Face model directory or a hub name such as gpt2)")
        return cls.start(base, *layers, force=options.force, log=log)

    @classmethod
    def start(cls, base: str, *layers: dict, force: bool = False,
              log: Callable[[str], None] = print) -> "FinetuneSession":
        """A new fine-tune of ``base`` (a run, an HF directory or a hub name) from settings layers."""
        given = layered(FinetuneRunConfig, *layers)
        method = given.finetune.method
        # The method's learning rate lies under the layers, as a preset's does; the seed is
        # drawn now, since the adapter's init and the order of the examples draw from it.
        cfg = layered(FinetuneRunConfig, {"train": {"lr": METHOD_LR[method]}}, *layers,
                      {"runtime": {"seed": draw_seed(given.runtime.seed)}})
        path = run_dir(cfg.run, f"{Path(str(base).rstrip('/')).name}-{method}")
        RunDir.check_new(path, force=force)
        opened = open_source(base, cfg.finetune.checkpoint)
        record = base_record(base, cfg.finetune.checkpoint, opened)
        base_shape = opened.model.config  # a soft prompt shortens the trained model's context; the base keeps its own
        model = cls._prepare_model(cfg, opened.model, opened.tokenizer)
        T = model.config.block_size
        data = prepare(cfg.data, cfg.finetune, opened.tokenizer, T, cfg.runtime.seed, log)
        cfg = replace(cfg, cls._budget(cfg, data, T, layers))
        resolved = resolve_run(cfg, path=path, model=base_shape, measure_on=lambda: model, kind=FinetuneRun,
                               base=record, log=log)
        session = cls._build(resolved, model, data, RunDir(path))  # checked before anything is written
        session.run = RunDir.create(path, force=force)
        session._write_config()
        session.run.save_tokenizer(opened.tokenizer)
        if (adapter := resolved.finetune.adapter()) is not None:
            session.run.write_adapter_config(adapter, record)
        return session

    @classmethod
    def resume(cls, path: str | Path, *layers: dict, log: Callable[[str], None] = print) -> "FinetuneSession":
        """Continue the fine-tune at ``path`` exactly where its last checkpoint left it."""
        run = RunDir.open(path)
        saved = run.read_config()
        if "finetune" not in saved or "base" not in saved:
            raise TinyGPTError(f"{run.path} is not a fine-tune; continue it with: tinygpt train --resume {quote(str(run.path))}")
        run.lock()
        cfg = resumed_run_config(saved, *layers, cls=FinetuneRunConfig, fixed_on_resume=FIXED_ON_RESUME)
        opened = open_base(saved["base"], f"the base of {run.path}")
        tokenizer = run.load_tokenizer()
        model = cls._prepare_model(cfg, opened.model, tokenizer)
        data = prepare(cfg.data, cfg.finetune, tokenizer, model.config.block_size, cfg.runtime.seed, log)
        if saved.get("data_key") != data.key:
            raise TinyGPTError(f"the data at --data {cfg.data.data!r} is not what {run.path} was fine-tuned on; give "
                               "the same file, or start a new fine-tune")
        resolved = resolve_run(cfg, path=run.path, model=run.model_config(), measure_on=lambda: model,
                               kind=FinetuneRun, base=saved["base"], log=log)
        session = cls._build(resolved, model, data, run)
        if run.has_checkpoint():
            session.trainer.load_state_dict(run.load_state(), source=str(run.state_path))
        else:
            log(f"notice: {run.path} stopped before its first checkpoint; starting it over from step 0")
        run.trim_metrics(session.trainer.state.step, notice=log)
        session._write_config()
        return session

    @staticmethod
    def _prepare_model(cfg: FinetuneRunConfig, model: GPT, tokenizer) -> GPT:
        """The base in fp32 with the method applied: blocks frozen (full) or an adapter attached."""
        ft = cfg.finetune
        if any(getattr(m, "quant", None) is not None for m in model.modules()):
            raise TinyGPTError("the base is quantized (int8 / int4 weights cannot learn); fine-tune its float run "
                               "(with --qat int8|int4 to end with a quantized run again)")
        model = model.float()
        seed_everything(cfg.runtime.seed)  # the adapter's init is the first draw, as a new model's is
        adapter = ft.adapter()
        if adapter is not None:
            ids = tokenizer.encode(ft.soft_prompt_init) if adapter.method == "prompt" and ft.soft_prompt_init else None
            return adapters.attach(model, adapter, ids)
        n = model.config.n_layer
        if ft.freeze_blocks > n:
            raise TinyGPTError(f"--freeze-blocks {ft.freeze_blocks} is more than the base's {n} blocks; "
                               f"use 0..{n}")
        model.requires_grad_(True)
        for block in model.transformer.h[:ft.freeze_blocks]:
            block.requires_grad_(False)
        if ft.freeze_embeddings:
            for name in ("wte", "wpe"):
                if name in model.transformer:
                    model.transformer[name].requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise TinyGPTError("everything is frozen: lower --freeze-blocks or drop --freeze-embeddings")
        quant.set_fake_quant(model, ft.qat_spec())
        return model

    @staticmethod
    def _budget(cfg: FinetuneRunConfig, data: FinetuneData, T: int, layers: tuple[dict, ...]) -> dict:
        """--epochs as steps (the default budget: a few epochs within the default time), a warmup
        that fits a short run, and evaluations no longer than the held-out data. Recorded, so a
        resume keeps them."""
        t, ft = cfg.train, cfg.finetune
        no_budget = t.max_steps is None and t.max_tokens is None and t.max_time is None and ft.epochs is None
        epochs = ft.epochs or (DEFAULT_EPOCHS if no_budget else None)
        changes: dict = {}
        if epochs:
            steps = max(1, math.ceil(epochs * data.epoch_tokens / t.step_tokens(T)))
            changes["max_steps"] = min(steps, t.max_steps or steps)
            if no_budget:
                changes["max_time"] = t.time_limit  # the default time budget
        steps = changes.get("max_steps", t.max_steps)
        if steps and not _given(layers, "train", "warmup_steps"):
            changes["warmup_steps"] = min(t.warmup_steps, steps // 10)
        if data.val_rows:  # instruction data: one pass over the held-out examples is the whole evaluation
            changes["eval_batches"] = min(t.eval_batches, math.ceil(data.val_rows / t.batch_size))
        return {"train": changes}

    @classmethod
    def _build(cls, cfg: FinetuneRun, model: GPT, data: FinetuneData, run: RunDir) -> "FinetuneSession":
        model = model.to(cfg.device)
        if cfg.finetune.teacher is not None:
            teacher = open_source(cfg.finetune.teacher)
            if teacher.tokenizer.to_dict() != data.tokenizer.to_dict():
                raise TinyGPTError(f"--teacher {cfg.finetune.teacher} has another tokenizer than the model; distil "
                                   "from a model that reads the same tokens")
            attach_teacher(model, teacher.model.float().to(cfg.device), cfg.finetune.distill_weight)
        batches = data.batches("train", cfg.train.batch_size, model.config.block_size, cfg.seed)
        return cls(cfg, run, data, Trainer(model, cfg.train, batches, device=cfg.device, dtype=cfg.dtype))

    def _write_config(self) -> None:
        self.run.write_config({
            **self.cfg.record(), "tokenizer": self.data.tokenizer.to_dict(), "data_key": self.data.key,
            "versions": versions("peft") if self.cfg.finetune.method == "lora" else versions(),
        })

    # ------------------------------------------------------------------ what Session asks of a run

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        return self.data.batches(split, self.cfg.train.batch_size, self.trainer.model.config.block_size, seed)

    def has_val(self) -> bool:
        return self.data.has_val

    def resume_command(self) -> str:
        return f"tinygpt finetune --resume {quote(str(self.run.path))}"

    def sample_command(self) -> str:
        return super().sample_command() + (" --instruct" if self.data.kind == "instructions" else "")

    def sample(self, max_new_tokens: int | None = None) -> str:
        """A sample of the current weights: for instruction data, the answer to the first
        held-out instruction (or a training one), rendered through the template."""
        if self.data.kind != "instructions":
            return super().sample(max_new_tokens)
        lm = TinyGPT(self.trainer.model, self.data.tokenizer, self.trainer.device, self.trainer.dtype, autocast=True)
        example = (self.data.val_examples or [None])[0]
        turn = example.turns[0] if example is not None else None
        prompt = ins.prompt_text(self.cfg.finetune.template, turn.user if turn else "Hello.",
                                 turn.input if turn else None, example.system if example else None)
        n = self.cfg.train.max_new_tokens if max_new_tokens is None else max_new_tokens
        config = GenerationConfig(max_new_tokens=n, stop=ins.stop_strings(self.cfg.finetune.template,
                                                                          self.data.tokenizer))
        return prompt + lm.generate(prompt, config=config, seed=self.cfg.runtime.seed)[0]

    def describe(self) -> list[str]:
        t, tr, ft = self.cfg.train, self.trainer, self.cfg.finetune
        trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
        method = ft.method + (f" (first {ft.freeze_blocks} blocks frozen)" if ft.freeze_blocks else "") + \
            (" (embeddings frozen)" if ft.freeze_embeddings else "")
        return [f"run: {self.run.path}", f"base: {self.cfg.base['source']} | method: {method}, {trainable:,} "
                f"trainable parameters ({trainable / max(1, self._base_params()):.2%} of the base's)", tr.describe(),
                f"budget: {t.describe_budget()}, lr {t.lr:g}; data: {self.data.description}"] + (
                    [f"distilling from {ft.teacher} (the KL term {ft.distill_weight:g} of the training loss)"]
                    if ft.teacher else [])

    def _base_params(self) -> int:
        model = self.trainer.model
        return sum(p.numel() for n, p in model.named_parameters() if n not in adapters.adapter_parameters(model))
