"""GGUF export: llama.cpp's GPT-2 metadata and tensor names, values read back with the gguf library."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import randomize_

from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import CheckpointInfo, RunDir
from tinygpt.tokenizer import GPT2Tokenizer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    """A run with GPT-2's tokenizer and a small GPT-2-shaped model (64 wide: q8_0 blocks fit)."""
    from tinygpt.config import to_dict

    path = tmp_path_factory.mktemp("gguf") / "run"
    tok = GPT2Tokenizer()
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = randomize_(GPT(cfg), seed=1)
    run = RunDir.create(path)
    run.save_tokenizer(tok)
    run.write_config({"model": to_dict(cfg), "tokenizer": tok.to_dict(), "versions": {"tinygpt": "0.1.0"}})
    run.save_weights(model, "best", CheckpointInfo(step=1))
    return path, model


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


@pytest.mark.parametrize("kind, tol", [("f32", 0.0), ("f16", 1e-3), ("q8_0", 2e-2)])
def test_gguf_has_llama_cpps_gpt2_layout_and_our_values(gpt2_run, tmp_path, kind, tol):
    path, model = gpt2_run
    out = tmp_path / f"model-{kind}.gguf"
    assert main(["export", str(path), "--to", "gguf", str(out), "--type", kind]) == 0
    fields, tensors = read(out)
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.context_length"], fields["gpt2.embedding_length"], fields["gpt2.block_count"],
            fields["gpt2.attention.head_count"], fields["gpt2.feed_forward_length"]) == (32, 64, 2, 2, 256)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>" and tokens[1212] == "This"
    assert fields["tokenizer.ggml.merges"][0] == "Ġ t" and fields["tokenizer.ggml.eos_token_id"] == 50256
    expected = {f"blk.{n}.{p}.{w}" for n in range(2) for p in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm",
                                                                 "ffn_up", "ffn_down") for w in ("weight", "bias")}
    expected |= {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias",
                 "output.weight"}
    assert set(tensors) == expected
    ours = {"blk.0.attn_qkv.weight": model.transformer.h[0].attn.c_attn.weight,
            "blk.1.ffn_down.bias": model.transformer.h[1].mlp.c_proj.bias,
            "token_embd.weight": model.transformer.wte.weight[:50257],
            "output.weight": model.lm_head.weight[:50257]}
    for name, want in ours.items():
        t = tensors[name]
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape) if kind.startswith("q") \
            else np.asarray(t.data, dtype=np.float32).reshape(want.shape)
        want = want.detach().numpy()
        assert np.abs(data - want).max() <= tol * np.abs(want).max(), name
        if want.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32  # vectors stay f32, as in llama.cpp
    assert tensors["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_an_int4_run_goes_into_q4_0_as_it_is(gpt2_run, tmp_path):
    """The int4 run's codes and scales are the file's q4_0 blocks, byte for byte: no second rounding."""
    from tinygpt import quant
    from tinygpt.compress import QuantizeOptions, quantize_run

    path, model = gpt2_run
    q = quantize_run(path, tmp_path / "int4", QuantizeOptions(scheme="int4", quantize_head=True))
    assert main(["export", str(q), "--to", "gguf", str(tmp_path / "q.gguf"), "--type", "q4_0"]) == 0
    _, from_int4 = read(tmp_path / "q.gguf")
    layer = RunDir.open(q).load_model()[0].transformer.h[0].attn.c_attn
    t = from_int4["blk.0.attn_qkv.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
    codes, scales = quant.unpack_int4(layer.qweight), layer.scales
    blocks = codes.reshape(-1, 32).numpy()
    expected = np.concatenate([scales.reshape(-1, 1).numpy().view(np.uint8),
                               blocks[:, :16] | (blocks[:, 16:] << 4)], axis=1)
    assert np.array_equal(np.asarray(t.data).reshape(-1, 18), expected)
    # The float weights rounded by the gguf library give the same bytes: one quantizer. Read
    # back, they are the weights within q4_0's rounding (at most one step of a group's scale).
    for name, layer in (("blk.1.ffn_down.weight", model.transformer.h[1].mlp.c_proj),
                        ("output.weight", model.lm_head)):
        want = layer.weight.detach()[:50257].numpy()
        assert np.array_equal(np.asarray(from_int4[name].data),
                              gguf.quants.quantize(want, gguf.GGMLQuantizationType.Q4_0)), name
        data = gguf.quants.dequantize(from_int4[name].data, from_int4[name].tensor_type).reshape(want.shape)
        assert np.abs(data - want).max() <= 0.15 * np.abs(want).max()


def test_gguf_refusals_are_one_line(trained_run, gpt2_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--to", "gguf", str(tmp_path / "c.gguf")]) == 1
    assert "llama.cpp has no char-level tokenizer" in capsys.readouterr().err
    out = tmp_path / "x.gguf"
    out.write_text("mine")
    assert main(["export", str(gpt2_run[0]), "--to", "gguf", str(out)]) == 1
    assert "x.gguf already exists; choose another --to gguf, or pass --force" in capsys.readouterr().err
    assert out.read_text() == "mine" and not list(tmp_path.glob(".*.tmp"))
    assert main(["export", str(gpt2_run[0]), "--to", "zip", str(out)]) == 1
    assert "unknown export format 'zip'" in capsys.readouterr().err
    from tinygpt.interop import gguf_file

    _, model = gpt2_run
    rope = dataclasses.replace(model.config, pos_emb="rope")
    with pytest.raises(TinyGPTError, match=r"the GGUF \(llama.cpp's GPT-2\) format needs pos_emb=learned"):
        gguf_file.export(rope, {}, GPT2Tokenizer(), tmp_path / "r.gguf")
    assert not (tmp_path / "r.gguf").exists()
