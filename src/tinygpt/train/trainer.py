"""The training loop: optimizer steps over an iterator of batches, with a budget and a schedule.

The trainer owns the optimizer, the learning-rate schedule, mixed precision, gradient
accumulation and the :class:`TrainState`; its whole state round-trips through
``state_dict()``. It knows nothing of attention, files or terminals: evaluation,
checkpoints, the metrics file, the progress bar and samples are callbacks.

A run stops at whichever budget comes first (steps, tokens, wall-clock time) and the
learning-rate schedule is laid over that same budget, so a ``--max-time 6h`` run decays
properly by morning.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch

from ..adapters import load_state_tensors, state_tensors
from ..data import Batch
from ..device import autocast, configure_backends, dtype_name
from ..errors import TinyGPTError
from ..model import GPT, IGNORE_INDEX
from .callbacks import Callback
from .config import TrainConfig
from .curriculum import shape_batch, stage_divisor
from .distributed import DistContext, ModelParallelGroup, RankShare
from .experts import ExpertLoad
from .memory import SavedActivations, rank_memory, saved_activations
from .optim import lr_at, make_optimizer, onecycle_momentum, onecycle_phase
from .parallel import clip_grad_norm, mesh_2d, parse_layout, tensor_parallel, whole_rows
from .pipeline import Pipeline
from .recompute import recompute_blocks
from .sharding import full_optimizer_state, full_weights, load_full_state, shard_model, zero_redundancy
from .state import TrainState, capture_rng, restore_rng

WARMUP_SHARE = 0.1  # of a time or token budget: warmup ends there at the latest


class DivergedError(TinyGPTError):
    """Training produced a non-finite loss, gradient or weight. Nothing from then on was
    stepped or saved. ``weights_step`` is the step whose weights produced the bad value:
    resuming from an earlier checkpoint with ``fixes`` (flag -> suggested value) may get
    past it; resuming from that very step repeats it."""

    def __init__(self, what: str, step: int, weights_step: int, fixes: dict[str, str],
                 record: dict | None = None):
        self.what, self.step, self.weights_step, self.fixes, self.record = what, step, weights_step, fixes, record or {}
        super().__init__(f"training diverged: {what}; nothing from that step was saved; retry with {self.flags()}")

    def flags(self) -> str:
        return " ".join(f"--{k} {v}" for k, v in self.fixes.items())


class Trainer:
    def __init__(self, model: GPT, cfg: TrainConfig, batches: Iterator[Batch], *, device: torch.device,
                 dtype: torch.dtype, callbacks: Sequence[Callback] = (), dist: DistContext | None = None):
        self.model, self.cfg = model, cfg
        self.device, self.dtype = device, dtype
        self.callbacks = list(callbacks)
        dist = dist or DistContext()
        layout = parse_layout(cfg.parallel) if dist.world_size > 1 else {"dp": 1, "tp": 1, "pp": 1}
        self.tp, pp = layout["tp"], layout["pp"]
        self._tp_mesh = None
        if self.tp > 1 or pp > 1:  # the ranks share one model's blocks instead of the micro-batches
            kind = "tensor" if self.tp > 1 else "pipeline"
            dp = layout["dp"]
            if dp * self.tp * pp != dist.world_size:
                raise TinyGPTError(f"--parallel {cfg.parallel} needs {dp * self.tp * pp} processes, not "
                                   f"{dist.world_size}: the sizes multiply to the number torchrun starts")
            if pp > 1 and (self.tp > 1 or dp > 1):
                raise TinyGPTError(f"--parallel {cfg.parallel}: pipeline parallel takes every process for now "
                                   f"(pp={dist.world_size}); dp x tp is built, pp with dp or tp is not yet")
            if model.config.moe_experts:
                raise TinyGPTError(f"--parallel {cfg.parallel}: mixture-of-experts models train on one process or "
                                   "data parallel (--parallel dp=N or --zero); tensor/pipeline splits are dense-only")
            if cfg.zero_stage or cfg.optimizer != "adamw" or cfg.compile or dtype == torch.float16:
                raise TinyGPTError(f"--parallel {kind[0]}p=N trains with AdamW in fp32 or bf16, without --zero / "
                                   "--shard and --compile")
            mesh = mesh_2d(dp, self.tp) if dp > 1 else None  # rank = replica * tp + slice
            dist = ModelParallelGroup(dist.rank, dist.world_size, dist.local_rank, replicas=dp,
                                      replica=dist.rank // (self.tp * pp),
                                      replica_group=mesh["dp"].get_group() if mesh is not None else None)
            self._tp_mesh = mesh["tp"] if mesh is not None else None
        elif layout["dp"] not in (1, dist.world_size):  # plain data parallel
            raise TinyGPTError(f"--parallel {cfg.parallel} asks for {layout['dp']} data-parallel ranks on "
                               f"{dist.world_size} processes")
        self.dist = dist
        # ``batches`` is the global stream; a rank trains on its share of each step's micro-batches.
        self.batches = RankShare(batches, dist.data_rank, dist.data_ranks) if dist.data_ranks > 1 else batches
        configure_backends(device)
        self.recomputed = recompute_blocks(model, cfg.activation_checkpointing)
        # One process has nothing to shard across: a sharded run resumed on one trains whole.
        self.zero = cfg.zero_stage if dist.world_size > 1 else 0
        self.sharded = self.zero >= 2  # FSDP2 holds the weights (stage 2: between steps; 3: between blocks)
        if self.zero and cfg.optimizer != "adamw":
            raise TinyGPTError(f"--zero {self.zero} trains with AdamW only (Muon orthogonalises whole matrices, which "
                               "sharding splits); add --optimizer adamw")
        if self.sharded:  # before the optimizer: it must hold the sharded parameters
            shard_model(model, dtype, dist.world_size, reshard=self.zero == 3)
        # Tensor parallel: the blocks' rows in the order that splits them (undone when saving).
        self.row_orders = tensor_parallel(model, self.tp, self._tp_mesh) if self.tp > 1 else {}
        # Pipeline parallel: this rank's stage of blocks (the others' dropped from its model).
        self.pipeline = Pipeline(model, pp, dist.rank, cfg.micro_batches(model.config.block_size),
                                 cfg.pipeline_schedule, device) if pp > 1 else None
        # A checkpoint gathers the whole weights from every rank.
        self.gathers = self.sharded or self.tp > 1 or self.pipeline is not None
        self.local_forward = torch.compile(model) if cfg.compile else model  # evaluation: no gradients to sync
        # Wrapped at the first step (see forward); a sharded model is its own wrapper.
        self._forward: torch.nn.Module | None = self.local_forward if self.gathers else None
        self.whole: GPT | None = None  # a sharded run's whole weights on rank 0, as last gathered (gather_whole)
        self._pending: tuple[dict, dict] | None = None  # a sharded run's loaded state, until training starts
        # Each rank draws its own dropout masks, from the run's seed, the step and the rank, so a
        # resumed run draws what it would have (the seed is the one the model was built from).
        self._seed = torch.initial_seed()
        self.optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device,
                                        cfg.optimizer)
        if self.zero == 1:  # each rank keeps (and steps) the AdamW state of its share of the parameters
            self.optimizer = zero_redundancy(self.optimizer)
        # Loss scaling keeps fp16 gradients from underflowing; bf16/fp32 have the range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        # The config derives the budget, the final lr and the accumulation; the loop only follows
        # them. The micro-batches of a step are shared out among the ranks.
        T, accum = model.config.block_size, cfg.micro_batches(model.config.block_size)
        if accum % dist.data_ranks:
            even = -(-accum // dist.data_ranks) * dist.data_ranks * cfg.batch_size * T
            raise TinyGPTError(f"a step of {accum} micro-batch(es) of {cfg.batch_size}x{T} tokens cannot be shared "
                               f"evenly by {dist.data_ranks} processes; use --tokens-per-step {even}")
        self.grad_accum = accum // dist.data_ranks  # micro-batches per rank
        self.tokens_per_step = cfg.step_tokens(T)  # all ranks together, at the full shape
        self.step_tokens = self.tokens_per_step  # the last step's, smaller during a batch warmup
        self.state = TrainState()
        self._stop: str | None = None
        self._signal: int | None = None  # the signal that asked for the stop, if one did
        self._reserve = 0.0  # seconds: the slowest step with its callbacks, kept free at a time budget's end
        # The first step records what this rank holds (train/memory.py); off where a caller measures
        # the step itself (autograd's saved-tensor hooks do not nest: the innermost alone sees).
        self.measure_memory = True

    @property
    def forward(self) -> torch.nn.Module:
        """What a training step runs through: the model as the distributed context wraps it
        (DDP). Wrapped on first use, not when built: DDP's constructor is a collective, and
        rank 0 builds its trainer before the other ranks know where the run is."""
        if self._forward is None:
            self._forward = self.dist.wrap(self.local_forward)
        return self._forward

    # ------------------------------------------------------------------ state

    def gather_whole(self) -> GPT | None:
        """A sharded run's whole weights in a plain model on rank 0's CPU (None on the other
        ranks), for saving and sampling. A collective: every rank calls it at the same step."""
        if self.pipeline is not None:
            weights = self.pipeline.whole_weights()
        else:
            weights = whole_rows(full_weights(self.model), self.row_orders)
        if not self.dist.is_main:
            return None
        if self.whole is None:
            self.whole = GPT(self.model.config)
        self.whole.load_state_dict({**self.whole.state_dict(), **weights})
        return self.whole

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimizer, scaler, data position,
        the loop's counters and every random generator. (Sharded: whole, on rank 0, after
        :meth:`gather_whole`; a collective.)"""
        if self.pipeline is not None:
            optimizer = self.pipeline.whole_optimizer_state(self.optimizer, self.model)
            weights = state_tensors(self.whole) if self.dist.is_main else {}
        elif self.gathers:
            optimizer = full_optimizer_state(self.model, self.optimizer, self.row_orders)
            weights = state_tensors(self.whole) if self.dist.is_main else {}
        elif self.zero == 1:  # every rank sends rank 0 its share of the AdamW state
            self.optimizer.consolidate_state_dict(to=0)
            optimizer = self.optimizer.state_dict() if self.dist.is_main else {}
            weights = state_tensors(self.model)
        else:
            optimizer, weights = self.optimizer.state_dict(), state_tensors(self.model)
        return {
            **self.state.state_dict(),
            "model": weights,  # a fine-tune's adapter alone: the base is not trained
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            "rng": capture_rng(),
        }

    def load_state_dict(self, state: dict, source: str = "the trainer state") -> None:
        if not self.gathers:
            load_state_tensors(self.model, state.get("model", {}), source)
        try:
            if self.gathers:
                # Every rank read the whole state; each takes its slice when training starts
                # (a collective, and rank 0 resumes before the others know where the run is).
                self._pending = (state["model"], state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if state["batches"] is not None and hasattr(self.batches, "load_state_dict"):
                self.batches.load_state_dict(state["batches"])
            self.state.load_state_dict(state)
            rng = state["rng"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise TinyGPTError(f"the trainer state in {source} does not fit this run ({str(e)[:120]}); "
                               "start a new run instead of --resume") from None
        restore_rng(rng)

    # ------------------------------------------------------------------ budget

    def progress(self) -> float:
        """Fraction of the budget used: whichever of steps, tokens, time is furthest along."""
        t, s = self.cfg, self.state
        fractions = [0.0]
        if t.max_steps:
            span = max(1, t.max_steps - t.warmup_steps)
            fractions.append((s.step - t.warmup_steps) / span if t.max_steps > t.warmup_steps
                             else s.step / t.max_steps)
        if t.max_tokens:
            fractions.append(s.tokens / t.max_tokens)
        if t.time_limit:
            fractions.append(s.elapsed / t.time_limit)
        return min(1.0, max(fractions))

    def done(self) -> bool:
        t, s = self.cfg, self.state
        # The time budget holds the final evaluation and checkpoint too: stop when the slowest
        # step-with-callbacks seen so far would no longer fit in what is left.
        return ((t.max_steps is not None and s.step >= t.max_steps)
                or (t.max_tokens is not None and s.tokens >= t.max_tokens)
                or (t.time_limit is not None and s.elapsed + self._reserve >= t.time_limit))

    def at_interval(self, every: int) -> bool:
        """Whether this step is one of every ``every``, or the last of the run."""
        return self.state.step % every == 0 or self.done()

    def lr(self) -> float:
        t = self.cfg
        return lr_at(self.state.step, self.progress(), lr=t.lr, min_lr=t.final_lr, warmup_steps=t.warmup_steps,
                     schedule=t.schedule, decay_fraction=t.decay_fraction, warmup_floor=self._warmup_floor(),
                     total_steps=self._onecycle_steps(), pct_start=t.pct_start)

    def _onecycle_steps(self) -> int | None:
        """A step budget alone fixes OneCycle's curve in steps; any other budget, by progress."""
        t = self.cfg
        return t.max_steps if t.max_steps and t.max_tokens is None and t.time_limit is None else None

    def momentum(self) -> float | None:
        """OneCycle's beta1 for the next step (None: the optimizer's own, unchanged)."""
        t = self.cfg
        if t.schedule != "onecycle":
            return None
        return onecycle_momentum(self.state.step, self.progress(), self._onecycle_steps(), t.pct_start)

    def _warmup_floor(self) -> float:
        """How far warmup is by the budget: with a time or token budget it also ends at
        WARMUP_SHARE of it, so a slow or busy machine that gets through 77 steps in its 5
        minutes does not spend them all warming up."""
        t, s = self.cfg, self.state
        used = max(s.tokens / t.max_tokens if t.max_tokens else 0.0, s.elapsed / t.time_limit if t.time_limit else 0.0)
        return used / WARMUP_SHARE

    def in_warmup(self) -> bool:
        """Whether the learning rate has yet to reach its peak (a run that ends so is told)."""
        t = self.cfg
        if t.schedule == "onecycle":  # its own rise, over --pct-start of the budget
            return onecycle_phase(self.state.step, self.progress(), self._onecycle_steps(), t.pct_start)[0] \
                and self.lr() < t.lr
        return self.state.step < t.warmup_steps and max((self.state.step + 1) / t.warmup_steps,
                                                        self._warmup_floor()) < 1

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches."""
        self.model.train()
        t, progress = self.cfg, self.progress()
        lr, momentum = self.lr(), self.momentum()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None:  # OneCycle: AdamW's beta1, Muon's momentum
                if "betas" in group:
                    group["betas"] = (momentum, group["betas"][1])
                elif "momentum" in group:
                    group["momentum"] = momentum
        cut_batch, cut_window = stage_divisor(progress, t.batch_warmup), stage_divisor(progress, t.window_warmup)
        if self.dist.world_size > 1:  # the ranks of one replica (tensor parallel) draw alike
            torch.manual_seed(self._seed + self.state.step * self.dist.data_ranks + self.dist.data_rank)
        micro = [shape_batch(next(self.batches), cut_batch, cut_window) for _ in range(self.grad_accum)]
        # The step's loss is the mean over every real target in it (all micro-batches, all
        # ranks): each micro-batch's summed loss is divided by that one count, so batches
        # holding fewer real tokens weigh less, exactly as they would in one big batch.
        n_targets = self.dist.sum_across_ranks(sum(b.n_targets() for b in micro))
        if n_targets == 0:
            raise TinyGPTError(f"step {self.state.step + 1} has no targets to learn from (every loss_mask entry "
                               "is false); check the data's loss masks or use longer sequences")
        total = torch.zeros((), device=self.device)
        experts = ExpertLoad(self.model) if self.model.config.moe_experts else None
        # This process's first step records what a rank holds, activations at their peak over
        # the step's forwards and backwards (a compiled forward is not looked into).
        measure = self.measure_memory
        look = saved_activations(self.model) if measure and not self.cfg.compile else nullcontext({})
        with look as activations:
            if self.pipeline is not None:  # the schedule runs every micro-batch through every stage
                with autocast(self.device, self.dtype):
                    total = self.pipeline.step(micro, n_targets)
            for i, batch in enumerate(micro if self.pipeline is None else ()):
                b = batch.to(self.device, non_blocking=True)
                with self.dist.gradient_sync(self.forward, sync=i == len(micro) - 1):
                    with autocast(self.device, self.dtype):
                        out = self.forward(b.x, b.y, loss_mask=b.loss_mask, input_pos=b.input_pos)
                    loss = out.loss_sum / n_targets
                    scale = self.dist.gradient_scale  # DDP averages over ranks; the step's gradient is their sum
                    objective = loss
                    if experts is not None:  # the routers' losses: a mean over micro-batches and ranks
                        objective = loss + experts.add(out.aux_loss) / (len(micro) * self.dist.data_ranks)
                    self.scaler.scale(objective * scale if scale != 1 else objective).backward()
                total += loss.detach()
                del out, loss, objective  # the graph, and the activations it saved, go before the next micro-batch
        total = self.dist.sum_across_ranks(total)  # the step's loss: every rank's share of it
        # The gradient norm is measured even without clipping (an infinite max_norm clips
        # nothing): with the loss it decides, before the optimizer moves, whether the step
        # is sound. fp16's loss scaler handles its own overflowed gradients by skipping.
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        if self.pipeline is not None:
            grad_norm = self.pipeline.clip_grad_norm(max_norm)
        else:
            clip = clip_grad_norm if self.tp > 1 else torch.nn.utils.clip_grad_norm_  # split and whole gradients
            grad_norm = clip(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded: a DTensor of the ranks' partial norms
            grad_norm = grad_norm.full_tensor()
        loss_value, norm_value = torch.stack([total, grad_norm.float()]).tolist()  # one device sync
        info = {"loss": loss_value, "lr": lr, "grad_norm": norm_value}
        if experts is not None:
            info.update(experts.record(self.dist, len(micro)))
        if not math.isfinite(loss_value) or (not self.scaler.is_enabled() and not math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            what = (f"the loss became {loss_value}" if not math.isfinite(loss_value)
                    else f"the gradient norm became {norm_value}")
            raise self.diverged(what, self.state.step + 1, self.state.step, info)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if measure:
            info.update(rank_memory(self.model, self.optimizer,
                                    activations if isinstance(activations, SavedActivations) else None))
            self.measure_memory = False
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.step_tokens = self.tokens_per_step * max(1, t.batch_size // cut_batch) // t.batch_size
        self.state.tokens += self.step_tokens
        return info

    def diverged(self, what: str, step: int, weights_step: int, record: dict | None = None) -> DivergedError:
        """The error for a non-finite value at ``step`` (from the weights after
        ``weights_step``), with the settings that would help."""
        t = self.cfg
        fixes = {"lr": f"{t.lr / 10:g}"}
        if t.grad_clip <= 0:
            fixes["grad-clip"] = "1.0"
        if self.dtype == torch.float16:
            fixes["dtype"] = "bf16"  # fp16 overflows where bf16 has range to spare
        return DivergedError(f"{what} at step {step} (lr {t.lr:g})", step, weights_step, fixes, record)

    def weights_finite(self, model: torch.nn.Module | None = None) -> bool:
        """Whether every parameter of ``model`` (default: the one trained) is finite (checked
        before weights are saved)."""
        return all(bool(torch.isfinite(p).all()) for p in (model or self.model).parameters())

    @torch.no_grad()
    def evaluate(self, batches: Iterator[Batch], n_batches: int) -> float:
        """Mean loss over every real target of the next ``n_batches`` batches (rank r of N
        evaluates batches r, r + N, ...; the sums are added up across ranks)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device, dtype=torch.long)
        # Each rank evaluates its share of the batches; a sharded model's forward gathers
        # weights from every rank, so there each rank runs every batch (and the sums are whole).
        share = 1 if self.sharded else self.dist.data_ranks
        for i in range(n_batches):
            b = next(batches)
            if i % share != self.dist.data_rank % share:
                continue
            b = b.to(self.device)
            if self.pipeline is not None:
                y = b.y.masked_fill(~b.loss_mask.bool(), IGNORE_INDEX) if b.loss_mask is not None else b.y
                with autocast(self.device, self.dtype):
                    part_sum, part_count = self.pipeline.loss_sum(b.x, y)
                loss_sum += part_sum
                count += part_count.long()
                continue
            with autocast(self.device, self.dtype):
                out = self.local_forward(b.x, b.y, loss_mask=b.loss_mask, input_pos=b.input_pos)
            loss_sum += out.loss_sum.float()
            count += out.n_targets
        if share > 1:
            loss_sum, count = self.dist.sum_across_ranks(loss_sum), self.dist.sum_across_ranks(count)
        return (loss_sum / count).item()

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train until a budget runs out or a stop is requested; returns a summary.

        Ctrl+C / SIGTERM finish the current step and end the loop with
        ``summary["interrupted"]`` set (the checkpointer saves then); a second Ctrl+C aborts."""
        self._stop, self._signal = None, None
        callbacks = [cb for cb in self.callbacks if self.dist.is_main or not cb.main_process_only]
        if self._pending is not None:
            if self.pipeline is not None:
                self.pipeline.load(self.model, self.optimizer, *self._pending)
            else:
                load_full_state(self.model, self.optimizer, *self._pending, self.row_orders)
            self._pending = None
        try:
            for cb in callbacks:
                cb.on_train_start(self)
            with self._stop_signals():
                t_last = time.perf_counter()
                while self._go_on():
                    record: dict = {}
                    try:
                        info = self.train_step()
                        now = time.perf_counter()
                        dt, s = now - t_last, self.state
                        s.elapsed += dt
                        # The callbacks ask done() (evaluate and save at the last step): one answer on all ranks.
                        s.elapsed, self._reserve = self.dist.max_across_ranks([s.elapsed, self._reserve])
                        record = {"step": s.step, "tokens": s.tokens, "elapsed": round(s.elapsed, 3), **info,
                                  "tok_per_s": self.step_tokens / dt}
                        for cb in callbacks:  # the evaluator or checkpointer may find a non-finite value
                            cb.on_step_end(self, record)
                    except DivergedError as e:
                        record = record or {"step": e.step, **e.record}
                        for cb in callbacks:
                            cb.on_nonfinite(self, record)
                        raise
                    # Callbacks (evaluation, saving) count towards the time budget, not the step's tokens/s.
                    t_last = time.perf_counter()
                    s.elapsed += t_last - now
                    self._reserve = max(self._reserve, t_last - now)
                summary = self.summary()
                for cb in callbacks:
                    cb.on_train_end(self, summary)
                # No rank ends before rank 0 has saved: torchrun stops the others when one ends
                # with a signal's status, and that would land in the middle of the save.
                self.dist.barrier()
        finally:
            for cb in callbacks:
                cb.close()
        return summary

    def _go_on(self) -> bool:
        """Whether to take another step: no budget used up and no stop asked for, on any rank
        (all ranks decide together, so they stop at the same step)."""
        s = self.state
        stop, signum, s.elapsed, self._reserve = self.dist.max_across_ranks(
            [self._stop is not None, self._signal or 0, s.elapsed, self._reserve])
        if stop and self._stop is None:  # another rank was asked
            self._signal = int(signum) or None
            self._stop = signal.Signals(self._signal).name if self._signal else "stopped on another process"
        return not (self.done() or stop)

    def summary(self) -> dict:
        s = self.state
        return {"step": s.step, "tokens": s.tokens, "elapsed": s.elapsed, "val_loss": s.last_val,
                "best_val": s.best_val if math.isfinite(s.best_val) else None, "interrupted": self._stop,
                "signal": self._signal}

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to end after the current step (as Ctrl+C does)."""
        self._stop = reason

    @contextmanager
    def _stop_signals(self):
        """First Ctrl+C / SIGTERM: stop after this step. Second Ctrl+C: abort."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop, self._signal = signal.Signals(signum).name, int(signum)
            print(f"\n{self._stop}: finishing this step and saving a checkpoint "
                  "(Ctrl+C again to abort without saving)", file=sys.stderr, flush=True)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _experts(self) -> str:
        c = self.model.config
        if not c.moe_experts:
            return ""
        shared = " + 1 shared" if c.moe_shared_expert else ""
        return (f" ({self.model.active_params() / 1e6:.2f}M active: {c.moe_experts} experts{shared}, "
                f"top-{c.moe_top_k}{f', every {c.moe_every} blocks' if c.moe_every > 1 else ''})")

    def describe(self) -> str:
        c, t = self.model.config, self.cfg
        heads = f"{c.n_head} heads" + (f" ({c.kv_heads} key/value)" if c.kv_heads != c.n_head else "")
        params = self.pipeline.whole_params if self.pipeline else self.model.num_params()
        return (f"model: {c.n_layer} layers, {heads}, {c.n_embd} wide, context {c.block_size}, "
                f"{params / 1e6:.2f}M parameters{self._experts()} | device {self.device} {dtype_name(self.dtype)}"
                f"{' compiled' if t.compile else ''}{' | Muon' if t.optimizer == 'muon' else ''}"
                f"{f' | ZeRO-{self.zero}' if self.zero else ''} | {self.tokens_per_step} tokens/step "
                f"(batch {t.batch_size} x {c.block_size} x {self.grad_accum} accumulation)"
                + "".join(f" | {what} warmup over {f:.0%} of the budget" for what, f in
                          (("batch", t.batch_warmup), ("window", t.window_warmup)) if f))
