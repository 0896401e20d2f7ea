"""``tinygpt prepare``: tokenize a corpus into token shards, in parallel, for ``train --data DIR``."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import add_command, like, opt, parse_count, section
from ..console import log
from ..data import DataConfig
from ..data.shards import DEFAULT_SHARD_TOKENS, prepare_corpus
from ..errors import TinyGPTError
from ..options import OutputOptions
from ..train.config import TrainConfig


@dataclass
class PrepareCommand:
    data: str = opt(None, "the text: a file, a folder, a glob or a built-in corpus (shakespeare, names)",
                    positional=True, metavar="DATA")
    output: OutputOptions = section(OutputOptions, only=("out",))
    tokenizer: str = like(DataConfig, "tokenizer")
    bpe_vocab_size: int = like(DataConfig, "bpe_vocab_size")
    encoding: str = like(DataConfig, "encoding")
    workers: int | None = opt(None, "processes that encode (gpt2 and bpe already use every core in one)",
                              shown="one per core for char, else 1")
    shard_tokens: int = opt(DEFAULT_SHARD_TOKENS, "tokens per shard file (e.g. 100M)", parse=parse_count)
    progress: bool = like(TrainConfig, "progress")


def add_parser(sub) -> None:
    add_command(sub, "prepare", PrepareCommand, run, help="tokenize a corpus into token shards for train --data DIR",
                description="Tokenize DATA once, in parallel, into a folder of token shards with an index and the "
                            "tokenizer; `tinygpt train --data DIR` then trains on it without reading the text again, "
                            "however big it is.")


def run(cmd: PrepareCommand) -> int:
    if not cmd.output.out:
        raise TinyGPTError("say where the shards go: tinygpt prepare DATA --out DIR (a new or empty folder)")
    cfg = DataConfig(data=cmd.data, tokenizer=cmd.tokenizer, bpe_vocab_size=cmd.bpe_vocab_size,
                     encoding=cmd.encoding)
    prepare_corpus(cfg, cmd.output.out, workers=cmd.workers, shard_tokens=cmd.shard_tokens, progress=cmd.progress,
                   log=log)
    return 0
