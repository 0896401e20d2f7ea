"""The training loop: exact resume, budgets, checkpoints, signals, mixed precision."""

import json
import math
import os
import signal

import pytest
import torch

from tinygpt import checkpoint as ckpt
from tinygpt.config import layered
from tinygpt.data import DataConfig, prepare_data
from tinygpt.errors import TinyGPTError
from tinygpt.train import RunConfig, Trainer

TEXT = "".join(f"{i} To be, or not to be, that is the question: whether 'tis nobler.\n" for i in range(300))


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return prepare_data(DataConfig(data=str(path)), log=lambda _: None)


def make_cfg(data, **train):
    base = {"batch_size": 4, "max_steps": 12, "eval_interval": 4, "eval_batches": 2, "warmup_steps": 3,
            "progress": False, "sample_tokens": 0, "device": "cpu", "dtype": "fp32", "lr": 3e-3}
    return layered(RunConfig, {"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                                         "dropout": 0.1, "vocab_size": data.tokenizer.vocab_size},
                               "train": {**base, **train}})


def run(cfg, data, run_dir, stop_at=None, state=None):
    """Train; returns (losses by step, trainer). ``stop_at`` interrupts like Ctrl+C would."""
    trainer = Trainer(cfg, data, run_dir, log=lambda _: None)
    if state is not None:
        trainer.load_state_dict(state)
    losses = {}

    def on_step(t, record):
        losses[record["step"]] = record["loss"]
        if stop_at is not None and t.step == stop_at:
            t.request_stop("test")

    summary = trainer.fit(on_step)
    return losses, trainer, summary


@pytest.mark.parametrize("sampling, tokens_per_step, stop_at", [
    ("random", None, 5),        # stop between evaluations
    ("sequential", 128, 8),     # stop right at an evaluation, with 2 accumulated micro-batches
])
def test_resume_is_bitwise_identical(tmp_path, data, sampling, tokens_per_step, stop_at):
    cfg = make_cfg(data, tokens_per_step=tokens_per_step)
    cfg.data.sampling = sampling
    full, t_full, _ = run(cfg, data, tmp_path / "full")

    first, _, summary = run(cfg, data, tmp_path / "resumed", stop_at=stop_at)
    assert summary["interrupted"] == "test" and summary["step"] == stop_at
    state = ckpt.load_state(tmp_path / "resumed" / ckpt.TRAINER_STATE)
    assert state["step"] == stop_at
    second, t_res, summary = run(cfg, data, tmp_path / "resumed", state=state)

    assert {**first, **second} == full  # every loss, exactly
    assert summary["step"] == 12 and summary["val_loss"] == t_full.last_val
    for (name, a), (_, b) in zip(t_full.model.state_dict().items(), t_res.model.state_dict().items()):
        assert torch.equal(a, b), name
    # The resumed run's metrics log has each step once, in order.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / ckpt.METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_checkpoints_and_metrics(tmp_path, data):
    cfg = make_cfg(data)
    _, trainer, summary = run(cfg, data, tmp_path)
    assert not summary["interrupted"] and summary["tokens"] == 12 * 4 * 16
    records = [json.loads(line) for line in (tmp_path / ckpt.METRICS_FILE).read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["tok_per_s"] > 0 for r in records)
    best = min(evals, key=lambda r: r["val_loss"])
    meta = ckpt.read_metadata(tmp_path / ckpt.BEST_WEIGHTS)
    assert int(meta["step"]) == best["step"] and float(meta["val_loss"]) == best["val_loss"]
    assert int(ckpt.read_metadata(tmp_path / ckpt.LAST_WEIGHTS)["step"]) == 12
    assert summary["best_val"] == best["val_loss"]
    # Training on repeated text must actually learn.
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_schedule_follows_steps(tmp_path, data):
    cfg = make_cfg(data, max_steps=10, warmup_steps=2, min_lr=0.0, lr=1e-2, schedule="linear", eval_interval=100)
    trainer = Trainer(cfg, data, tmp_path, log=lambda _: None)
    lrs = []
    trainer.fit(lambda t, r: lrs.append(r["lr"]))
    expected = [0.005, 0.01] + [1e-2 * (1 - (s - 2) / 8) for s in range(2, 10)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_time_budget_drives_progress(tmp_path, data):
    cfg = make_cfg(data, max_steps=None, max_time="1h")
    trainer = Trainer(cfg, data, tmp_path, log=lambda _: None)
    trainer.elapsed = 1800.0
    assert trainer.progress() == 0.5 and not trainer.done()
    trainer.elapsed = 3600.0
    assert trainer.done()


def test_no_budget_means_five_minutes(tmp_path, data):
    trainer = Trainer(make_cfg(data, max_steps=None), data, tmp_path, log=lambda _: None)
    assert trainer.max_time == 300.0


def test_token_budget(tmp_path, data):
    cfg = make_cfg(data, max_steps=None, max_tokens=200, eval_interval=100)
    _, trainer, summary = run(cfg, data, tmp_path)
    assert summary["step"] == 4 and summary["tokens"] == 256  # 64 tokens per step, first step reaching 200


def test_sigterm_checkpoints_and_stops(tmp_path, data):
    cfg = make_cfg(data, max_steps=1000)
    trainer = Trainer(cfg, data, tmp_path, log=lambda _: None)
    summary = trainer.fit(lambda t, r: os.kill(os.getpid(), signal.SIGTERM) if t.step == 3 else None)
    assert summary["interrupted"] == "SIGTERM" and summary["step"] == 3
    assert ckpt.load_state(tmp_path / ckpt.TRAINER_STATE)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_block_longer_than_split_is_a_clear_error(tmp_path, data):
    cfg = layered(RunConfig, {"model": {"block_size": 100_000, "vocab_size": data.tokenizer.vocab_size},
                              "train": {"device": "cpu"}})
    with pytest.raises(TinyGPTError, match=r"the train split has \d+ tokens, fewer than one block"):
        Trainer(cfg, data, tmp_path, log=lambda _: None)


def test_diverging_loss_stops_with_advice(tmp_path, data):
    cfg = make_cfg(data, lr=1e30, warmup_steps=0, grad_clip=0.0)
    with pytest.raises(TinyGPTError, match="lower --lr"):
        run(cfg, data, tmp_path)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, data, dtype):
    cfg = make_cfg(data, dtype=dtype, max_steps=3, eval_interval=3)
    _, trainer, summary = run(cfg, data, tmp_path)
    assert math.isfinite(summary["val_loss"])
    assert trainer.scaler.is_enabled() == (dtype == "fp16")  # loss scaling only where fp16 needs it
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_sample_is_text_from_the_vocabulary(tmp_path, data):
    _, trainer, _ = run(make_cfg(data, max_steps=2), data, tmp_path)
    text = trainer.sample(max_new_tokens=30)
    assert len(text) == 30 and set(text) <= set(TEXT)
