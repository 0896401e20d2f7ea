"""What an export writes for each kind of model: plain weights, a LoRA beside its base (or
merged), and the refusal of adapters and soft prompts; a plain run exported end to end."""

import copy
import importlib.util

import pytest
import torch
from helpers import TINY_MODEL, make_run, randomize_

from tinygpt import adapters
from tinygpt.adapters import AdapterConfig
from tinygpt.checkpoint import load_weights, weight_tensors
from tinygpt.errors import TinyGPTError
from tinygpt.interop.export import ExportOptions, export_model, tensors_to_write
from tinygpt.model import GPT, GPTConfig

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="LoRA is built with peft")


def base():
    torch.manual_seed(0)
    return randomize_(GPT(GPTConfig(**TINY_MODEL)), seed=1).eval()


def adapted(method, **cfg):
    model = copy.deepcopy(base())
    torch.manual_seed(5)
    adapters.attach(model, AdapterConfig(method=method, **cfg))
    for p in adapters.adapter_parameters(model).values():  # away from the identity, so a merge changes weights
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_a_plain_model_is_written_as_it_is(fmt):
    model = base()
    config, tensors, lora = tensors_to_write(model, fmt)
    assert config == model.config and lora is None and same(tensors, weight_tensors(model))


@needs_peft
def test_a_lora_goes_to_hf_beside_its_base_and_is_merged_otherwise():
    model = adapted("lora", lora_rank=2)
    config, tensors, lora = tensors_to_write(model, "hf")
    assert lora is adapters.attached(model) and same(tensors, adapters.base_tensors(model))
    merged_config, merged = adapters.merge(model)
    for fmt, asked in (("hf", True), ("gguf", False), ("gguf", True)):
        config, tensors, lora = tensors_to_write(model, fmt, merged=asked)
        assert lora is None and config == merged_config and same(tensors, merged)


@pytest.mark.parametrize("method, what", [("adapter", "bottleneck adapters"), ("prompt", "soft prompt")])
def test_adapters_and_soft_prompts_have_no_place_in_either_format(method, what):
    model = adapted(method, bottleneck=4, soft_prompt_tokens=2)
    for fmt in ("hf", "gguf"):
        with pytest.raises(TinyGPTError, match=f"runs/ft is an? {method} fine-tune: {fmt} models have no place "
                                               f"for its {what}"):
            tensors_to_write(model, fmt, name="runs/ft")


def test_a_run_exported_in_another_dtype(tmp_path):
    model, _ = make_run(tmp_path / "run", randomize=True)
    done = export_model(tmp_path / "run", "hf", tmp_path / "hf", dtype="bf16")
    written = load_weights(tmp_path / "hf" / "model.safetensors")
    assert done.architecture == "GPT2LMHeadModel" and done.step == 120 and done.adapter is None
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    vocab = model.config.vocab_size  # the table without its padding rows
    assert torch.equal(written["wte.weight"], model.transformer.wte.weight.detach()[:vocab].bfloat16())
    with pytest.raises(TinyGPTError, match="unknown export format 'zip'"):
        export_model(tmp_path / "run", "zip", tmp_path / "z")


def test_export_options_check_the_format():
    assert ExportOptions(to=["gguf", "m.gguf"]).to == ["gguf", "m.gguf"]
    with pytest.raises(TinyGPTError, match="unknown export format 'zip'; choose one of: hf, gguf"):
        ExportOptions(to=["zip", "out"])
    with pytest.raises(TinyGPTError, match="unknown value .q4. for --type"):
        ExportOptions(to=["gguf", "m.gguf"], type="q4")
