"""Data-parallel training under torchrun (gloo on the CPU): the same steps on 1 and 2
processes, resume across world sizes, agreed stops, the run's lock, and the pieces of the
seam (the rank's share of a stream, the shared step) in one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinygpt.data import Batches
from tinygpt.errors import TinyGPTError
from tinygpt.run import RunDir
from tinygpt.train import Session
from tinygpt.train.distributed import DistContext, RankShare, launch

TEXT = "".join(f"{i} To be, or not to be, that is the question: whether 'tis nobler.\n" for i in range(300))
FLAGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
         "--dropout", "0", "--eval-batches", "2", "--progress", "false", "--max-new-tokens", "0",
         "--device", "cpu", "--dtype", "fp32", "--threads", "1", "--optimizer", "adamw",
         "--schedule", "constant", "--warmup-steps", "0", "--tokens-per-step", "128"]  # 2 micro-batches of 4x16
LIMIT = 120  # seconds any torchrun here may take; a hang fails the test instead of the suite


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def train(nproc: int, *args, wait: bool = True, here: bool = True):
    """``tinygpt train *args`` on ``nproc`` processes (torchrun's launcher for 2). One process
    runs in this one when ``here`` (the same command line, through the CLI's main): a child
    would spend seconds importing torch again. Not for a run another process goes on with:
    a run stays locked for the life of the process that trained it."""
    if nproc == 1 and wait and here:
        from tinygpt.cli import main

        assert main(["train", *args]) == 0
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head = [sys.executable, "-m", "tinygpt"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "tinygpt"]
    cmd = [*head, "train", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir.open(run).read_metrics() if "loss" in r}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(RunDir.open(run).weights_path("last"))


def assert_same_run(a: Path, b: Path):
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    for step in la:
        assert la[step] == pytest.approx(lb[step], abs=1e-5), step
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    # The keys' bias has a zero gradient in exact arithmetic (softmax ignores a shift all keys
    # share), so AdamW's normalised steps turn round-off, which differs between layouts and
    # CPUs, into updates: 1.03e-5 apart after tp=2 -> pp=2 on an AMD EPYC (under 1e-5 elsewhere).
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=5e-5, msg=name)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """6 steps on one process: what every split or shared run below must reproduce."""
    tmp = tmp_path_factory.mktemp("whole")
    (tmp / "text.txt").write_text(TEXT, encoding="utf-8")
    train(1, "--data", str(tmp / "text.txt"), *FLAGS, "--max-steps", "6", "--eval-interval", "3",
          "--out", str(tmp / "run"))
    return tmp / "run"


def test_two_processes_take_the_steps_of_one_with_twice_the_accumulation(tmp_path, corpus, whole_run):
    two = train(2, "--data", str(corpus), *FLAGS, "--max-steps", "6", "--eval-interval", "3",
                "--out", str(tmp_path / "two"))
    assert "data parallel: 2 processes, 1 micro-batch(es) each per step" in two.stderr + two.stdout
    assert_same_run(whole_run, tmp_path / "two")
    evals = [r for r in RunDir.open(tmp_path / "two").read_metrics() if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]  # one metrics file, written once per step by rank 0
    assert RunDir.open(tmp_path / "two").read_config()["train"]["tokens_per_step"] == 128


@pytest.mark.parametrize("first, then", [
    (["2", "--zero", "1"], ["1"]),               # ZeRO-1: rank 0 gathers the optimizer's shares, one process goes on
    (["1"], ["2", "--zero", "1"]),               # and each rank takes its share of a whole optimizer state
    (["2", "--shard", "true"], ["1"]),           # ZeRO-3 (FSDP2): whole weights and optimizer state gathered
    (["1"], ["2", "--zero", "2"]),               # ZeRO-2 (FSDP2): each rank takes its slice of the whole state
    # Tensor parallel's split blocks gathered whole, then cut into pipeline stages (1F1B);
    (["2", "--parallel", "tp=2"], ["2", "--parallel", "pp=2"]),
    # a GPipe pipeline's stages gathered, then split by heads and MLP columns in two replicas.
    (["2", "--parallel", "pp=2", "--pipeline-schedule", "gpipe"], ["4", "--parallel", "dp=2,tp=2"]),
])
def test_a_run_resumes_on_another_number_of_processes_or_layout(tmp_path, corpus, whole_run, first, then):
    split = tmp_path / "split"
    train(int(first[0]), "--data", str(corpus), *FLAGS, *first[1:], "--max-steps", "3", "--eval-interval", "3",
          "--out", str(split), here=False)
    if {"--shard", "--zero", "--parallel"} & set(first):
        # The saved weights are the whole model's: one process scores what rank 0 measured.
        run = RunDir.open(split)
        val = next(r["val_loss"] for r in run.read_metrics() if r["step"] == 3 and "val_loss" in r)
        assert evaluate_saved(split) == pytest.approx(val, abs=1e-6)
        # The first step recorded what rank 0 keeps: under ZeRO-1, the AdamW state of about half the weights.
        held = run.read_metrics()[0]
        if "--zero" in first:
            assert 0.25 < held["mem_optimizer_mb"] / (2 * held["mem_weights_mb"]) < 0.75
    train(int(then[0]), "--resume", str(split), *then[1:], "--max-steps", "6")
    assert_same_run(whole_run, split)


def test_a_streamed_dataset_trains_alike_on_two_processes_and_resumes_on_one(tmp_path, monkeypatch):
    from test_data_stream import write_folder

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = ["--data", f"hf:{write_folder(tmp_path / 'ds', 'jsonl')}", "--tokenizer", "bpe", "--bpe-vocab-size", "300"]
    # The whole run and the resume run in this process (one thread, as each rank has).
    settings = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "dropout": 0.0,
                "eval_batches": 2, "progress": False, "max_new_tokens": 0, "device": "cpu", "dtype": "fp32",
                "optimizer": "adamw", "schedule": "constant", "warmup_steps": 0, "tokens_per_step": 128}
    assert len(settings) == len(FLAGS) // 2 - 1   # FLAGS less --threads, as a dict
    Session.start({**settings, "data": data[1], "tokenizer": "bpe", "bpe_vocab_size": 300, "max_steps": 4,
                   "eval_interval": 2, "out": str(tmp_path / "whole")}, log=lambda _: None).fit()
    train(2, *data, *FLAGS, "--max-steps", "2", "--eval-interval", "2", "--out", str(tmp_path / "split"))
    Session.resume(tmp_path / "split", {"max_steps": 4}, log=lambda _: None).fit()
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def evaluate_saved(run_path: Path) -> float:
    """The validation loss of the run's last weights, loaded into a one-process model, on the
    batches the run's evaluator draws (seed + 2, --eval-batches 2)."""
    from tinygpt.checkpoint import assign_weights
    from tinygpt.config import from_dict
    from tinygpt.data import DataConfig, prepare_data
    from tinygpt.model import GPT, GPTConfig

    run = RunDir.open(run_path)
    config = run.read_config()
    model = GPT(from_dict(GPTConfig, config["model"])).eval()
    assign_weights(model, weights(run_path), "last")
    data = prepare_data(from_dict(DataConfig, config["data"]), log=lambda _: None)
    batches = Batches(data.val, 4, 16, seed=config["runtime"]["seed"] + 2, split="val")
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(2):
            b = next(batches)
            out = model(b.x, b.y)
            total, count = total + out.loss_sum.item(), count + int(out.n_targets)
    return total / count


def test_a_new_run_on_two_processes_takes_one_micro_batch_on_each_by_default(tmp_path, corpus):
    # A mixture of experts: DDP's gradient sum and the routers' losses (a mean over
    # micro-batches and ranks) give the one-process steps; an expert given no tokens still
    # runs (test_moe checks that), so DDP finds a gradient for every parameter.
    flags = [f for f in FLAGS if f not in ("--tokens-per-step", "128")]
    moe = ["--moe-experts", "4", "--moe-top-k", "1", "--moe-capacity", "1.0", "--max-steps", "2"]
    train(2, "--data", str(corpus), *flags, *moe, "--out", str(tmp_path / "run"))
    run = RunDir.open(tmp_path / "run")
    assert run.read_config()["train"]["tokens_per_step"] == 2 * 4 * 16  # recorded: a resume keeps the steps
    assert run.checkpoint_info("last").tokens == 2 * 2 * 4 * 16
    train(1, "--data", str(corpus), *FLAGS, *moe, "--out", str(tmp_path / "one"))
    assert_same_run(tmp_path / "one", tmp_path / "run")
    two, one = ([r for r in RunDir.open(tmp_path / p).read_metrics() if "expert_load" in r][-1] for p in ("run", "one"))
    assert two["expert_load"] == one["expert_load"] and two["aux_loss"] == pytest.approx(one["aux_loss"], rel=1e-5)


def test_a_time_budget_ends_both_ranks_at_one_step(tmp_path, corpus):
    proc = train(2, "--data", str(corpus), *FLAGS, "--max-time", "1.5", "--eval-interval", "1000",
                 "--out", str(tmp_path / "run"))
    run = RunDir.open(tmp_path / "run")
    last = run.checkpoint_info("last").step
    assert last > 0 and max(losses(tmp_path / "run")) == last
    assert "done: step" in proc.stderr + proc.stdout


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _ranks(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (its children with a RANK)."""
    out = {}
    for pid in _children(launcher):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0])] = pid
    return out


def _wait_for(condition, proc, what: str):
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks' processes through Linux's /proc")
def test_the_lock_is_rank_zeros_and_sigterm_to_one_rank_stops_both_at_one_step(tmp_path, corpus):
    out = tmp_path / "run"
    first = train(2, "--data", str(corpus), *FLAGS, "--max-steps", "100000", "--eval-interval", "1000",
                  "--out", str(out), wait=False)
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, first, "three steps")
        # A second torchrun on the run: its rank 0 is refused the lock and says so once; its other rank is quiet.
        second = train(2, "--resume", str(out), wait=False)
        _, err = second.communicate(timeout=LIMIT)
        assert second.returncode != 0
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "is in use by" in errors[0], err[-2000:]

        workers = _ranks(first.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGTERM)
        _, err = first.communicate(timeout=LIMIT)
    finally:
        if first.poll() is None:
            first.kill()
    run = RunDir.open(out)
    last = run.checkpoint_info("last").step
    assert max(losses(out)) == last  # the checkpoint holds the last step any rank took
    assert run.load_state()["step"] == last
    # It resumes on one process and goes on from there.
    train(1, "--resume", str(out), "--max-steps", str(last + 1))
    assert max(losses(out)) == last + 1


def test_a_rank_takes_every_nth_micro_batch_of_the_global_stream():
    tokens = torch.arange(5000).numpy() % 50
    whole = Batches(tokens, 2, 8, seed=3)
    expected = [next(whole).x for _ in range(6)]
    class Reads(np.ndarray):   # the token array, counting the gathers made from it
        def __getitem__(self, index):
            self.gathers = getattr(self, "gathers", 0) + 1
            return np.asarray(self)[index]

    for rank in (0, 1):
        read = tokens.view(Reads)
        share = RankShare(Batches(read, 2, 8, seed=3), rank, 2)
        got = [next(share).x for _ in range(3)]
        assert all(torch.equal(g, e) for g, e in zip(got, expected[rank::2]))
        assert read.gathers == 3   # its own windows only: the other rank's are drawn, never read
        # The saved position is the whole stream's, at the end of a step: the same on every rank.
        assert torch.equal(share.state_dict()["rng"], whole.state_dict()["rng"])


def test_the_single_process_context_is_the_identity():
    ctx = DistContext()
    assert ctx.is_main and ctx.gradient_scale == 1 and ctx.sum_across_ranks(7) == 7
    assert ctx.max_across_ranks([True, 0, 2.5]) == [1.0, 0.0, 2.5] and ctx.broadcast("x") == "x"


def test_launch_drops_nproc_and_starts_torchrun(monkeypatch):
    seen = []

    class Done:
        returncode = 7

    monkeypatch.setattr(subprocess, "run", lambda cmd: seen.append(cmd) or Done())
    assert launch(2, ["train", "--nproc", "2", "--max-steps", "5", "--nproc=2"]) == 7
    assert seen[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tinygpt",
                           "train", "--max-steps", "5"]


def test_steps_that_cannot_be_shared_evenly_are_refused(corpus):
    from tinygpt.config import from_dict
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.train import TrainConfig, Trainer

    cfg = from_dict(TrainConfig, {"batch_size": 4, "tokens_per_step": 192})  # 3 micro-batches of 4x16
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50))
    with pytest.raises(TinyGPTError, match="cannot be shared evenly by 2 processes; use --tokens-per-step 256"):
        Trainer(model, cfg, iter([]), device=torch.device("cpu"), dtype=torch.float32,
                dist=DistContext(rank=0, world_size=2))


def test_train_nproc_starts_itself_again_under_torchrun(monkeypatch, tmp_path):
    import tinygpt.cli.train as train_command
    from tinygpt.cli import main

    seen = []
    monkeypatch.setattr(train_command, "launch", lambda n, argv: seen.append((n, list(argv))) or 0)
    args = ["train", "--nproc", "2", "--max-steps", "3", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert seen == [(2, args)] and not (tmp_path / "run").exists()  # the children do the run


@pytest.mark.parametrize("parallel, world, message", [
    ("tp=3", 2, "needs 3 processes, not 2"),
    ("dp=2,pp=2", 4, "pipeline parallel takes every process for now"),
    ("dp=2,tp=2", 4, "is decided when torchrun starts the processes"),  # no mesh made at start-up
])
def test_model_parallel_layouts_that_cannot_run_are_refused(parallel, world, message):
    from tinygpt.config import from_dict
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.train import TrainConfig, Trainer

    cfg = from_dict(TrainConfig, {"batch_size": 4, "parallel": parallel, "optimizer": "adamw"})
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=50))
    with pytest.raises(TinyGPTError, match=message):
        Trainer(model, cfg, iter([]), device=torch.device("cpu"), dtype=torch.float32,
                dist=DistContext(rank=0, world_size=world))
