"""Parameter-efficient fine-tuning on a GPT: LoRA, bottleneck adapters and soft prompts.

Each method adds a few tensors to a built :class:`~tinygpt.model.GPT` (in place) and
freezes everything else; the base weights are never touched, so the adapter tensors
alone (``adapter.safetensors``) plus the base make the fine-tuned model. Model math
only: the run directory, the base's provenance and training live elsewhere.

- ``lora`` (Hu et al. 2021): each targeted linear map W x becomes W x + (alpha / r) B A x
  with A (r, in), B (out, r). B starts at zero, so before training the model computes
  exactly what the base does. Built with ``peft`` (its LoRA layers wrap our ``nn.Linear``
  subclass as they would any Linear); :func:`merge` folds B A into the weights.
- ``adapter`` (Houlsby et al. 2019): after the attention and after the MLP of every
  block, h + up(gelu(down(h))) with a ``bottleneck``-wide middle. ``up`` starts at zero:
  identity at first. peft has no bottleneck adapter, so it is written here (a forward
  hook on the two sublayers: model.py stays as it is).
- ``prompt`` (Lester et al. 2021): ``soft_prompt_tokens`` learned vectors read before every
  sequence (:class:`SoftPrompt`), initialised from the embeddings of ``soft_prompt_init`` text
  (or of random vocabulary tokens); with text, the model at first computes exactly what
  the base does reading that text before the input. The context left for the input
  shrinks by ``soft_prompt_tokens``. Their keys and values are a prefix of the KV cache (see
  tinygpt.kvcache), supplied to every forward by a pre-hook on the model.

Targets are named by role (``qkv``, ``out``, ``mlp_in``, ``mlp_out``, ``head``), not by module path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_choices, opt
from .errors import TinyGPTError
from .kvcache import KVCache
from .model import GPT, GPTConfig

METHODS = ("lora", "adapter", "prompt")
# A role -> the module path suffix it names in every block (or the head).
LORA_TARGETS = {"qkv": "attn.c_attn", "out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj",
                "head": "lm_head"}
_ADAPTER = "default"  # peft's name for the one adapter a model carries


def parse_targets(text: str | list | tuple) -> tuple[str, ...]:
    """'qkv,out' (or a list) -> ('qkv', 'out'), each a known role; 'all' is every role."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if names == ["all"]:
        return tuple(LORA_TARGETS)
    bad = [t for t in names if t not in LORA_TARGETS]
    if bad or not names:
        raise ValueError(f"unknown LoRA target(s) {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(LORA_TARGETS)} or all, comma-separated")
    return tuple(dict.fromkeys(names))


@dataclass
class AdapterConfig:
    """Which parameter-efficient method, and its shape. Saved as the run's adapter.json."""
    method: str = opt("lora", "lora (low-rank updates), adapter (bottleneck layers) or prompt (soft prompt)",
                      choices=METHODS)
    lora_rank: int = opt(8, "LoRA rank r")
    lora_alpha: float = opt(16.0, "LoRA alpha: the update is scaled by alpha / r")
    lora_dropout: float = opt(0.0, "dropout on the LoRA branch's input")
    lora_targets: str = opt("qkv,out", "linear maps LoRA adapts, comma-separated: qkv (attention q/k/v), out "
                                       "(attention output), mlp_in, mlp_out, head; or all")
    bottleneck: int = opt(64, "adapter: width of the bottleneck")
    # (Named soft_prompt_*: --prompt-tokens is a prompt's length wherever tokens are generated.)
    soft_prompt_tokens: int = opt(16, "prompt: number of virtual tokens", aliases=("--prompt-tokens",))
    soft_prompt_init: str | None = opt(None, "prompt: text whose token embeddings start the soft prompt (cut or "
                                             "repeated to --soft-prompt-tokens; default: random vocabulary tokens)",
                                       aliases=("--prompt-init",))

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("lora_rank", "bottleneck", "soft_prompt_tokens"):
            if getattr(self, name) < 1:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise TinyGPTError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        try:
            self.lora_targets = ",".join(parse_targets(self.lora_targets))
        except ValueError as e:
            raise TinyGPTError(f"--lora-targets: {e}") from None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank


class Bottleneck(nn.Module):
    """h -> h + up(gelu(down(h))): C -> m -> C, zero-initialised ``up`` (identity at first)."""

    def __init__(self, n_embd: int, width: int):
        super().__init__()
        self.down = nn.Linear(n_embd, width)
        self.up = nn.Linear(width, n_embd)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        return h + self.up(F.gelu(self.down(h)))


class SoftPrompt(nn.Module):
    """Prompt tuning (Lester et al. 2021): ``n`` learned vectors in the embedding space that
    the model reads before every sequence, as if they were the embeddings of n tokens at
    positions 0..n-1. Their keys and values do not depend on the input, so inference
    computes them once per weight version (training recomputes them, for the gradients)."""

    def __init__(self, n: int, n_embd: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, n_embd))  # (n, C)
        self._memo: tuple[tuple, KVCache] | None = None

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    def keys_values(self, model: GPT) -> KVCache:
        """Every layer's keys and values of the prompt, read alone at positions 0..n-1 (nothing
        before it to attend): a one-row cache of n positions, in the embeddings' dtype."""
        w = self.weight
        dtype = model.transformer.wte.weight.dtype
        autocast_on = torch.is_autocast_enabled(w.device.type)
        key = (w._version, w.data_ptr(), dtype, autocast_on and torch.get_autocast_dtype(w.device.type))
        memo = not torch.is_grad_enabled() and not self.training  # dropout and gradients: compute afresh
        if memo and self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        cache = KVCache(model.config, 1, self.n, device=w.device, dtype=dtype, windows=False)  # every key is read
        model.forward(w[None].to(dtype), cache=cache)  # forward, not __call__: no prefix before the prefix
        self._memo = (key, cache) if memo else None
        return cache


def _supply_prompt(model: GPT, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A forward pre-hook: the soft prompt's keys and values become the prefix of the
    forward's cache (of a cache that stores nothing, when the caller gave none)."""
    prefix = model.prompt.keys_values(model)
    if kwargs.get("cache") is None:
        kwargs["cache"] = KVCache.prefix_only(model.config, prefix)
    else:
        kwargs["cache"].prefix = prefix
    return args, kwargs


def _add_bottleneck(sublayer: nn.Module, adapter: Bottleneck) -> None:
    """Pass ``sublayer``'s output through ``adapter`` (before the block adds it to the residual)."""
    sublayer.register_forward_hook(lambda module, args, out: adapter(out))


def attach(model: GPT, cfg: AdapterConfig, prompt_ids: list[int] | None = None) -> GPT:
    """Add ``cfg``'s adapter to ``model`` in place and freeze every base parameter.

    ``prompt_ids``: for ``prompt``, the token ids of ``cfg.soft_prompt_init`` (tokenizing is the
    caller's); without them the prompt starts from random vocabulary embeddings (drawn
    from the global generator, like every other initialisation)."""
    if getattr(model, "adapter_config", None) is not None:
        raise TinyGPTError("this model already carries an adapter; merge it first (tinygpt merge)")
    c = model.config
    wte = model.transformer.wte.weight
    if cfg.method == "prompt":  # checked before anything changes
        if cfg.soft_prompt_tokens >= c.block_size:
            raise TinyGPTError(f"--soft-prompt-tokens {cfg.soft_prompt_tokens} leaves no context: the base reads "
                               f"{c.block_size} tokens; use fewer than {c.block_size} (a few to a few dozen)")
        if prompt_ids is not None and (not prompt_ids or not all(0 <= i < c.vocab_size for i in prompt_ids)):
            raise TinyGPTError("--soft-prompt-init gives no token ids of the vocabulary; give some text, or leave it out "
                               "for a random start")
    model.requires_grad_(False)
    if cfg.method == "lora":
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise TinyGPTError("LoRA is built with peft, which is not installed: pip install 'tinygpt[finetune]' "
                               "(or pip install peft)") from None

        targets = [LORA_TARGETS[t] for t in parse_targets(cfg.lora_targets)]
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                           target_modules=targets), model, adapter_name=_ADAPTER)
    elif cfg.method == "adapter":
        for block in model.transformer.h:
            block.attn_adapter = Bottleneck(c.n_embd, cfg.bottleneck).to(wte.device, wte.dtype)
            block.mlp_adapter = Bottleneck(c.n_embd, cfg.bottleneck).to(wte.device, wte.dtype)
            _add_bottleneck(block.attn, block.attn_adapter)
            _add_bottleneck(block.mlp, block.mlp_adapter)
    else:
        n = cfg.soft_prompt_tokens
        ids = torch.tensor(prompt_ids, dtype=torch.long) if prompt_ids else torch.randint(c.vocab_size, (n,))
        ids = ids.repeat(-(-n // len(ids)))[:n].to(wte.device)
        model.prompt = SoftPrompt(n, c.n_embd).to(wte.device, wte.dtype)
        with torch.no_grad():
            model.prompt.weight.copy_(wte[ids])
        # The position tables stay whole; the input gets what the prompt leaves of them.
        model.config = dataclasses.replace(c, block_size=c.block_size - n)
        model.register_forward_pre_hook(_supply_prompt, with_kwargs=True)
    for p in adapter_parameters(model, cfg).values():
        p.requires_grad_(True)
    model.adapter_config = cfg
    return model


def attached(model: nn.Module) -> AdapterConfig | None:
    """The adapter ``model`` carries, if any."""
    return getattr(model, "adapter_config", None)


def adapter_parameters(model: GPT, cfg: AdapterConfig | None = None) -> dict[str, nn.Parameter]:
    """The adapter's own parameters by their module names (peft's LoRA names carry '.default')."""
    cfg = cfg or attached(model)
    if cfg is None:
        return {}
    marks = {"lora": (".lora_A.", ".lora_B."), "adapter": ("_adapter.",), "prompt": ("prompt.",)}[cfg.method]
    return {n: p for n, p in model.named_parameters() if any(m in f".{n}" for m in marks)}


def adapter_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The adapter's tensors as saved: LoRA in peft's file naming (``...c_attn.lora_A.weight``)."""
    return {_saved_name(n): p.detach().to("cpu").contiguous() for n, p in adapter_parameters(model).items()}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _saved_name(name: str) -> str:
    return name.replace(f".{_ADAPTER}.", ".")


def load_adapter_tensors(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Put saved adapter ``tensors`` into ``model``'s adapter, checking they are exactly its tensors."""
    params = {_saved_name(n): p for n, p in adapter_parameters(model).items()}
    missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which this adapter does not"
        raise TinyGPTError(f"{source} {what}: it does not match adapter.json; the run directory is damaged")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise TinyGPTError(f"{source}: {name} is {tuple(tensors[name].shape)} but adapter.json implies "
                                   f"{tuple(p.shape)}; the run directory is damaged")
            p.copy_(tensors[name])


def state_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` must hold: its adapter's tensors, or (no adapter) all weights."""
    from .checkpoint import weight_tensors

    return adapter_tensors(model) if attached(model) else weight_tensors(model)


def load_state_tensors(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """The inverse of :func:`state_tensors`."""
    from .checkpoint import assign_weights

    if attached(model):
        load_adapter_tensors(model, tensors, source)
    else:
        assign_weights(model, tensors, source)


def lora_parameter_count(config: GPTConfig, cfg: AdapterConfig) -> int:
    """r (in + out) per adapted linear map: the LoRA formula, from the shapes alone."""
    c, r = config, cfg.lora_rank
    qkv_out = c.n_embd + 2 * c.kv_heads * c.head_size
    fc_out = 2 * c.hidden_size if c.mlp == "swiglu" else c.hidden_size
    per_block = {"qkv": c.n_embd + qkv_out, "out": 2 * c.n_embd, "mlp_in": c.n_embd + fc_out,
                 "mlp_out": c.hidden_size + c.n_embd}
    roles = parse_targets(cfg.lora_targets)
    total = sum(r * per_block[t] * c.n_layer for t in roles if t != "head")
    return total + (r * (c.n_embd + c.padded_vocab_size) if "head" in roles else 0)


def base_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The base weights under their plain names (peft's ``base_layer.`` dropped), adapters left out."""
    from .checkpoint import weight_tensors

    adapter = set(adapter_parameters(model))
    return {n.replace(".base_layer.", "."): t for n, t in weight_tensors(model).items() if n not in adapter}


def merge(model: GPT) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(GPTConfig, weights) of one plain model computing what ``model`` (base + LoRA) computes:
    each adapted weight W becomes W + (alpha / r) B A, by peft's own delta.

    A LoRA on a tied head changes the head but not the embedding, so the merged model
    gets its own head (``tie_embeddings`` off). Bottleneck adapters are nonlinear and soft
    prompts are extra inputs: neither folds into the weights."""
    cfg = attached(model)
    if cfg is None or cfg.method != "lora":
        what = "carries no adapter" if cfg is None else f"is {_article(cfg.method)} {cfg.method} fine-tune"
        raise TinyGPTError(f"the model {what}; only LoRA folds into the weights (bottleneck adapters are nonlinear, "
                           "soft prompts are extra inputs): sample, eval and chat load such a run as it is")
    from peft.tuners.lora import LoraLayer

    config = model.config
    tensors = base_tensors(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                key = f"{name}.weight"
                # A tied head's weight is stored once, as the embedding's.
                weight = tensors[key] if key in tensors else tensors["transformer.wte.weight"]
                tensors[key] = (weight.float() + module.get_delta_weight(_ADAPTER).float().cpu()).to(weight.dtype)
    if config.tie_embeddings and "head" in parse_targets(cfg.lora_targets):
        config = dataclasses.replace(config, tie_embeddings=False)
    elif config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    return config, tensors
