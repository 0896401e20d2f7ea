"""``tinygpt bench``: speed, measured side by side (never by tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..bench.compress import CompressBench
from ..bench.compress import run as bench_compress
from ..bench.generate import GenerateBench
from ..bench.generate import run as bench_generate
from ..bench.serve import ServeBench
from ..bench.serve import run as bench_serve
from ..bench.train import TrainBench
from ..bench.train import run as bench_train
from ..checkpoint import atomic_write_text
from ..config import add_command, add_group, section
from ..device import RuntimeConfig
from ..options import OutputOptions


@dataclass
class BenchGenerateCommand:
    bench: GenerateBench = section(GenerateBench, only=("n_layer", "n_head", "n_embd", "prompt_tokens",
                                                        "max_new_tokens", "batch_sizes", "rounds", "engines", "busy"))
    runtime: RuntimeConfig = section(RuntimeConfig, only=("threads",))


@dataclass
class BenchServeCommand:
    bench: ServeBench = field(default_factory=ServeBench)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("threads",))


@dataclass
class BenchCompressCommand:
    bench: CompressBench = field(default_factory=CompressBench)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("threads",))


@dataclass
class BenchTrainCommand:
    bench: TrainBench = field(default_factory=TrainBench)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("threads",))
    output: OutputOptions = section(OutputOptions, only=("json",))


def add_parser(sub) -> None:
    kinds = add_group(sub, "bench", help="measure speed side by side (train: tokens/s and MFU; generate: decoding)")
    add_command(kinds, "generate", BenchGenerateCommand, run_generate,
                help="decoding tokens/s: tinygpt vs transformers vs llama.cpp, same weights",
                description="Greedy decoding tokens/s of a GPT-2-shaped model with random weights (the shape: "
                            "--n-layer, --n-head, --n-embd) for each batch size, in tinygpt (fp32 and bf16 "
                            "weights), transformers and llama.cpp (on tinygpt's GGUF export), in alternating "
                            "rounds.")
    add_command(kinds, "serve", BenchServeCommand, run_serve,
                help="an OpenAI-compatible server under concurrent load: tinygpt's vs llama.cpp's",
                description="Start tinygpt serve (and llama-cpp-python's server, where installed) on 127.0.0.1 with "
                            "the same random GPT-2-shaped weights, one at a time, and load each with 1, 2, 4, 8 and "
                            "16 concurrent streaming clients: requests/s, output tokens/s, time to first token and "
                            "per output token (p50/p99), failures; --soak N samples the server's memory.")
    add_command(kinds, "compress", BenchCompressCommand, run_compress,
                help="size, decoding speed and bits per byte of a model in fp32, bf16, int8, int4 and more",
                description="One table for MODEL's smaller forms (fp32, bf16, int8, int4 by three roundings, "
                            "dynamic int8, and further runs given: QAT, pruned): file size, greedy tokens/s per "
                            "batch size, bits per byte on held-out text; llama.cpp q8_0 / q4_0 on the same "
                            "weights where installed. Without MODEL: a random GPT-2-small, speed only.")
    add_command(kinds, "train", BenchTrainCommand, run_train,
                help="training tokens/s, MFU against the measured matmul peak, loop overhead, "
                     "and a plain nanoGPT-style fp32 loop of the same shape",
                description="Training tokens/s of a preset's model for each --dtype (auto: every format this "
                            "device could pick, side by side), MFU against the matmul peak measured at the "
                            "model's shapes, the memory a step holds, a plain nanoGPT-style fp32 loop, and what "
                            "the tinygpt train loop costs around a step.")


def run_generate(cmd: BenchGenerateCommand) -> int:
    bench_generate(cmd.bench, log=print)
    return 0


def run_compress(cmd: BenchCompressCommand) -> int:
    from ..console import log

    bench_compress(cmd.bench, log=log)
    return 0


def run_train(cmd: BenchTrainCommand) -> int:
    report = bench_train(cmd.bench, log=print)
    if cmd.output.json:
        atomic_write_text(cmd.output.json, json.dumps(report, indent=1) + "\n")
    return 0


def run_serve(cmd: BenchServeCommand) -> int:
    from ..console import log

    bench_serve(cmd.bench, log=log)
    return 0
