"""``tinygpt learn bpe``: train the from-scratch byte-level BPE and set it beside the real ones."""

from __future__ import annotations

import argparse

from .common import log

# --split none rescans the whole text for every merge (~0.1 s per 100k characters on one
# core), so by default it trains on the first 100k characters: ~1000 merges in ~15 s.
BASIC_MAX_CHARS = 100_000
EXAMPLE = "The quick brown fox can't jump 32.5 feet! Ünïcödé, 東京 and 🙂.<|endoftext|>"


def add_parser(sub) -> None:
    p = sub.add_parser("bpe", help="byte-level BPE from scratch, checked against tokenizers and GPT-2",
                       description="Train the byte-level BPE tokenizer written plainly in tinygpt.learn.bpe_train "
                                   "on a text, then compare it with the tokenizers library trained on the same "
                                   "settings (merge by merge) and with GPT-2's tokenizer (bytes per token). Writes "
                                   "the merges (bpe.json) and a readable vocabulary (vocab.txt).")
    p.add_argument("--data", default="shakespeare", metavar="FILE|DIR|shakespeare",
                   help="the training text: a file, a folder, a glob or a built-in corpus (default shakespeare)")
    p.add_argument("--vocab-size", type=int, default=1024,
                   help="ids in all: 256 bytes + merges + special tokens (default 1024)")
    p.add_argument("--split", choices=("gpt2", "none"), default="gpt2",
                   help="gpt2: merge only inside the chunks of GPT-2's regex (words, numbers, ...); "
                        "none: the lecture's basic tokenizer, merging across the whole text (default gpt2)")
    p.add_argument("--special", action="append", metavar="TOKEN",
                   help="a special token, cut out of the text and given its own id (repeatable; "
                        "default <|endoftext|>)")
    p.add_argument("--max-chars", type=int, metavar="N",
                   help=f"train on the first N characters (default: all with --split gpt2, "
                        f"{BASIC_MAX_CHARS} with --split none, whose every merge rescans the text)")
    p.add_argument("--out", default="learn/bpe", help="folder for bpe.json and vocab.txt (default learn/bpe)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.files import read_text
    from ..errors import TinyGPTError
    from ..learn.bpe import render
    from ..learn.bpe_compare import lesson
    from ..tokenizer import GPT2_EOT

    max_chars = args.max_chars if args.max_chars is not None else BASIC_MAX_CHARS if args.split == "none" else None
    if max_chars is not None and max_chars < 1:
        raise TinyGPTError(f"--max-chars must be a positive number of characters, got {max_chars}")
    text = read_text(args.data, max_chars=max_chars, log=log)
    result = lesson(text, args.vocab_size, args.split, args.special or [GPT2_EOT], log=log)
    bpe, merges = result.bpe, result.merges

    def show(pairs, start):
        return "\n".join(f"  {start + n:5d}  {render(a)} + {render(b)} -> {render(a + b)}"
                         for n, (a, b) in enumerate(pairs))

    print(f"trained {len(merges)} merges on {result.text_bytes / 1e6:.2f} MB of text "
          f"(split {args.split}) in {result.seconds:.1f}s")
    print(f"first merges:\n{show(merges[:8], 256)}")
    print(f"last merges:\n{show(merges[-8:], 256 + max(len(merges) - 8, 0))}")
    rate = result.bytes_per_token
    print(f"bytes per token on this text: ours {rate['ours']:.3f}, tokenizers library {rate['tokenizers']:.3f} "
          f"(same vocab size), GPT-2 {rate['gpt2']:.3f} (50257 tokens)")
    ids = bpe.encode(EXAMPLE, allowed_special="all")
    print(f"example: {len(EXAMPLE.encode('utf-8'))} bytes -> {len(ids)} tokens: "
          + " ".join(render(bpe.vocab[i]) for i in ids))
    agree, theirs = result.agree, len(result.library_merges)
    if agree == len(merges) == theirs:
        print(f"merges equal to the tokenizers library's: all {agree}, in the same order")
    else:
        print(f"merges equal to the tokenizers library's: the first {agree} of {len(merges)} (it made {theirs})")
    for path in bpe.save(args.out):
        log(f"wrote {path}")
    return 0
