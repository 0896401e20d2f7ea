"""Plain helper functions shared by the tests (fixtures live in conftest.py)."""

import sys

import torch

# A 2-layer model small enough for exhaustive checks.
TINY_MODEL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)

# Every architecture switch at once: the "modern" variant tests run against.
MODERN = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, qk_norm=True)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_ids(shape, vocab: int = TINY_MODEL["vocab_size"], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=seeded(seed))


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2, embedding_scale: float | None = None):
    """Overwrite every parameter with values large enough that a wrong weight mapping or a
    cache bug shows in the logits, and greedy decoding wanders instead of repeating one token.

    Norm gains get 1 + noise (not plain noise) so the network stays well conditioned.
    ``embedding_scale`` keeps token/position embeddings smaller than the blocks' weights:
    in a tied model a dominant embedding makes every token predict itself."""
    g = seeded(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            embedding = any(k in name for k in ("wte", "wpe", "embed_tokens"))
            std = embedding_scale if embedding and embedding_scale is not None else scale
            noise = torch.randn(p.shape, generator=g) * std
            is_gain = ("norm" in name or ".ln_" in name) and name.endswith("weight")
            p.copy_(1 + noise if is_gain else noise)
    return model


# ---------------------------------------------------------------------------- run directories

CHARS = "abcdefghijklmnopqrstuvwxyz \n.,"


def make_run(run_dir, *, seed: int = 0, info=None, which=("best",), config_overrides: dict | None = None,
             tokenizer=None, randomize: bool = False, **model_kw):
    """A run directory as training leaves it (config.json, tokenizer, weights), written through
    RunDir, with a char tokenizer (or ``tokenizer``) and a seeded tiny model (``randomize``: with
    :func:`randomize_`'s larger weights). Returns (model, config dict)."""
    from tinygpt.config import to_dict
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.run import CheckpointInfo, RunDir
    from tinygpt.tokenizer import CharTokenizer

    tok = tokenizer or CharTokenizer(CHARS)
    cfg = GPTConfig(**{**TINY_MODEL, "vocab_size": tok.vocab_size, **model_kw})
    torch.manual_seed(seed)
    model = GPT(cfg)
    if randomize:
        randomize_(model, seed, scale=0.3, embedding_scale=0.1)
    run = RunDir.create(run_dir)
    run.save_tokenizer(tok)
    config = {"model": {**to_dict(cfg), **(config_overrides or {})}, "tokenizer": tok.to_dict(),
              "versions": {"tinygpt": "0.1.0"}}
    run.write_config(config)
    for w in which:
        run.save_weights(model, w, CheckpointInfo(step=120, val_loss=1.75) if info is None else info)
    return model, config


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- tokenized data

QUIET = {"log": lambda message: None}  # prepare_data(..., **QUIET)


def decode_all(d) -> str:
    """The whole tokenized corpus (train then val) as text."""
    import numpy as np

    return d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist())


def data_dirs() -> list[str]:
    """The token-cache folders that exist now."""
    from tinygpt.config import cache_dir

    root = cache_dir() / "data"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------------------- other processes


def hold_lock(path):
    """A child process holding the run lock at ``path`` until killed (returns once it holds it)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; from tinygpt import lock; "
                              f"lock.acquire({str(path)!r}, 'x'); print('locked', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "locked\n"
    return child


# ---------------------------------------------------------------------------- counting calls

def counted(monkeypatch, func, result=None) -> list:
    """Count every call of ``func`` from any tinygpt module that imported it (``result``: return
    that instead of calling it). Returns the list of the calls' arguments."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return func(*args, **kwargs) if result is None else result

    for name, module in list(sys.modules.items()):
        if name.startswith("tinygpt") and getattr(module, func.__name__, None) is func:
            monkeypatch.setattr(module, func.__name__, wrapper)
    return calls
