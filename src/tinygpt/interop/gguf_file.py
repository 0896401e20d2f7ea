"""A GGUF file for llama.cpp: GPT-2 architecture, f32 / f16 / q8_0 / q4_0, through the ``gguf`` library.

Metadata and tensor names are the ones llama.cpp's own converter writes for GPT-2
(``convert_hf_to_gguf.py``): ``gpt2.*`` hyper-parameters, a byte-level BPE vocabulary
(``tokenizer.ggml.model = gpt2``, tokens in GPT-2's printable-byte spelling, merges), and
``token_embd`` / ``blk.N.attn_qkv`` ... tensors with the head written as ``output`` even
when tied. Our linears are (out, in) like llama.cpp's, so nothing is transposed. As in
llama.cpp's converter, vectors (norms, biases) and the position table stay f32; other
matrices become f16, q8_0 or q4_0 (those two need rows a multiple of 32 wide; others stay
f16). q8_0 is the gguf library's quantizer. q4_0 is tinygpt's own int4 (tinygpt.quant, groups
of 32: the same rule and layout, tested bit for bit against the gguf library's), so a run
quantized to int4 with groups of 32 goes into the file as it is, without rounding again;
other quantized layers are written from their dequantized weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import quant
from ..errors import TinyGPTError
from ..model import GPTConfig
from ..tokenizer import BPETokenizer, GPT2Tokenizer, Tokenizer, gpt2_files
from . import hf

TYPES = ("f32", "f16", "q8_0", "q4_0")
_BLOCK = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
          "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_TOP = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm",
        "lm_head": "output"}


def gguf_name(key: str) -> str:
    """Our parameter name -> llama.cpp's GPT-2 tensor name."""
    module, param = key.rsplit(".", 1)
    if module.startswith("transformer.h."):
        _, _, n, rest = module.split(".", 3)
        return f"blk.{n}.{_BLOCK[rest]}.{param}"
    return f"{_TOP[module]}.{param}"


def _vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    """(tokens by id in byte-level spelling, merges "a b", special ids) of a byte-level BPE."""
    if isinstance(tokenizer, GPT2Tokenizer):
        merges_path, encoder_path = gpt2_files()
        encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
        merges = [m for m in merges_path.read_text(encoding="utf-8").splitlines()[1:] if m]
        special = [tokenizer.eot_id]
    elif isinstance(tokenizer, BPETokenizer):
        spec = json.loads(tokenizer._tok.to_str())
        encoder = tokenizer._tok.get_vocab(with_added_tokens=True)
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        special = [encoder[s] for s in tokenizer.special_tokens]
    else:
        raise TinyGPTError(f"llama.cpp has no {tokenizer.kind}-level tokenizer; GGUF export needs a run trained with "
                           "--tokenizer gpt2 or --tokenizer bpe (or export --to hf)")
    tokens = [""] * len(encoder)
    for token, i in encoder.items():
        tokens[i] = token
    return tokens, merges, special


def require_gguf_shape(cfg: GPTConfig) -> str | None:
    """Why a model of this shape cannot go into a GGUF file, or None."""
    try:
        hf.require_gpt2_shape(cfg, "GGUF (llama.cpp's GPT-2)")
    except TinyGPTError as e:
        return str(e)
    return None


def q4_0_blocks(codes: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """int4 codes (N, K) 0..15 and fp16 scales (N, K/32) -> q4_0's bytes (N, K/32 * 18): per
    block of 32, the scale, then 16 bytes holding values j (low nibble) and j + 16 (high)."""
    blocks = codes.to(torch.uint8).reshape(-1, 32).numpy()
    packed = blocks[:, :16] | (blocks[:, 16:] << 4)
    d = scales.to(torch.float16).reshape(-1, 1).numpy().view(np.uint8)
    return np.concatenate([d, packed], axis=1).reshape(codes.shape[0], -1)


def export(cfg: GPTConfig, tensors: dict[str, torch.Tensor], tokenizer: Tokenizer, out: str | Path, *,
           dtype: str = "f16", force: bool = False, name: str = "tinygpt",
           int4: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """Write ``out`` (a .gguf file) atomically. ``int4``: weights already quantized to q4_0's
    grid, {name: (codes (N, K), fp16 scales (N, K/32))}, written as they are for q4_0.

    llama.cpp's GPT-2 graph always computes GELU in its tanh form; a model trained with
    exact GELU (tinygpt's default) runs there with activations within 4.7e-4 of its own,
    below the rounding of the f16 and q8_0 types."""
    try:
        import gguf
        from gguf.quants import quantize
    except ImportError:
        raise TinyGPTError("GGUF export needs the gguf library: pip install gguf") from None
    from ..checkpoint import atomic_path, output_file

    if dtype not in TYPES:
        raise TinyGPTError(f"unknown GGUF type {dtype!r}; choose one of: {', '.join(TYPES)}")
    hf.require_gpt2_shape(cfg, "GGUF (llama.cpp's GPT-2)")
    tokens, merges, special = _vocabulary(tokenizer)
    if len(tokens) != cfg.vocab_size:
        raise TinyGPTError(f"the tokenizer has {len(tokens)} tokens but the model {cfg.vocab_size}; the run is "
                           "inconsistent")
    out = output_file(out, force=force, flag="--to gguf")
    Q = gguf.GGMLQuantizationType
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    int4 = int4 or {}
    named = {k: v for k, v in tensors.items()}
    named.setdefault("lm_head.weight", named["transformer.wte.weight"])  # llama.cpp wants the head written
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "gpt2")
        w.add_name(name)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.hidden(0))
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.norm_eps)
        w.add_file_type(file_type)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                           for i in range(len(tokens))])
        w.add_token_merges(merges)
        if tokenizer.eot_id is not None:
            w.add_bos_token_id(tokenizer.eot_id)
            w.add_eos_token_id(tokenizer.eot_id)
        for key, t in named.items():
            if key in ("transformer.wte.weight", "lm_head.weight"):
                t = t[:cfg.vocab_size]  # drop the rows that pad the table to a multiple of 64
            data = t.detach().float().cpu().numpy()
            # llama.cpp's converter keeps vectors and the position table in f32 whatever the type.
            if data.ndim == 1 or dtype == "f32" or key == "transformer.wpe.weight":
                w.add_tensor(gguf_name(key), data)
            elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
                w.add_tensor(gguf_name(key), quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
            elif dtype == "q4_0" and data.shape[-1] % 32 == 0:
                codes, scales = int4[key] if key in int4 else quant.quantize_int4(torch.from_numpy(data), 32)
                if key in ("transformer.wte.weight", "lm_head.weight"):
                    codes, scales = codes[:cfg.vocab_size], scales[:cfg.vocab_size]
                w.add_tensor(gguf_name(key), q4_0_blocks(codes, scales), raw_dtype=Q.Q4_0)
            else:
                w.add_tensor(gguf_name(key), data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
