"""Hugging Face model directories and hub names -> a tinygpt model and tokenizer.

A directory as ``save_pretrained`` writes it (``config.json`` + ``model.safetensors``,
sharded safetensors with an index, or ``pytorch_model.bin``, read with
``weights_only=True``), for the GPT-2 and Llama architectures, with tensor names with or
without the ``transformer.`` / ``model.`` prefix (OpenAI's original ``gpt2`` upload has
none). The tokenizer is the directory's ``tokenizer.json``, or for a 50257-token GPT-2
without one, GPT-2's BPE shipped with tinygpt (offline). A hub name such as ``gpt2`` or
``HuggingFaceTB/SmolLM2-135M`` is downloaded once into the hub's own cache.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ..checkpoint import (
    check_no_links_out,
    check_tensors_hold,
    first_line,
    in_directory,
    load_weights,
)
from ..errors import TinyGPTError
from ..model import GPTConfig
from ..tokenizer import BPETokenizer, GPT2Tokenizer, Tokenizer
from . import hf

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
DAMAGED = "the model directory is damaged: download or save it again"
PICKLE = "pytorch_model.bin"
TOKENIZER = "tokenizer.json"
_FAMILIES = {"gpt2": (hf.gpt2_config_from_hf, hf.gpt2_weights_from_hf, "transformer."),
             "llama": (hf.llama_config_from_hf, hf.llama_weights_from_hf, "model."),
             "mixtral": (hf.mixtral_config_from_hf, hf.mixtral_weights_from_hf, "model.")}


def is_hf_dir(path: str | Path) -> bool:
    """A directory with an HF config.json (one with a ``model_type``)."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def looks_like_hub_name(source: str) -> bool:
    """``gpt2`` or ``owner/name``: not a path that exists, no path syntax beyond one slash."""
    return (not Path(source).exists() and source.count("/") <= 1 and not source.startswith((".", "/", "~"))
            and all(part and part.replace("-", "").replace("_", "").replace(".", "").isalnum()
                    for part in source.split("/")))


def download(name: str) -> Path:
    """The hub repository ``name`` in the local hub cache (downloaded once; offline, the cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise TinyGPTError(f"{name!r} is not a run directory or a local Hugging Face directory, and loading it "
                           "from the hub needs huggingface_hub: pip install 'tinygpt[hub]'") from None
    patterns = [CONFIG, "*.safetensors", SAFETENSORS_INDEX, TOKENIZER, "tokenizer_config.json",
                "generation_config.json"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated repo: the hub's own words, in one line
        raise TinyGPTError(f"cannot get {name!r} from the Hugging Face hub ({first_line(e)}); check the name and the "
                           f"network, or pass a local directory (there is no directory {name} here)") from None


def read_config(directory: Path) -> tuple[dict, str, GPTConfig]:
    """(HF config dict, family, our GPTConfig) of an HF directory."""
    try:
        raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyGPTError(f"{directory / CONFIG} is unreadable ({e}); point at a Hugging Face model directory") \
            from None
    family = raw.get("model_type") if isinstance(raw, dict) else None
    if family not in _FAMILIES:
        raise TinyGPTError(f"{directory} holds a {family!r} model; tinygpt loads the gpt2, llama and mixtral "
                           "architectures")
    try:
        return raw, family, _FAMILIES[family][0](raw)
    except (TinyGPTError, TypeError, ValueError) as e:  # a value of the wrong kind: one line, not a traceback
        raise TinyGPTError(f"{directory / CONFIG}: {first_line(e)}; the config is damaged") from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The HF checkpoint's tensors (safetensors memory-mapped; a .bin without unpickling code)."""
    if (directory / SAFETENSORS).is_file():
        return load_weights(directory / SAFETENSORS, DAMAGED)
    if (directory / SAFETENSORS_INDEX).is_file():
        try:
            index = json.loads((directory / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TinyGPTError(f"{directory / SAFETENSORS_INDEX} is unreadable ({first_line(e)}); the directory is "
                               "damaged") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise TinyGPTError(f"{directory / SAFETENSORS_INDEX} has no weight_map of tensor name -> shard file; the "
                               "directory is damaged")
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values()), key=str):
            path = in_directory(directory, shard, SAFETENSORS_INDEX)
            check_no_links_out(directory, [shard], "the model directory")
            if not path.is_file():
                raise TinyGPTError(f"{SAFETENSORS_INDEX} names the shard {shard}, which {directory} lacks; {DAMAGED}")
            out.update(load_weights(path, DAMAGED))
        return out
    if (directory / PICKLE).is_file():
        try:
            return torch.load(directory / PICKLE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's own words advise weights_only=False: running the file's code
            raise TinyGPTError(f"{directory / PICKLE} holds objects other than tensors, and unpickling them could "
                               "run code: refused. Convert it to safetensors where you trust it") from None
        except Exception as e:
            raise TinyGPTError(f"{directory / PICKLE} cannot be read as plain tensors ({first_line(e)}); refusing to "
                               "unpickle it: convert it to safetensors") from None
    raise TinyGPTError(f"{directory} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE}; it is not a "
                       "complete Hugging Face model directory")


def load_model_parts(directory: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor], dict]:
    """(our config, our state dict, the HF config) of an HF model directory."""
    directory = Path(directory)
    check_no_links_out(directory, (CONFIG, SAFETENSORS, SAFETENSORS_INDEX, PICKLE, TOKENIZER), "the model directory")
    raw, family, cfg = read_config(directory)
    sd = read_state_dict(directory)
    check_tensors_hold(cfg.stored_params(), sd, directory)
    prefix = _FAMILIES[family][2]
    # OpenAI's gpt2 upload (and llama.cpp-style exports) name tensors without the prefix.
    sd = {k if k.startswith(prefix) or k == "lm_head.weight" else prefix + k: v for k, v in sd.items()}
    try:
        return cfg, _FAMILIES[family][1](sd, cfg), raw
    except TinyGPTError as e:
        raise TinyGPTError(f"{directory}: {e}") from None


def load_tokenizer(directory: str | Path, raw: dict, vocab_size: int) -> Tokenizer:
    """The directory's tokenizer.json, or GPT-2's own BPE for a 50257-token GPT-2 without one."""
    directory = Path(directory)
    eos = raw.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if (directory / TOKENIZER).is_file():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_file(str(directory / TOKENIZER))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise TinyGPTError(f"{directory / TOKENIZER} is unreadable ({e}); the directory is damaged") from None
        special = [tok.id_to_token(eos)] if isinstance(eos, int) and tok.id_to_token(eos) is not None else []
        return BPETokenizer(tok, special)
    if raw.get("model_type") == "gpt2" and vocab_size == 50257:
        return GPT2Tokenizer()
    raise TinyGPTError(f"{directory} has no {TOKENIZER}; tinygpt needs the model's tokenizer in that format "
                       "(save it with tokenizer.save_pretrained)")


# ---------------------------------------------------------------------------- out


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """A ``tokenizer.json`` (the ``tokenizers`` library's format) giving our tokenizer's ids."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from ..tokenizer import GPT2_EOT, CharTokenizer, gpt2_files

    if isinstance(tokenizer, BPETokenizer):
        return tokenizer._tok.to_str(pretty=True)
    if isinstance(tokenizer, GPT2Tokenizer):
        merges, encoder = gpt2_files()
        tok = HFTokenizer(models.BPE.from_file(str(encoder), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(GPT2_EOT, special=True)])
        return tok.to_str(pretty=True)
    if isinstance(tokenizer, CharTokenizer):
        # One id per character: a word-level vocabulary over single characters, every
        # character its own "word", joined back without separators.
        tok = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok.to_str(pretty=True)
    raise TinyGPTError(f"cannot write a tokenizer.json for the {tokenizer.kind} tokenizer")


def export(cfg: GPTConfig, tensors: dict[str, torch.Tensor], tokenizer: Tokenizer, out: str | Path, *,
           force: bool = False) -> str:
    """Write a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads (and
    llama.cpp's converter and mlx-lm read): GPT-2 for GPT-2-shaped models, Llama for
    RoPE + RMSNorm + SwiGLU ones (Mixtral with experts). Returns the architecture. Each file is written atomically."""
    from ..checkpoint import (
        atomic_write_json,
        atomic_write_text,
        output_dir,
        save_tensors,
    )

    gpt2_shape = cfg.pos_emb == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu"
    llama_shape = cfg.pos_emb == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
    if not (gpt2_shape or llama_shape):
        raise TinyGPTError(f"no Hugging Face architecture has pos_emb={cfg.pos_emb}, norm={cfg.norm}, mlp={cfg.mlp} "
                           "together; export models shaped like GPT-2 (learned, layernorm, gelu) or Llama "
                           "(rope, rmsnorm, swiglu)")
    out = output_dir(out, force=force, flag="--to hf")
    eot = tokenizer.eot_id
    if gpt2_shape:
        config = {**hf.gpt2_config_to_hf(cfg), "n_ctx": cfg.block_size, "bos_token_id": eot, "eos_token_id": eot}
        sd = hf.gpt2_weights_to_hf(tensors, cfg)
        # The names OpenAI's gpt2 upload uses (no "transformer." prefix, no tied head):
        # llama.cpp's converter and mlx-lm expect them; transformers loads both.
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()
              if not (cfg.tie_embeddings and k == "lm_head.weight")}
    else:  # Llama, or Mixtral for a mixture of experts
        to_config, to_weights = ((hf.mixtral_config_to_hf, hf.mixtral_weights_to_hf) if cfg.moe_experts
                                 else (hf.llama_config_to_hf, hf.llama_weights_to_hf))
        config = {**to_config(cfg), "bos_token_id": eot, "eos_token_id": eot}
        sd = to_weights(tensors, cfg)
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
    config["torch_dtype"] = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    out.mkdir(parents=True, exist_ok=True)
    # Shared storage (a tied head) must not be written twice; safetensors wants contiguous copies.
    save_tensors({k: v.contiguous().clone() for k, v in sd.items()}, out / SAFETENSORS, plain={"format": "pt"})
    atomic_write_text(out / TOKENIZER, tokenizer_json(tokenizer))
    special = {"eos_token": tokenizer.decode([eot]), "bos_token": tokenizer.decode([eot])} if eot is not None else {}
    atomic_write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                      "model_max_length": cfg.block_size, **special})
    atomic_write_json(out / CONFIG, config)
    return config["architectures"][0]
