"""The preset table: every preset is a valid model with its training settings; 'auto' per device."""

import pytest

from tinygpt.errors import TinyGPTError
from tinygpt.model import GPTConfig
from tinygpt.presets import AUTO, PRESETS, get_preset, resolve_preset
from tinygpt.train import TrainConfig


def test_small_presets_shapes():
    baby = GPTConfig(**get_preset("baby").model, vocab_size=65)
    assert (baby.n_layer, baby.n_head, baby.n_embd, baby.block_size) == (6, 6, 384, 256)
    llama = GPTConfig(**get_preset("baby-llama").model, vocab_size=65)
    assert (llama.pos_emb, llama.norm, llama.mlp, llama.bias, llama.tie_embeddings) == (
        "rope", "rmsnorm", "swiglu", False, False)
    # SwiGLU default hidden width: 8/3 * 384 = 1024, already a multiple of 64.
    assert llama.hidden_size == 1024 and baby.hidden_size == 4 * 384
    for name in PRESETS:  # every preset is a valid config
        GPTConfig(**get_preset(name).model, vocab_size=50257)


def test_the_table_cannot_be_changed_by_accident():
    with pytest.raises(TypeError):
        get_preset("baby").model["n_layer"] = 99
    layer = get_preset("baby").layer()  # a copy to lay under other settings
    layer["model"]["n_layer"] = 99
    assert get_preset("baby").model["n_layer"] == 6


def test_unknown_preset():
    with pytest.raises(TinyGPTError) as err:
        get_preset("gpt3")
    msg = str(err.value)
    assert "\n" not in msg and "'gpt3'" in msg and "gpt2-medium" in msg


def test_every_preset_has_valid_training_settings():
    for name, p in PRESETS.items():
        train = TrainConfig(**p.train)
        assert train.lr > 0, name
        assert p.about and set(p.layer()) == {"model", "train"}


def test_auto_resolves_per_device():
    assert resolve_preset("auto", "cpu") == "char-tiny" == AUTO["cpu"]
    assert resolve_preset("auto", "cuda") == "baby" and resolve_preset("auto", "mps") == "baby"
    assert resolve_preset("gpt2", "cpu") == "gpt2"
    with pytest.raises(TinyGPTError, match="unknown preset 'gpt3'"):
        resolve_preset("gpt3", "cpu")
