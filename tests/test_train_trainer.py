"""The training loop: exact resume, budgets, schedule, checkpoints, signals, mixed precision,
gradient accumulation over unequal token counts, and the distributed seam."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import tinygpt
from tinygpt.config import from_dict
from tinygpt.data import Batch, Batches, DataConfig, prepare_data
from tinygpt.device import seed_everything
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import RunDir
from tinygpt.train import (
    DEFAULT_TIME_BUDGET,
    Callback,
    Checkpointer,
    DistContext,
    Evaluator,
    LambdaCallback,
    MetricsLog,
    Session,
    TrainConfig,
    Trainer,
    TrainState,
)

TEXT = "".join(f"{i} To be, or not to be, that is the question: whether 'tis nobler.\n" for i in range(300))
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1)
TRAIN = dict(batch_size=4, max_steps=12, eval_interval=4, eval_batches=2, warmup_steps=3, progress=False,
             max_new_tokens=0, device="cpu", dtype="fp32", lr=3e-3)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def data(corpus):
    return prepare_data(DataConfig(data=str(corpus)), log=lambda _: None)


def start(corpus, out, **settings):
    return Session.start({"data": str(corpus), "out": str(out), **MODEL, **TRAIN, **settings}, log=lambda _: None)


def fit(session, stop_at=None):
    """Train; returns (losses by step, summary). ``stop_at`` interrupts like Ctrl+C would."""
    losses = {}

    def on_step(trainer, record):
        losses[record["step"]] = record["loss"]
        if stop_at is not None and trainer.state.step == stop_at:
            trainer.request_stop("test")

    return losses, session.fit(LambdaCallback(on_step))


def make_trainer(data, *, batches=None, dist=None, **train):
    """A bare Trainer (no callbacks) on the tiny model, without dropout."""
    cfg = from_dict(TrainConfig, {k: v for k, v in {**TRAIN, **train}.items() if k not in ("device", "dtype")})
    seed_everything(0)
    model = GPT(GPTConfig(**{**MODEL, "dropout": 0.0}, vocab_size=data.tokenizer.vocab_size))
    batches = batches or Batches(data.train, cfg.batch_size, MODEL["block_size"], seed=0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[train.get("dtype", "fp32")]
    return Trainer(model, cfg, batches, device=torch.device("cpu"), dtype=dtype, dist=dist)


# ---------------------------------------------------------------------------- resume and checkpoints


@pytest.mark.parametrize("sampling, tokens_per_step, stop_at, extra", [
    ("random", None, 5, {}),        # stop between evaluations
    ("sequential", 128, 8, {}),     # stop right at an evaluation, with 2 accumulated micro-batches
    ("random", None, 6, {"optimizer": "muon", "schedule": "wsd"}),  # two optimizers' states
    ("random", None, 5, {"batch_warmup": 0.5, "window_warmup": 0.5}),  # stopped inside both warmups
    ("random", None, 5, {"moe_experts": 4, "moe_top_k": 2, "moe_capacity": 1.0}),  # routers and their losses
])
def test_resume_is_bitwise_identical(tmp_path, corpus, sampling, tokens_per_step, stop_at, extra):
    kw = dict(sampling=sampling, tokens_per_step=tokens_per_step, **extra)
    full_session = start(corpus, tmp_path / "full", **kw)
    full, _ = fit(full_session)

    first, summary = fit(start(corpus, tmp_path / "resumed", **kw), stop_at=stop_at)
    assert summary["interrupted"] == "test" and summary["step"] == stop_at
    assert RunDir(tmp_path / "resumed").load_state()["step"] == stop_at
    resumed = Session.resume(tmp_path / "resumed", log=lambda _: None)
    second, summary = fit(resumed)

    assert {**first, **second} == full  # every loss, exactly
    assert summary["step"] == 12 and summary["val_loss"] == full_session.trainer.state.last_val
    for (name, a), (_, b) in zip(full_session.trainer.model.state_dict().items(),
                                 resumed.trainer.model.state_dict().items()):
        assert torch.equal(a, b), name
    # The resumed run's metrics log has each step once, in order.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_checkpoints_and_metrics(tmp_path, corpus):
    session = start(corpus, tmp_path / "run")
    _, summary = fit(session)
    assert not summary["interrupted"] and summary["tokens"] == 12 * 4 * 16
    run = RunDir.open(tmp_path / "run")
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["tok_per_s"] > 0 for r in records)
    best = min(evals, key=lambda r: r["val_loss"])
    assert run.checkpoint_info("best").step == best["step"] and run.checkpoint_info("best").val_loss == best["val_loss"]
    assert run.checkpoint_info("last").step == 12 and run.checkpoint_info("last").tokens == 12 * 64
    assert [r["best"] for r in evals] == [r["val_loss"] == min(e["val_loss"] for e in evals[:i + 1])
                                          for i, r in enumerate(evals)]
    assert summary["best_val"] == best["val_loss"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # training on repeated text must actually learn


def test_sigterm_checkpoints_and_stops_in_a_child_process(tmp_path, corpus):
    # In a child process: a regression in signal handling must fail this test, not kill the suite.
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from tinygpt.train import LambdaCallback, Session
        session = Session.start({{"data": {str(corpus)!r}, "out": {str(tmp_path / "run")!r}, **{MODEL!r},
                                  **{TRAIN!r}, "max_steps": 1000}}, log=lambda _: None)
        kill = lambda t, r: os.kill(os.getpid(), signal.SIGTERM) if t.state.step == 3 else None
        summary = session.fit(LambdaCallback(kill))
        print(json.dumps({{**summary, "restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["interrupted"] == "SIGTERM" and summary["step"] == 3 and summary["restored"]
    assert "SIGTERM: finishing this step and saving a checkpoint" in proc.stderr
    run = RunDir.open(tmp_path / "run")
    assert run.load_state()["step"] == 3 and run.checkpoint_info("last").step == 3


def test_block_longer_than_split_is_a_clear_error_and_writes_nothing(tmp_path, corpus):
    with pytest.raises(TinyGPTError, match=r"the train split has \d+ tokens, fewer than one block"):
        start(corpus, tmp_path / "out", block_size=100_000)
    assert not (tmp_path / "out").exists()


def test_diverging_loss_stops_with_advice(tmp_path, corpus):
    with pytest.raises(TinyGPTError, match=r"the loss became nan at step 2 \(lr 1e\+30\), before the first "
                                           r"checkpoint; start the run over with --lr 1e\+29 --grad-clip 1.0: "
                                           r"tinygpt train --resume .*run --lr 1e\+29 --grad-clip 1.0$"):
        fit(start(corpus, tmp_path / "run", lr=1e30, warmup_steps=0, grad_clip=0.0))
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and not math.isfinite(last["loss"])  # the step that went wrong is in the log


def _poison(at_step, value=float("nan")):
    """A callback that, after step ``at_step``, puts ``value`` into one weight (as a blow-up would)."""
    def hook(trainer, record):
        if trainer.state.step == at_step:
            with torch.no_grad():
                trainer.model.lm_head.weight[0, 0] = value
    return LambdaCallback(hook)


def test_nonfinite_values_are_never_stepped_or_saved(tmp_path, corpus):
    session = start(corpus, tmp_path / "run")  # checkpoints at 4 and 8
    run = session.run
    with pytest.raises(TinyGPTError) as err:
        session.fit(_poison(5))  # step 6's forward sees the NaN weight
    # The check runs before the optimizer steps: step 6 was never taken.
    assert session.trainer.state.step == 5
    assert "the loss became nan at step 6 (lr 0.003); the last checkpoint (step 4) is intact, continue from it " \
           f"with --lr 0.0003: tinygpt train --resume {run.path} --lr 0.0003" in str(err.value)
    assert "--grad-clip" not in str(err.value)  # already 1.0: advising it would not help
    assert run.load_state()["step"] == run.checkpoint_info("last").step == 4
    # Resuming with the advice continues from step 4 and finishes with finite weights.
    resumed = Session.resume(run.path, {"lr": 3e-4}, log=lambda _: None)
    _, summary = fit(resumed)
    assert summary["step"] == 12 and math.isfinite(summary["val_loss"])


def test_the_checkpointer_never_saves_nonfinite_values(tmp_path, corpus):
    session = start(corpus, tmp_path / "run", max_steps=4)
    fit(session)
    run, trainer = session.run, session.trainer
    saved = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    checkpointer = Checkpointer(run, every=1, has_val=True)
    # A non-finite evaluated loss is the evaluator's to find, before any callback writes the step.
    evaluator = Evaluator({"val": lambda: iter(())}, every=1, n_batches=1)
    trainer.evaluate = lambda batches, n: float("nan")
    with pytest.raises(TinyGPTError, match="the val loss became nan at step 4"):
        evaluator.on_step_end(trainer, {"step": 4, "train_loss": 1.0})
    with torch.no_grad():
        trainer.model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(TinyGPTError, match="a weight became non-finite at step 4"):
        checkpointer.on_step_end(trainer, {"step": 4, "train_loss": 1.0, "val_loss": 1.0})
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == saved


def test_a_nonfinite_gradient_stops_before_the_step(data):
    trainer = make_trainer(data, grad_clip=0.0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.lm_head.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TinyGPTError, match=r"the gradient norm became (inf|nan) at step 1 .* retry with "
                                           r"--lr 0.0003 --grad-clip 1.0$"):
        trainer.train_step()
    assert trainer.state.step == 0 and all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    assert not trainer.optimizer.state  # Adam's moments were never touched


# ---------------------------------------------------------------------------- budget and schedule


def test_warmup_ends_at_a_tenth_of_a_time_or_token_budget_however_few_steps_that_is(data):
    # A busy machine: 5 steps took 10 of the 100 seconds. Warmup's 100 steps must not hold
    # the rate down for the whole run: it is done at 10% of the budget.
    slow = make_trainer(data, max_steps=None, max_time=100, warmup_steps=100, lr=1e-2, min_lr=0.0)
    slow.state.step, slow.state.elapsed = 5, 10.0
    assert slow.lr() == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    slow.state.elapsed = 5.0  # half way to the tenth: half the rate (more than 6 steps of 100 would give)
    assert slow.lr() == pytest.approx(0.5e-2) and slow.in_warmup()
    tokens = make_trainer(data, max_steps=None, max_tokens=10_000, warmup_steps=100, lr=1e-2)
    tokens.state.step, tokens.state.tokens = 5, 1_000
    assert tokens.lr() == pytest.approx(tokens.cfg.final_lr + 0.5 * (1e-2 - tokens.cfg.final_lr)
                                        * (1 + math.cos(math.pi * 0.1))) and not tokens.in_warmup()
    steps = make_trainer(data, max_steps=1000, warmup_steps=100, lr=1e-2)  # a step budget: the steps say
    steps.state.step, steps.state.elapsed = 5, 500.0
    assert steps.lr() == pytest.approx(1e-2 * 6 / 100)


def test_the_time_budget_keeps_room_for_the_slowest_step_with_its_callbacks(data):
    trainer = make_trainer(data, max_steps=None, max_time=10)
    trainer.state.elapsed = 8.5
    assert not trainer.done()
    trainer._reserve = 2.0  # an evaluation and checkpoint took 2 s: the last one must fit
    assert trainer.done()


def test_schedule_follows_steps(data):
    trainer = make_trainer(data, max_steps=10, warmup_steps=2, min_lr=0.0, lr=1e-2, schedule="linear")
    lrs = []
    trainer.callbacks = [LambdaCallback(lambda t, r: lrs.append(r["lr"]))]
    trainer.fit()
    expected = [0.005, 0.01] + [1e-2 * (1 - (s - 2) / 8) for s in range(2, 10)]
    assert lrs == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_onecycle_is_pytorchs_onecycle_lr_step_by_step_and_resumes_exactly(data, optimizer):
    seen, stop_at = [], []

    def record(t, r):  # the rate and the momentum (AdamW's beta1; Muon's own) each step took
        group = t.optimizer.param_groups[0]
        seen.append((r["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        if t.state.step in stop_at:
            t.request_stop()

    settings = dict(max_steps=20, lr=1e-2, schedule="onecycle", optimizer=optimizer, pct_start=0.25)
    whole = make_trainer(data, **settings)
    whole.callbacks = [LambdaCallback(record)]
    whole.fit()
    p = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.AdamW([p], lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=1e-2, total_steps=20, pct_start=0.25)
    expected = []
    for _ in range(20):
        expected += [reference.param_groups[0]["lr"], reference.param_groups[0]["betas"][0]]
        reference.step()
        schedule.step()
    assert [x for pair in seen for x in pair] == pytest.approx(expected, rel=1e-12, abs=0)
    # Stopped after step 7 and resumed: the same 20 steps.
    whole_run, seen[:], stop_at[:] = list(seen), [], [7]
    first = make_trainer(data, **settings)
    first.callbacks = [LambdaCallback(record)]
    first.fit()
    assert first.state.step == 7
    again, stop_at[:] = make_trainer(data, **settings), []
    again.load_state_dict(first.state_dict())
    again.callbacks = [LambdaCallback(record)]
    again.fit()
    assert seen == whole_run


def test_time_budget_drives_progress(data):
    trainer = make_trainer(data, max_steps=None, max_time="1h")
    trainer.state.elapsed = 1800.0
    assert trainer.progress() == 0.5 and not trainer.done()
    trainer.state.elapsed = 3600.0
    assert trainer.done()


def test_no_budget_means_five_minutes_and_min_lr_a_tenth(data):
    # Derived by the config, once, from what was given; the trainer only follows them.
    assert TrainConfig().time_limit == DEFAULT_TIME_BUDGET == 300.0
    assert TrainConfig(max_steps=5).time_limit is None and TrainConfig(max_time=60.0).time_limit == 60.0
    assert TrainConfig(lr=0.02).final_lr == 0.02 / 10 and TrainConfig(lr=0.02, min_lr=0.0).final_lr == 0.0
    trainer = make_trainer(data, max_steps=None)
    trainer.state.elapsed = 299.0
    assert not trainer.done()
    trainer.state.elapsed = 300.0
    assert trainer.done() and trainer.progress() == 1.0


def test_token_budget(data):
    summary = make_trainer(data, max_steps=None, max_tokens=200).fit()
    assert summary["step"] == 4 and summary["tokens"] == 256  # 64 tokens per step, first step reaching 200


def test_train_state_round_trips():
    state = TrainState(step=7, tokens=448, elapsed=1.5, best_val=2.25, last_val=2.5)
    again = TrainState()
    again.load_state_dict(state.state_dict())
    assert again == state
    assert TrainState().best_val == math.inf and TrainState().last_val is None


# ---------------------------------------------------------------------------- batches, masks, accumulation


def masked_micro_batches(data, seed=3):
    """Two micro-batches of 4 x 16 whose masks keep very different numbers of targets."""
    b1, b2 = Batches(data.train, 4, 16, seed=seed).next_batch(), Batches(data.train, 4, 16, seed=seed + 1).next_batch()
    m1 = torch.zeros(4, 16, dtype=torch.bool)
    m1[:, :3] = True                     # 12 targets
    m2 = torch.ones(4, 16, dtype=torch.bool)
    m2[0, 8:] = False                    # 56 targets
    return Batch(b1.x, b1.y, m1), Batch(b2.x, b2.y, m2)


def gradients_of_one_step(trainer):
    """Run one train_step and return the gradients the optimizer was about to apply."""
    seen = {}

    def record(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.step = record
    trainer.train_step()
    return seen


def test_accumulating_unequal_micro_batches_equals_one_big_batch(data):
    first, second = masked_micro_batches(data)
    accumulated = make_trainer(data, batch_size=4, tokens_per_step=128, grad_clip=0.0,
                               batches=iter([first, second]))
    assert accumulated.grad_accum == 2
    big = Batch(torch.cat([first.x, second.x]), torch.cat([first.y, second.y]),
                torch.cat([first.loss_mask, second.loss_mask]))
    one = make_trainer(data, batch_size=8, grad_clip=0.0, batches=iter([big]))
    assert one.grad_accum == 1
    g_acc, g_one = gradients_of_one_step(accumulated), gradients_of_one_step(one)
    for name in g_one:
        torch.testing.assert_close(g_acc[name], g_one[name], rtol=1e-5, atol=1e-7, msg=name)

    # The tempting shortcut, averaging the two micro-batch means, weighs 12 targets like 56: it differs.
    model = one.model
    model.zero_grad()
    for b in (first, second):
        (model(b.x, b.y, loss_mask=b.loss_mask).loss / 2).backward()
    key = "transformer.wte.weight"
    assert (model.transformer.wte.weight.grad - g_one[key]).abs().max() > 1e-4


def test_batch_and_window_warmup_shapes_and_tokens(data):
    # max_steps 12, warmup 3: progress is (step - 3) / 9 from step 3 on; half of it warms up
    # (4.5 steps past step 3): a quarter until progress 0.25, a half until 0.5, then whole.
    trainer = make_trainer(data, batch_warmup=0.5, window_warmup=0.5, batch_size=8)
    shapes, tokens = [], []
    trainer.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    for _ in range(12):
        before = trainer.state.tokens
        trainer.train_step()
        tokens.append(trainer.state.tokens - before)
    quarter, half, whole = (2 * 4, 16 // 4), (4 * 2, 16 // 2), (8, 16)
    assert shapes == [quarter] * 6 + [half] * 2 + [whole] * 4
    assert tokens == [2 * 16] * 6 + [4 * 16] * 2 + [8 * 16] * 4  # the batch shrinks, the window keeps tokens
    assert trainer.state.tokens == sum(tokens)


def test_trainer_takes_any_iterator_of_batches(data):
    batches = (Batch(b.x, b.y, torch.rand(b.y.shape, generator=torch.Generator().manual_seed(i)) > 0.5)
               for i, b in enumerate(Batches(data.train, 4, 16, seed=0)))
    trainer = make_trainer(data, max_steps=3, batches=batches)
    summary = trainer.fit()
    assert summary["step"] == 3
    assert trainer.state_dict()["batches"] is None  # a plain generator has no position to save


def test_a_step_with_no_targets_is_a_clear_error(data):
    b = Batches(data.train, 4, 16, seed=0).next_batch()
    trainer = make_trainer(data, batches=iter([Batch(b.x, b.y, torch.zeros_like(b.y, dtype=torch.bool))]))
    with pytest.raises(TinyGPTError, match="has no targets to learn from"):
        trainer.train_step()


class CountingDist(DistContext):
    """A fake rank that records what the trainer asks of the distributed seam."""

    def __init__(self, rank):
        super().__init__(rank=rank, world_size=2)
        object.__setattr__(self, "calls", [])

    def gradient_sync(self, module, sync):
        self.calls.append(("sync", sync))
        return super().gradient_sync(module, sync)

    def sum_across_ranks(self, n):
        self.calls.append(("sum", n))
        return 2 * n  # as if the other rank had the same count


@pytest.mark.parametrize("rank", [0, 1])
def test_distributed_seam(data, tmp_path, rank):
    trainer = make_trainer(data, max_steps=1, tokens_per_step=256, dist=CountingDist(rank))  # 4 micro-batches
    assert trainer.grad_accum == 2 and trainer.tokens_per_step == 256  # two on each rank; the step is global
    wrote = []

    class Writer(Callback):  # main_process_only by default
        def on_step_end(self, trainer, record):
            wrote.append(record["step"])

    splits = {"val": lambda: Batches(data.val, 4, 16, seed=1)}
    trainer.callbacks = [Evaluator(splits, every=1, n_batches=2), Writer(), MetricsLog(tmp_path / "m.jsonl")]
    trainer.fit()
    calls = trainer.dist.calls
    assert calls[:3] == [("sum", 128), ("sync", False), ("sync", True)]  # no all-reduce until the last
    assert [kind for kind, x in calls[3:]] == ["sum"] * 3 and all(torch.is_tensor(x) for _, x in calls[3:])
    # The step's loss is the sum of the ranks' shares: here twice this rank's.
    assert trainer.state.step == 1 and math.isfinite(calls[3][1].item())
    assert trainer.state.last_val is not None  # every rank evaluates
    assert wrote == ([1] if rank == 0 else []) and (tmp_path / "m.jsonl").exists() == (rank == 0)


# ---------------------------------------------------------------------------- precision and samples


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(tmp_path, corpus, dtype):
    losses = {}
    for d in ("fp32", dtype):
        session = start(corpus, tmp_path / d, dtype=d, max_steps=8, eval_interval=8, dropout=0.0)
        losses[d], summary = fit(session)
    reduced, full = [losses[dtype][s] for s in range(1, 9)], [losses["fp32"][s] for s in range(1, 9)]
    assert reduced != full  # autocast really ran in reduced precision...
    assert max(abs(a - b) for a, b in zip(reduced, full)) < 0.05  # ...and tracks fp32 closely
    assert reduced[-1] < reduced[0] - 0.2  # and learns
    trainer = session.trainer
    assert trainer.scaler.is_enabled() == (dtype == "fp16")  # loss scaling only where fp16 needs it
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_bf16_and_fp32_runs_of_200_steps_end_within_two_percent(tmp_path, corpus):
    # Autocast keeps the master weights, the optimizer and the loss in fp32, so rounding the
    # matmuls to bf16 may move the path but not where 200 steps end.
    ends = {}
    for dtype in ("fp32", "bf16"):
        losses, summary = fit(start(corpus, tmp_path / dtype, dtype=dtype, max_steps=200, eval_interval=100,
                                    eval_batches=4))
        assert losses[200] < 0.5 * losses[1]  # it learned something
        ends[dtype] = (sum(losses[s] for s in range(181, 201)) / 20, summary["val_loss"], losses)
    (fp32_train, fp32_val, fp32_losses), (bf16_train, bf16_val, bf16_losses) = ends["fp32"], ends["bf16"]
    assert fp32_losses != bf16_losses  # bf16 really ran
    assert abs(bf16_train / fp32_train - 1) < 0.02
    assert abs(bf16_val / fp32_val - 1) < 0.02


def test_the_trainers_sample_is_what_the_api_gives(tmp_path, corpus):
    session = start(corpus, tmp_path / "run", max_steps=2, eval_interval=2)
    fit(session)
    text = session.sample(30)
    lm = tinygpt.load(tmp_path / "run", checkpoint="last", device="cpu")
    assert text == lm.generate("", 30, seed=session.cfg.runtime.seed)[0]  # same options, same text
    assert len(text) == 30 and set(text) <= set(TEXT)
    assert text != lm.generate("", 30, seed=session.cfg.runtime.seed + 1)[0]
