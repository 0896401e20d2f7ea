"""``tinygpt bench train``: training tokens/s, model FLOPs utilisation, and the loop's overhead.

For one preset (and batch size) it measures, in one process and in alternating rounds:

- the bare ``Trainer.train_step`` (forward, backward, clipping, the preset's optimizer) for each dtype;
- the same step of a plain fp32 reference: a minimal GPT-2 and loop written the way
  nanoGPT's ``model.py`` / ``train.py`` write them (fp32 on CPU, as nanoGPT runs there);
- the matmul rate this device reaches at the model's own matmul shapes (every linear
  layer's forward and both backward products), per dtype: the "peak" that model FLOPs
  utilisation (MFU = tokens/s x FLOPs per token / peak) is taken against;
- one short ``tinygpt train`` run of the same shape: its typical step against the bare
  step shows what the loop around it (data, callbacks, progress, metrics) costs.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Alias, layered, like, opt, parse_ints, parse_names
from ..data import Batches
from ..device import (
    ALL_CORES,
    RuntimeConfig,
    cpu_name,
    dtype_candidates,
    fastest,
    resolve_device,
    resolve_dtype,
    seed_everything,
    timed,
)
from ..errors import TinyGPTError
from ..model import GPT, GPTConfig
from ..presets import get_preset, resolve_preset
from ..train.config import RunSection, TrainConfig
from ..train.memory import saved_activations
from .busy import BusyOptions, contention
from .generate import GenerateBench

VOCAB = 65  # a character vocabulary the size of Shakespeare's
MODEL_PARALLEL = {"tp": ("tp", "1f1b"), "pp": ("pp", "1f1b"), "pp-gpipe": ("pp", "gpipe")}
RECOMPUTED = "recompute"  # the engine name's prefix for the activation-checkpointed step


def _several_as_auto(dtypes: str) -> str:
    # --dtypes fp32,bf16 (the old default) compared every format this device has: --dtype auto now.
    return "auto" if "," in dtypes else dtypes


@dataclass
class TrainBench:
    preset: str = like(RunSection, "preset", "baby")
    batch_size: int = like(TrainConfig, "batch_size", 16)
    device: str = like(RuntimeConfig, "device")
    dtype: str = like(RuntimeConfig, "dtype", aliases=(Alias("--dtypes", convert=_several_as_auto),),
                      shown="auto: every format this device could pick, side by side")
    steps: int = opt(4, "timed steps per engine per round")
    rounds: int = like(GenerateBench, "rounds", 2)
    warmup: int = opt(2, "untimed steps first (allocations, first-call paths)")
    reference: bool = opt(True, "also time a plain nanoGPT-style fp32 loop of the same shape",
                          aliases=(Alias("--no-reference", const="false"),))
    loop_steps: int = opt(12, "steps of a real tinygpt train run, to measure what the loop around a step costs "
                              "(0: skip it)")
    compile: bool = like(TrainConfig, "compile")
    # Timed beside the step without it: the memory it saves and the time it costs.
    activation_checkpointing: int = like(TrainConfig, "activation_checkpointing")
    busy: tuple[int, ...] = like(BusyOptions, "busy")
    data_parallel: int = opt(1, "instead, time tinygpt train on 1 and on N data-parallel processes (torchrun, "
                                "the cores shared out among them) at the same global batch, in alternating rounds",
                             metavar="N")
    zero_stages: tuple[int, ...] = opt((0,), "with --data-parallel: the ZeRO stages to lay side by side (train's "
                                             "--zero: 0 DDP, 1 optimizer state sharded, 2 gradients too, 3 weights "
                                             "too), each on N processes", parse=parse_ints)
    micro_batches: int = opt(0, "with --data-parallel: micro-batches of --batch-size in every layout's global step "
                                "(shared out by the data-parallel ranks, a pipeline's schedule runs them through "
                                "its stages); 0: N", metavar="M")
    model_parallel: tuple[str, ...] = opt((), "with --data-parallel: model-parallel layouts on the same N processes "
                                              "too, comma-separated among tp (tensor), pp (pipeline, 1F1B) and "
                                              "pp-gpipe", parse=parse_names)

    def __post_init__(self) -> None:
        if self.activation_checkpointing < 0:
            raise TinyGPTError(f"--activation-checkpointing must be 0 or more, got {self.activation_checkpointing}")
        for name in ("batch_size", "steps", "rounds", "warmup"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.data_parallel < 1:
            raise TinyGPTError(f"--data-parallel must be at least 1, got {self.data_parallel}")
        if any(z not in (0, 1, 2, 3) for z in self.zero_stages) or not (self.zero_stages or self.model_parallel):
            raise TinyGPTError(f"--zero-stages are among 0, 1, 2 and 3 (e.g. 0,1,2,3; none only with "
                               f"--model-parallel), got {self.zero_stages}")
        if self.micro_batches < 0 or (self.micro_batches and self.micro_batches % self.data_parallel):
            raise TinyGPTError(f"--micro-batches must be a multiple of --data-parallel ({self.data_parallel}), "
                               f"got {self.micro_batches}")
        if any(m not in MODEL_PARALLEL for m in self.model_parallel):
            raise TinyGPTError(f"--model-parallel takes {', '.join(MODEL_PARALLEL)}, "
                               f"got {','.join(self.model_parallel)}")
        if self.loop_steps < 0:
            raise TinyGPTError(f"--loop-steps must be 0 or more, got {self.loop_steps}")

    @property
    def resolved_preset(self) -> str:
        """The preset measured (``auto``: the one tinygpt train picks for this device)."""
        return resolve_preset(self.preset, resolve_device(self.device).type)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The formats measured: each one ``--dtype auto`` could pick here, or the one named."""
        return dtype_candidates(resolve_device(self.device)) if self.dtype == "auto" else (self.dtype,)


@dataclass
class Result:
    name: str
    step_s: float
    tokens_per_s: float
    mfu: float | None = None
    peak_mem_mb: float | None = None  # see training_memory_mb


def training_memory_mb(step: Callable[[], None], model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """What one training step holds at its peak, in MB: weights, gradients and optimizer
    state, plus the tensors saved for the backward at their peak (found through autograd's
    saved-tensor hooks, each storage once). Counted from the tensors themselves, so it is
    the same on every device and allocator; allocator slack comes on top."""
    with saved_activations(model) as saved:
        step()
    state = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    weights = sum(p.nbytes for p in model.parameters())
    return (2 * weights + state + saved.peak) / 2**20  # gradients: one per weight


def matmul_shapes(config: GPTConfig, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every matmul in one training step's linear layers: per layer the forward
    (tokens x in -> out) and the backward's input and weight gradients."""
    c = config
    qkv = c.n_embd + 2 * c.kv_heads * c.head_size
    fc = 2 * c.hidden_size if c.mlp == "swiglu" else c.hidden_size
    layers = [(c.n_embd, qkv), (c.n_embd, c.n_embd), (c.n_embd, fc), (c.hidden_size, c.n_embd)] * c.n_layer
    layers.append((c.n_embd, c.padded_vocab_size))
    shapes = []
    for k, n in layers:
        shapes += [(tokens, k, n), (tokens, n, k), (n, tokens, k)]
    return shapes


def matmul_peak(config: GPTConfig, tokens: int, dtype: torch.dtype, device: torch.device, reps: int = 3) -> float:
    """FLOP/s of this model's matmuls at their own shapes, in ``dtype``: the best of ``reps``
    sweeps over all of them (a rate the step could reach if nothing but matmuls ran)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    pairs = [(torch.randn(m, k, generator=g).to(device, dtype), torch.randn(k, n, generator=g).to(device, dtype))
             for m, k, n in matmul_shapes(config, tokens)]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)

    def sweep() -> None:
        for a, b in pairs:
            torch.mm(a, b)

    _, seconds = fastest({"sweep": sweep}, device, reps)
    return flops / seconds["sweep"]


# ---------------------------------------------------------------------------- the reference


class _RefAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _RefBlock(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.attn = _RefAttention(c)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """GPT-2 as nanoGPT's model.py builds it (exact GELU, tied head, the head applied to every
    position in training): the plain baseline, not tinygpt's code."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(_RefBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def _reference_step(config: GPTConfig, batches: Batches,
                    device: torch.device) -> tuple[Callable[[], None], nn.Module, torch.optim.Optimizer]:
    model = ReferenceGPT(config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))

    def step() -> None:
        b = next(batches)
        loss = model(b.x.to(device), b.y.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log step; one sync per step here

    return step, model, opt


# ---------------------------------------------------------------------------- the run


def _config(b: TrainBench, dtype: str):
    from ..train import RunConfig

    return layered(RunConfig, get_preset(b.resolved_preset).layer(),
                   {"model": {"vocab_size": VOCAB}, "train": {"batch_size": b.batch_size, "max_steps": 10**9,
                                                             "compile": b.compile},
                    "runtime": {"device": b.device, "dtype": dtype}})


def _tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, 400_000).astype(np.uint16)


def _loop_vs_bare(b: TrainBench, dtype: str, directory: Path) -> tuple[float, float, float]:
    """Median seconds per step of a real ``tinygpt train`` run (callbacks included), of the
    bare ``train_step`` of the same shape run the same way (consecutive steps, one model in
    memory), and the run's median overhead over its own train_step, step by step (the
    figure that shared-machine noise spares: both sides are the same step)."""
    from ..train import Session

    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\n-0123456789&$#"))
    (directory / "text.txt").write_text("".join(rng.choice(letters[:VOCAB], 400_000)))
    run = directory / "run"
    # What `tinygpt train` runs: the library's Session, with its own callbacks.
    Session.start({"data": str(directory / "text.txt"), "preset": b.resolved_preset, "out": str(run),
                   "batch_size": b.batch_size, "max_steps": b.loop_steps, "dtype": dtype, "device": b.device,
                   "compile": b.compile, "max_new_tokens": 0}, log=lambda _: None).fit()
    records = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    # Within the run: each step's whole time (elapsed grows by the step and the callbacks
    # after the previous one) against its train_step alone (what tok_per_s times).
    whole = np.diff([r["elapsed"] for r in records])[b.warmup:]
    step = np.array([r["tokens"] / r["step"] / r["tok_per_s"] for r in records[1:]])[b.warmup:]
    loop = float(np.median(whole))
    in_run = float(np.median(whole / step)) - 1

    trainer = _trainer(b, dtype, _tokens())
    device = trainer.device
    times = [timed(trainer.train_step, device) for _ in range(b.loop_steps)]
    return loop, float(np.median(times[b.warmup + 1:])), in_run


def data_parallel(b: TrainBench, log: Callable[[str], None] = print) -> dict:
    """Training tokens/s and what rank 0 holds (weights, gradients, optimizer state,
    activations at their peak: train/memory.py) of ``tinygpt train`` on one process and on
    ``b.data_parallel`` (torchrun, gloo or NCCL) under each of ``b.zero_stages`` and
    ``b.model_parallel``, the same
    global step everywhere (``b.data_parallel`` micro-batches of ``b.batch_size``, accumulated
    on the one process), in alternating rounds; each layout's median step after the warm-up
    steps, from its metrics.jsonl."""
    import os
    import subprocess

    from ..run import RunDir
    from ..train.distributed import tinygpt_command

    device = resolve_device(b.device)
    block = get_preset(b.resolved_preset).model["block_size"]
    n = b.data_parallel
    m = b.micro_batches or n
    step_tokens = m * b.batch_size * block
    steps = max(b.loop_steps, b.warmup + 3)
    cpu = device.type == "cpu"
    # (processes, ZeRO stage, --parallel, --pipeline-schedule, the row's name)
    layouts = [(1, 0, "", "1f1b", "1 process")]
    if n > 1:
        layouts += [(n, z, "", "1f1b", f"{n} x " + (f"ZeRO-{z}" if z else "DDP")) for z in b.zero_stages]
        layouts += [(n, 0, f"{MODEL_PARALLEL[m][0]}={n}", MODEL_PARALLEL[m][1],
                     f"{n} x " + {"tp": "TP", "pp": "PP 1F1B", "pp-gpipe": "PP GPipe"}[m]) for m in b.model_parallel]
    speeds: dict[str, list[float]] = {lay[-1]: [] for lay in layouts}
    memory: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        rng = np.random.default_rng(1)
        text.write_text("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ.,;:!?'\n"), 400_000)))
        for r in range(b.rounds):
            for i, (procs, zero, parallel, schedule, name) in enumerate(layouts):
                threads = max(1, ALL_CORES // procs) if cpu else 1
                out = Path(tmp) / f"run-{i}-{r}"
                cmd = [*tinygpt_command(procs), "train", "--data", str(text), "--preset", b.resolved_preset,
                       "--out", str(out), "--optimizer", "adamw", "--zero", str(zero),
                       "--parallel", parallel, "--pipeline-schedule", schedule,
                       "--batch-size", str(b.batch_size), "--tokens-per-step", str(step_tokens),
                       "--max-steps", str(steps), "--eval-interval", str(10**6), "--max-new-tokens", "0",
                       "--progress", "false", "--device", b.device, "--dtype", b.dtypes[0],
                       "--compile", str(b.compile).lower(), "--threads", str(threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                if proc.returncode != 0:
                    raise TinyGPTError(f"the {name} run failed: {proc.stderr.strip().splitlines()[-1:]}")
                records = [r for r in RunDir.open(out).read_metrics() if "loss" in r]
                speeds[name].append(statistics.median(r["tok_per_s"] for r in records if r["step"] > b.warmup))
                memory[name] = {k: v for k, v in records[0].items() if k.startswith("mem_")}
    rows = [{"layout": name, "processes": p, "zero": z, "parallel": par, "pipeline_schedule": sch,
             "threads_each": max(1, ALL_CORES // p) if cpu else 1,
             "tokens_per_s": statistics.median(speeds[name]), "rounds": speeds[name], **memory[name]}
            for p, z, par, sch, name in layouts]
    log(f"{b.resolved_preset}, {b.dtypes[0]}, AdamW, {step_tokens} tokens per step ({m} micro-batches of "
        f"{b.batch_size}), device {device}" + (f", {cpu_name()}" if cpu else "") + ": tinygpt train tokens/s, and "
        "what rank 0 holds in MB (activations: at their peak in a step)")
    log(f"{'layout':>14} {'threads each':>13} {'tokens/s':>10} {'speed-up':>9} {'weights':>8} {'grads':>8} "
        f"{'optimizer':>10} {'activations':>12}")
    for row in rows:
        log(f"{row['layout']:>14} {row['threads_each']:>13} {row['tokens_per_s']:>10,.0f} "
            f"{row['tokens_per_s'] / rows[0]['tokens_per_s']:>8.2f}x {row.get('mem_weights_mb', 0):>8.2f} "
            f"{row.get('mem_grads_mb', 0):>8.2f} {row.get('mem_optimizer_mb', 0):>10.2f} "
            f"{row.get('mem_activations_mb', 0):>12.2f}")
    return {"preset": b.resolved_preset, "dtype": b.dtypes[0], "data_parallel": rows}


def _trainer(b: TrainBench, dtype: str, tokens: np.ndarray, recompute: int = 0):
    from ..train import Trainer

    cfg = _config(b, dtype)
    cfg.train.activation_checkpointing = recompute
    device = resolve_device(b.device)
    seed_everything(0)
    batches = Batches(tokens, b.batch_size, cfg.model.block_size, seed=0)
    trainer = Trainer(GPT(cfg.model).to(device), cfg.train, batches, device=device, dtype=resolve_dtype(dtype, device))
    trainer.measure_memory = False  # training_memory_mb looks into the step from outside
    return trainer


def run(b: TrainBench, log: Callable[[str], None] = print) -> dict:
    device = resolve_device(b.device)
    tokens = _tokens()
    if b.data_parallel > 1:
        return data_parallel(b, log)
    if b.busy:
        trainer = _trainer(b, b.dtypes[0], tokens)
        tokens_per_step = b.batch_size * trainer.model.config.block_size
        for _ in range(b.warmup):
            trainer.train_step()
        log(f"{b.resolved_preset} training step, {b.dtypes[0]}, batch {b.batch_size}")
        rows = contention(lambda: b.steps * tokens_per_step / sum(timed(trainer.train_step, device)
                                                                    for _ in range(b.steps)),
                          parse_ints(b.busy), f"training tokens/s over {b.steps} steps", log)
        return {"preset": b.resolved_preset, "dtype": b.dtypes[0], "contention": rows}

    def tinygpt(name: str, recompute: int = 0):
        trainer = _trainer(b, name, tokens, recompute)
        return trainer.train_step, trainer.model, trainer.optimizer

    builders: dict[str, Callable[[], tuple]] = {f"tinygpt {name}": (lambda name=name: tinygpt(name))
                                                for name in b.dtypes}
    if b.activation_checkpointing:
        builders[f"{RECOMPUTED} {b.dtypes[0]}"] = lambda: tinygpt(b.dtypes[0], b.activation_checkpointing)
    model_cfg = _config(b, b.dtypes[0]).model
    if b.reference:
        def reference() -> tuple:
            seed_everything(0)
            return _reference_step(model_cfg, Batches(tokens, b.batch_size, model_cfg.block_size, seed=0), device)
        builders["reference fp32"] = reference
    tokens_per_step = b.batch_size * model_cfg.block_size
    engines, memory, models = {}, {}, {}
    for name, build in builders.items():
        step, model, optimizer = build()
        engines[name], models[name] = step, model
        for _ in range(b.warmup - 1):
            step()
        memory[name] = training_memory_mb(step, model, optimizer)  # the last warm-up step
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(b.rounds):
        for name, step in engines.items():
            times[name] += [timed(step, device) for _ in range(b.steps)]
    model = models[f"tinygpt {b.dtypes[0]}"]
    flops_per_token = model.flops_per_token()
    peaks = {name: matmul_peak(model_cfg, tokens_per_step, resolve_dtype(name, device), device)
             for name in dict.fromkeys(b.dtypes + ("fp32",))}
    results = []
    for name, ts in times.items():
        dtype = name.split()[-1]
        step_s = statistics.median(ts)
        tps = tokens_per_step / step_s
        results.append(Result(name, step_s, tps, tps * flops_per_token / peaks[dtype], memory[name]))
    loop = {}
    if b.loop_steps > b.warmup + 1:
        with tempfile.TemporaryDirectory() as tmp:
            for name in b.dtypes:
                loop[name] = _loop_vs_bare(b, name, Path(tmp) / name)
    report = {"preset": b.resolved_preset, "params": model.num_params(),
              "tokens_per_step": tokens_per_step, "device": str(device), "threads": torch.get_num_threads(),
              "flops_per_token": flops_per_token, "matmul_peak_flops": peaks,
              "results": [asdict(r) for r in results],
              # loop: dtype -> (loop step, bare step, in-run overhead)
              "train_loop_step_s": loop, "bench": {**asdict(b), "dtypes": list(b.dtypes)}}
    _print(report, log)
    return report


def _print(r: dict, log: Callable[[str], None]) -> None:
    b = r["bench"]
    log(f"{r['preset']}: {r['params'] / 1e6:.2f}M parameters, batch {b['batch_size']} = {r['tokens_per_step']} "
        f"tokens/step, {r['flops_per_token'] / 1e6:.1f} MFLOP/token, device {r['device']}, {r['threads']} threads"
        + (f", {cpu_name()}" if r["device"] == "cpu" else ""))
    log("matmul peak at this model's shapes: " + ", ".join(
        f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in r["matmul_peak_flops"].items()))
    log(f"{'engine':<18}{'tokens/s':>10}{'step ms':>10}{'MFU':>8}{'train MB':>10}")
    speed = {}
    for x in r["results"]:
        speed[x["name"]] = x["tokens_per_s"]
        log(f"{x['name']:<18}{x['tokens_per_s']:>10,.0f}{x['step_s'] * 1e3:>10.0f}{x['mfu']:>8.1%}"
            f"{x['peak_mem_mb']:>10,.0f}")
    if "reference fp32" in speed:
        for name, v in speed.items():
            if name != "reference fp32":
                log(f"{name} / reference fp32 = {v / speed['reference fp32']:.2f}")
    for x in r["results"]:
        if x["name"].startswith(RECOMPUTED):
            plain = next(y for y in r["results"] if y["name"] == "tinygpt " + x["name"].split()[-1])
            log(f"activation checkpointing (every {b['activation_checkpointing']} block(s)): "
                f"{plain['peak_mem_mb'] - x['peak_mem_mb']:,.0f} MB less at the step's peak "
                f"({x['peak_mem_mb'] / plain['peak_mem_mb'] - 1:+.0%}), "
                f"{plain['tokens_per_s'] / x['tokens_per_s'] - 1:+.0%} time per step")
    for dtype, (loop, bare, in_run) in r["train_loop_step_s"].items():
        log(f"tinygpt train ({dtype}): {loop * 1e3:.0f} ms per step, callbacks included; {in_run:+.1%} over its "
            f"own train_step; bare train_step run the same way {bare * 1e3:.0f} ms ({loop / bare - 1:+.1%})")
