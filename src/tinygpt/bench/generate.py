"""``tinygpt bench generate``: decoding tokens/s against transformers and llama.cpp on the same weights.

A GPT-2-small-shaped model (random weights, seeded) generates ``max_new_tokens`` greedy
tokens after a ``prompt_tokens``-token prompt, for each batch size, in each engine: tinygpt with fp32
and bf16 weights; ``transformers`` ``generate`` on the same weights (fp32, bf16) when it is
installed; llama.cpp through ``llama-cpp-python`` on our own GGUF export (f32, f16, q8_0;
batch 1) when that is installed. Rounds alternate between engines; each figure is the
median over rounds. Also printed: the batch-1 ceiling implied by the bytes of weights
each token must read and a measured read bandwidth of this machine.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import weight_tensors
from ..config import like, opt, parse_ints, parse_names
from ..device import cpu_name
from ..errors import TinyGPTError
from ..eval.suite import EvalOptions
from ..generation import GenerationConfig
from ..model import GPT, GPTConfig
from .busy import BusyOptions, contention

Engine = Callable[[torch.Tensor, int], int]  # (prompts (B, T), new tokens) -> tokens generated


ENGINES = ("tinygpt", "transformers", "llama.cpp")
# What an engine needs beyond tinygpt, and how to get it: without it the engine is skipped, saying so.
NEEDS = {"transformers": ("transformers", "pip install transformers"),
         "llama.cpp": ("llama_cpp", "pip install llama-cpp-python gguf")}


@dataclass
class GenerateBench:
    n_layer: int = like(GPTConfig, "n_layer", 12)  # GPT-2 small
    n_head: int = like(GPTConfig, "n_head", 12)
    n_embd: int = like(GPTConfig, "n_embd", 768)
    block_size: int = like(GPTConfig, "block_size", 1024)
    vocab_size: int = opt(50257, "vocabulary size of the random model (GPT-2's)")
    prompt_tokens: int = like(EvalOptions, "prompt_tokens", 64, aliases=("--prompt",))
    max_new_tokens: int = like(GenerationConfig, "max_new_tokens", 256, aliases=("--new-tokens",))
    batch_sizes: tuple[int, ...] = opt((1, 8), "batch sizes, comma-separated", parse=parse_ints,
                                       aliases=("--batches",))
    rounds: int = opt(3, "rounds alternating between the contenders (each figure is the median or best of them)")
    busy: tuple[int, ...] = like(BusyOptions, "busy")
    engines: tuple[str, ...] = opt(ENGINES, f"engines to compare, comma-separated ({', '.join(ENGINES)}); one "
                                            "that is not installed is skipped, saying so", parse=parse_names)

    def __post_init__(self) -> None:
        self.batch_sizes, self.engines = parse_ints(self.batch_sizes), parse_names(self.engines)
        unknown = set(self.engines) - set(ENGINES)
        if unknown:
            raise TinyGPTError(f"unknown engine {sorted(unknown)[0]!r}; choose from: {', '.join(ENGINES)}")
        for name in ("rounds", "prompt_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise TinyGPTError("--batch-sizes needs one or more positive batch sizes such as 1,8")


def _model(b: GenerateBench) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=b.n_layer, n_head=b.n_head, n_embd=b.n_embd, block_size=b.block_size,
                    vocab_size=b.vocab_size)
    return GPT(cfg).eval()


def _tinygpt(model: GPT, dtype: torch.dtype) -> Engine:
    from ..generation.decoder import decode

    m = model if dtype == torch.float32 else copy_model(model).to(dtype)

    def run(prompts: torch.Tensor, n: int) -> int:
        out = decode(m, prompts.tolist(), n, greedy=True, dtype=dtype)
        return sum(len(r) for r in out)

    return run


def time_engines(engines: dict[str, Engine], batch_sizes: tuple[int, ...], prompt_tokens: int, new_tokens: int,
                 rounds: int, vocab_size: int) -> list[tuple[str, int, float]]:
    """(engine, batch size, tokens/s) for each engine that decodes that batch: after a
    warm-up (allocations, first-call paths, routes timed), ``rounds`` rounds alternating
    between the engines (so a shared machine's noise falls on all alike), the median."""
    g = torch.Generator().manual_seed(0)
    results: dict[tuple[str, int], list[float]] = {}
    for batch in batch_sizes:
        prompts = torch.randint(0, vocab_size, (batch, prompt_tokens), generator=g)
        for e in engines.values():
            e(prompts, 4)
        for _ in range(rounds):
            for name, e in engines.items():
                t = time.perf_counter()
                n = e(prompts, new_tokens)
                if n:
                    results.setdefault((name, batch), []).append(n / (time.perf_counter() - t))
    return [(name, batch, statistics.median(v)) for (name, batch), v in results.items()]


def copy_model(model: GPT) -> GPT:
    clone = GPT(model.config).eval()
    clone.load_state_dict(model.state_dict())
    return clone


def _transformers(model: GPT, dtype: torch.dtype) -> Engine | None:
    try:
        import transformers
    except ImportError:
        return None
    from ..interop import hf

    cfg = model.config
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf.gpt2_config_to_hf(cfg)))
    hf_model.load_state_dict(hf.gpt2_weights_to_hf(model.state_dict(), cfg))
    hf_model = hf_model.to(dtype).eval()

    def run(prompts: torch.Tensor, n: int) -> int:
        with torch.no_grad():
            out = hf_model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                    max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return (out.shape[1] - prompts.shape[1]) * prompts.shape[0]

    return run


# Loads a GGUF with llama.cpp's defaults and decodes a few tokens, in a child process: a
# build whose kernels crash on this CPU (one AMX build did in its repacked q8_0 kernels)
# takes the process down, so it is tried where that loses nothing.
_TRY_DEFAULTS = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]), verbose=False)
for i, _ in enumerate(llm.generate([1, 2, 3, 4], temp=0.0, top_k=1)):
    if i == 3:
        break
"""


def _defaults_work(path: Path, threads: int) -> tuple[bool, str]:
    """Whether llama.cpp runs ``path`` at its defaults here, and if not how it failed."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _TRY_DEFAULTS, str(path), str(threads)], capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return False, "no answer in 10 minutes"
    last = (done.stderr.strip().splitlines() or [""])[-1][:120]
    return done.returncode == 0, f"exit {done.returncode}" + (f": {last}" if last else "")


def _llama_cpp(model: GPT, kind: str, directory: Path) -> tuple[Engine, str] | None:
    """llama.cpp on tinygpt's GGUF export of ``model`` as ``kind``, at llama.cpp's defaults
    (repacked CPU weight buffers included) unless they crash here, and the settings used."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from ..interop import gguf_file
    from ..tokenizer import GPT2Tokenizer

    path = directory / f"model-{kind}.gguf"
    gguf_file.export(model.config, weight_tensors(model), GPT2Tokenizer(), path, dtype=kind, force=True)
    threads = torch.get_num_threads()
    works, why = _defaults_work(path, threads)
    low = llama_cpp.llama_cpp  # the ctypes layer, where Llama() gets its default model parameters
    params = low.llama_model_default_params
    if not works:  # only this precision, only here: the plain CPU buffers
        low.llama_model_default_params = lambda: _no_repack(params())
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.block_size, n_threads=threads,
                              n_batch=512, verbose=False)
    finally:
        low.llama_model_default_params = params
    said = (f"llama.cpp's defaults, {threads} threads" if works else
            f"repacked CPU weight buffers off (at the defaults it failed here: {why}), {threads} threads")

    def run(prompts: torch.Tensor, n: int) -> int:
        if prompts.shape[0] != 1:
            return 0  # llama-cpp-python decodes one sequence at a time
        count = 0
        for _ in llm.generate(prompts[0].tolist(), temp=0.0, top_k=1, reset=True):
            count += 1
            if count == n:
                break
        return count

    return run, said


def _no_repack(p):
    if hasattr(p, "use_extra_bufts"):
        p.use_extra_bufts = False
    return p


def read_bandwidth() -> float:
    """Bytes/s this machine reads from memory, from the faster of a large sum and a large
    bf16 matrix-vector product (both multi-threaded in PyTorch); a lower bound."""
    big = torch.ones(256 * 2**20 // 4)  # 256 MiB
    w = torch.ones(8192, 16384, dtype=torch.bfloat16)
    x = torch.ones(16384, dtype=torch.bfloat16)
    best = 0.0
    for f, nbytes in ((lambda: big.sum(), big.numel() * 4), (lambda: torch.mv(w, x), w.numel() * 2)):
        f()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        best = max(best, nbytes / min(times))
    return best


def run(b: GenerateBench, log: Callable[[str], None] = print) -> list[tuple[str, int, float]]:
    """Each engine's tokens/s per batch size (median over rounds), printed as a table with ratios.
    An engine that is not installed is skipped with a line saying how to install it; none left is an error."""
    if b.busy:
        return _contention(b, log)
    missing = [e for e in b.engines if e in NEEDS and importlib.util.find_spec(NEEDS[e][0]) is None]
    for e in missing:
        log(f"skipped {e}: {NEEDS[e][0]} is not installed ({NEEDS[e][1]})")
    if len(missing) == len(b.engines):
        raise TinyGPTError(f"none of the engines asked for ({', '.join(b.engines)}) is installed; install one, "
                           "or add tinygpt to --engines")
    wanted = [e for e in b.engines if e not in missing]
    model = _model(b)
    engines: dict[str, Engine] = {}
    settings: dict[str, str] = {}  # engine -> the settings it ran with, where they are not the obvious ones
    with tempfile.TemporaryDirectory() as tmp:
        if "tinygpt" in wanted:
            engines["tinygpt fp32"] = _tinygpt(model, torch.float32)
            engines["tinygpt bf16"] = _tinygpt(model, torch.bfloat16)
        if "transformers" in wanted:
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                if (e := _transformers(model, dtype)) is not None:
                    engines[f"transformers {name}"] = e
        if "llama.cpp" in wanted:
            for kind in ("f32", "f16", "q8_0"):
                if (made := _llama_cpp(model, kind, Path(tmp))) is not None:
                    engines[f"llama.cpp {kind}"], settings[f"llama.cpp {kind}"] = made
        rows = time_engines(engines, b.batch_sizes, b.prompt_tokens, b.max_new_tokens, b.rounds, b.vocab_size)
    _report(b, model, rows, log)
    for name, said in settings.items():
        log(f"{name}: {said}")
    return rows


def _contention(b: GenerateBench, log: Callable[[str], None]) -> list:
    model, batch = _model(b), b.batch_sizes[0]
    decode = _tinygpt(model, torch.float32)
    prompts = torch.randint(0, b.vocab_size, (batch, b.prompt_tokens), generator=torch.Generator().manual_seed(0))

    def work() -> float:
        t = time.perf_counter()
        n = decode(prompts, b.max_new_tokens)
        return n / (time.perf_counter() - t)

    log(f"greedy decoding, fp32, batch {batch}, prompt {b.prompt_tokens}, {b.max_new_tokens} new tokens, "
        f"{model.num_params() / 1e6:.0f}M parameters")
    rows = contention(work, parse_ints(b.busy), "decoding tokens/s", log)
    return [(f"tinygpt fp32, {r['busy']} busy, {policy}", batch, r[policy][1]) for r in rows
            for policy in ("every core", "free cores")]


def _report(b: GenerateBench, model: GPT, rows: list[tuple[str, int, float]], log: Callable[[str], None]) -> None:
    speed = {(n, bs): v for n, bs, v in rows}
    names = list(dict.fromkeys(n for n, _, _ in rows))
    log(f"greedy decoding, prompt {b.prompt_tokens}, {b.max_new_tokens} new tokens, "
        f"{model.num_params() / 1e6:.0f}M-parameter GPT-2-shaped model, {torch.get_num_threads()} threads; "
        f"tokens/s, median of {b.rounds} rounds; {cpu_name()}")
    log(f"{'engine':<20}" + "".join(f"{'batch ' + str(bs):>12}" for bs in b.batch_sizes))
    for n in names:
        log(f"{n:<20}" + "".join(f"{speed[(n, bs)]:>12.1f}" if (n, bs) in speed else f"{'-':>12}"
                                 for bs in b.batch_sizes))
    pairs = [("tinygpt fp32", "llama.cpp f32"), ("tinygpt bf16", "llama.cpp f16"),
             ("tinygpt bf16", "transformers bf16"), ("tinygpt fp32", "transformers fp32")]
    for bs in b.batch_sizes:
        for a, c in pairs:
            if (a, bs) in speed and (c, bs) in speed:
                log(f"batch {bs}: {a} / {c} = {speed[(a, bs)] / speed[(c, bs)]:.2f}")
    bw = read_bandwidth()
    head = model.lm_head.weight.numel()
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer.h."))
    for name, size in (("fp32", 4), ("bf16", 2)):
        per_token = (blocks + head) * size
        log(f"batch-1 ceiling, {name} weights: {per_token / 1e6:.0f} MB read per token at {bw / 1e9:.1f} GB/s "
            f"(measured read bandwidth) = {bw / per_token:.0f} tokens/s")
