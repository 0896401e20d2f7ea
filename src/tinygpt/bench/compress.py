"""``tinygpt bench compress``: what each smaller form of one model costs and gains, in one table.

For one float model (a run, or without one a GPT-2-small-shaped model with random weights,
for speed alone) and each variant: fp32, bf16, int8, int4 (round to nearest, awq-lite,
gptq-lite), dynamic int8, and any further runs given (a QAT fine-tune, a pruned run):

- the weights file's size;
- greedy decoding tokens/s at each batch size (rounds alternate between the variants, each
  figure the median of them);
- bits per byte on held-out text (the first model's validation split, or --data) and its
  change from fp32.

Plus llama.cpp (llama-cpp-python, where installed) on tinygpt's GGUF export of the same
weights as q8_0 and q4_0, at its defaults, batch 1 (its Python API decodes one sequence).
The int variants quantize the output head too (``--quantize-head``), as llama.cpp's q8_0 and
q4_0 files do, so the speed comparison reads the same kinds of weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import save_weights
from ..compress.quantize import QuantizeOptions, calibration_ids, quantize_model
from ..config import like, opt, parse_ints, parse_names
from ..device import cpu_name
from ..errors import TinyGPTError
from ..generation.decoder import decode
from ..generation.lm import TinyGPT
from ..model import GPT, GPTConfig
from ..options import TextOptions
from ..source import ModelSource, open_source
from .generate import GenerateBench, _llama_cpp, copy_model, time_engines

VARIANTS = ("fp32", "bf16", "int8", "int4", "int4-awq", "int4-gptq", "dynamic-int8")
_SCHEMES = {"int8": ("int8", "rtn"), "int4": ("int4", "rtn"), "int4-awq": ("int4", "awq-lite"),
            "int4-gptq": ("int4", "gptq-lite"), "dynamic-int8": ("dynamic-int8", "rtn")}
LLAMA = ("q8_0", "q4_0")


@dataclass
class CompressBench:
    # The float model (a run), then any further runs to add as rows (a QAT fine-tune, a pruned
    # run); none: a GPT-2-small-shaped model with random weights, for speed alone.
    models: list[str] | None = like(ModelSource, "model", None)
    variants: tuple[str, ...] = opt(VARIANTS, f"forms of the first model, comma-separated ({', '.join(VARIANTS)})",
                                    parse=parse_names)
    group_size: int = like(QuantizeOptions, "group_size")
    quantize_head: bool = like(QuantizeOptions, "quantize_head", True)
    data: str | None = like(TextOptions, "data", shown="the first model's validation split")
    max_chars: int | None = like(TextOptions, "max_chars", 200_000)
    calibration_tokens: int = like(QuantizeOptions, "calibration_tokens")
    prompt_tokens: int = like(GenerateBench, "prompt_tokens")
    max_new_tokens: int = like(GenerateBench, "max_new_tokens", 64)
    batch_sizes: tuple[int, ...] = like(GenerateBench, "batch_sizes")
    rounds: int = like(GenerateBench, "rounds")
    llama_cpp: bool = opt(True, "also llama.cpp q8_0 and q4_0 on the same weights, where llama-cpp-python is "
                                "installed")

    def __post_init__(self) -> None:
        self.models = list(self.models or [])
        self.variants, self.batch_sizes = parse_names(self.variants), parse_ints(self.batch_sizes)
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise TinyGPTError(f"unknown variant {sorted(unknown)[0]!r}; choose from: {', '.join(VARIANTS)}")
        for name in ("rounds", "prompt_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise TinyGPTError("--batch-sizes needs one or more positive batch sizes such as 1,8")


@dataclass
class Row:
    name: str
    megabytes: float
    speed: dict[int, float]            # batch size -> tokens/s
    bpb: float | None


def _variant(model: GPT, name: str, b: CompressBench, calibration: torch.Tensor | None) -> tuple[GPT, torch.dtype]:
    """``name``'s form of ``model`` (a fresh copy) and the dtype it computes in."""
    copy = copy_model(model)
    if name == "fp32":
        return copy, torch.float32
    if name == "bf16":
        return copy.to(torch.bfloat16), torch.bfloat16
    scheme, rounding = _SCHEMES[name]
    opts = QuantizeOptions(scheme=scheme, rounding=rounding, group_size=b.group_size, quantize_head=b.quantize_head)
    return quantize_model(copy, opts.spec(), calibration if rounding != "rtn" else None), torch.float32


def _megabytes(model: GPT, directory: Path) -> float:
    path = directory / "size.safetensors"
    save_weights(model, path)
    size = path.stat().st_size / 1e6
    path.unlink()
    return size


def _bpb(lm: TinyGPT, ids: list[int]) -> float:
    from ..eval.perplexity import score

    return score(lm, ids, batch_size=8).bits_per_byte


def run(b: CompressBench, log: Callable[[str], None] = print) -> list[Row]:
    from ..tokenizer import GPT2Tokenizer

    if b.models:
        first = open_source(b.models[0])
        if first.run is not None and first.run.quantization() is not None:
            raise TinyGPTError(f"{b.models[0]} is already quantized; give its float run first")
        model, tokenizer = first.model.float().eval(), first.tokenizer
        if b.data is not None:
            from ..data.files import read_text

            text = read_text(b.data, b.max_chars, log=log)
        else:
            from ..eval.perplexity import validation_text

            text = validation_text(b.models[0], log)[: b.max_chars]
        ids = tokenizer.encode(text)
        calibration = None
        if any(_SCHEMES.get(v, ("", "rtn"))[1] != "rtn" for v in b.variants):
            calibration = calibration_ids(b.models[0], tokenizer, QuantizeOptions(
                data=b.data, calibration_tokens=b.calibration_tokens), model.config.block_size, log)
    else:
        torch.manual_seed(0)
        tokenizer = GPT2Tokenizer()
        model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024,
                              vocab_size=tokenizer.vocab_size)).eval()
        ids, calibration = None, None
        skipped = [v for v in b.variants if _SCHEMES.get(v, ("", "rtn"))[1] != "rtn"]
        if skipped:
            log(f"skipped {', '.join(skipped)}: calibration needs a trained model and its text (give MODEL)")
        b = dataclasses.replace(b, variants=tuple(v for v in b.variants if v not in skipped))
    rows: list[Row] = []
    engines: dict[str, Callable[[torch.Tensor, int], int]] = {}
    settings: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tinygpt-bench-compress-") as tmp:
        for name in b.variants:
            m, dtype = _variant(model, name, b, calibration)
            lm = TinyGPT(m, tokenizer, torch.device("cpu"), dtype)
            rows.append(Row(name, _megabytes(m, Path(tmp)), {}, _bpb(lm, ids) if ids is not None else None))
            engines[name] = _decoder(m, dtype)
            log(f"{name}: {rows[-1].megabytes:.1f} MB" + (f", {rows[-1].bpb:.4f} bits per byte" if ids else ""))
        for extra in b.models[1:]:
            opened = open_source(extra)
            lm = TinyGPT(opened.model.eval(), opened.tokenizer, torch.device("cpu"), torch.float32)
            rows.append(Row(Path(extra).name, opened.path.stat().st_size / 1e6, {},
                            _bpb(lm, ids) if ids is not None else None))
            engines[rows[-1].name] = _decoder(lm.model, torch.float32)
        if b.llama_cpp:
            if importlib.util.find_spec("llama_cpp") is None:
                log("llama.cpp: skipped, llama-cpp-python is not installed (pip install llama-cpp-python gguf)")
            else:
                from ..interop.gguf_file import require_gguf_shape

                if (why := require_gguf_shape(model.config)) is not None:
                    log(f"llama.cpp: skipped, {why}")
                else:
                    for kind in LLAMA:
                        engine, said = _llama_cpp(model, kind, Path(tmp))
                        engines[f"llama.cpp {kind}"], settings[f"llama.cpp {kind}"] = engine, said
                        size = (Path(tmp) / f"model-{kind}.gguf").stat().st_size / 1e6
                        rows.append(Row(f"llama.cpp {kind}", size, {}, None))
        by_name = {r.name: r for r in rows}
        for name, batch, speed in time_engines(engines, b.batch_sizes, b.prompt_tokens, b.max_new_tokens, b.rounds,
                                               model.config.vocab_size):
            by_name[name].speed[batch] = speed
    _report(b, model, rows, log)
    for name, said in settings.items():
        log(f"{name}: {said}")
    return rows


def _decoder(model: GPT, dtype: torch.dtype) -> Callable[[torch.Tensor, int], int]:
    def go(prompts: torch.Tensor, n: int) -> int:
        return sum(len(r) for r in decode(model, prompts.tolist(), n, greedy=True, dtype=dtype))
    return go


def _report(b: CompressBench, model: GPT, rows: list[Row], log: Callable[[str], None]) -> None:
    base = next((r for r in rows if r.name == "fp32"), None)
    log(f"{model.num_params() / 1e6:.1f}M-parameter model; greedy decoding, prompt {b.prompt_tokens}, "
        f"{b.max_new_tokens} new tokens, tokens/s median of {b.rounds} rounds, {torch.get_num_threads()} threads; "
        f"{cpu_name()}")
    log(f"{'variant':<22}{'MB':>9}" + "".join(f"{'batch ' + str(bs):>10}" for bs in b.batch_sizes)
        + f"{'bits/byte':>11}{'vs fp32':>9}")
    for r in rows:
        speed = "".join(f"{r.speed[bs]:>10.1f}" if bs in r.speed else f"{'-':>10}" for bs in b.batch_sizes)
        bpb = f"{r.bpb:>11.4f}" if r.bpb is not None else f"{'-':>11}"
        change = f"{(r.bpb / base.bpb - 1) * 100:>+8.2f}%" if r.bpb is not None and base and base.bpb else f"{'':>9}"
        log(f"{r.name:<22}{r.megabytes:>9.1f}{speed}{bpb}{change}")
    speeds = {r.name: r.speed for r in rows}
    for ours, theirs in (("int8", "llama.cpp q8_0"), ("int4", "llama.cpp q4_0"), ("int4-gptq", "llama.cpp q4_0")):
        if 1 in speeds.get(ours, {}) and 1 in speeds.get(theirs, {}):
            log(f"batch 1: tinygpt {ours} / {theirs} = {speeds[ours][1] / speeds[theirs][1]:.2f}")
