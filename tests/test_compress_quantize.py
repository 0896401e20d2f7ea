"""Post-training quantization: a quantized run loads wherever a run does and computes what
its dequantized weights do; the calibration methods beat round-to-nearest where they aim to."""

import pytest
import torch
from helpers import make_run

from tinygpt import kernels, quant
from tinygpt.compress import QuantizeOptions, quantize_model, quantize_run
from tinygpt.compress import quantize as Q
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT
from tinygpt.quant import QuantSpec
from tinygpt.run import RunDir

SHAPE = dict(n_layer=2, n_head=2, n_embd=64, block_size=32)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("quantize") / "float"
    model, _ = make_run(path, randomize=True, **SHAPE)
    return path, model.eval()


def ids(n=4, t=32, vocab=50, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("to, head", [("int8", False), ("int4", True), ("dynamic-int8", False)])
def test_a_quantized_run_loads_and_computes_with_its_dequantized_weights(float_run, tmp_path, to, head, monkeypatch):
    path, model = float_run
    monkeypatch.setattr(kernels, "quantized_route", lambda _: "int-fp32")   # fp32 activations as they are
    out = quantize_run(path, tmp_path / "q", QuantizeOptions(scheme=to, quantize_head=head))
    run = RunDir.open(out)
    spec = run.quantization()
    assert spec.name == to and spec.head == head
    loaded, _, _ = run.load_model()
    layers = quant.linears(loaded, head)
    assert len(layers) == 4 * SHAPE["n_layer"] + head and all(m.weight is None for _, m in layers)
    # The same model with each quantized weight dequantized into a float layer.
    reference = GPT(model.config).eval()
    reference.load_state_dict(model.state_dict())
    for (name, m), (_, r) in zip(layers, quant.linears(reference, head)):
        with torch.no_grad():
            r.weight = torch.nn.Parameter(quant.weight_of(m))
    x = ids()
    with torch.no_grad():
        got, float_logits = loaded(x).logits, model(x).logits
        if to != "dynamic-int8":   # (dynamic int8 also rounds the activations: it is only close)
            torch.testing.assert_close(got, reference(x).logits, rtol=1e-4, atol=1e-4)
    # Near the float model's (int4 on random weights only roughly: 16 levels a group).
    assert (got - float_logits).abs().max() < (0.5 if to == "int4" else 0.1) * float_logits.abs().max()
    assert (out / "model.safetensors").stat().st_size < (path / "model.safetensors").stat().st_size
    # bf16 compute on the quantized weights: close to fp32's.
    loaded.to(torch.bfloat16)
    with torch.no_grad():
        half = loaded(x).logits.float()
    assert (half - got).abs().max() < 0.1 * got.abs().max()


def layer_error(w, tensors, x):
    """||x W^T - x' Q^T|| of a quantized layer over inputs x."""
    bits = 8 if tensors["qweight"].dtype == torch.int8 else 4
    wq = quant.dequantize(tensors["qweight"], tensors["scales"], bits, tensors.get("input_scale"))
    return (x @ w.T - x @ wq.T).pow(2).sum().item()


def test_awq_lite_and_gptq_lite_move_the_layers_outputs_less_than_rounding():
    torch.manual_seed(0)
    spec = QuantSpec(bits=4, group_size=32, method="gptq-lite")
    w = torch.randn(64, 128) * 0.1
    # Inputs with a few loud channels and correlated ones: what calibration exploits.
    x = torch.randn(2048, 128) @ (torch.eye(128) + 0.3 * torch.randn(128, 128)) * (1 + 9 * (torch.rand(128) > 0.9))
    rtn = layer_error(w, Q._rtn(w, spec), x)
    gptq = layer_error(w, Q._gptq(w, spec, x.T @ x / len(x)), x)
    awq = layer_error(w, Q._awq(w, spec, x.abs().mean(0), x[:1024]), x)
    assert gptq < 0.7 * rtn and awq < rtn
    int8 = QuantSpec(bits=8, method="gptq-lite")
    assert layer_error(w, Q._gptq(w, int8, x.T @ x / len(x)), x) < layer_error(w, Q._rtn(w, int8), x)


def test_calibrated_runs_read_the_training_text_or_data(float_run, tmp_path):
    path, model = float_run
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = quantize_run(path, tmp_path / "g", QuantizeOptions(scheme="int4", rounding="gptq-lite", data=str(text),
                                                           calibration_tokens=256))
    rtn = quantize_run(path, tmp_path / "r", QuantizeOptions(scheme="int4"))
    run = RunDir.open(out)
    assert run.read_config()["quantized"]["calibration"] == {"data": str(text), "tokens": 256}
    assert run.quantization().method == "gptq-lite"
    x = torch.tensor(run.load_tokenizer().encode(text.read_text()[:256]))[None, :32]
    with torch.no_grad():
        want = model(x).logits
        errors = [(RunDir.open(p).load_model()[0](x).logits - want).pow(2).mean() for p in (out, rtn)]
    assert errors[0] < errors[1]   # on the text it calibrated on, nearer the float model than rounding
    with pytest.raises(TinyGPTError, match="not a tinygpt run, so it has no training text"):
        Q.calibration_ids(tmp_path / "hf", None, QuantizeOptions(scheme="int4", rounding="awq-lite"), 32)


def test_bad_requests_are_refused_before_anything_is_written(float_run, tmp_path):
    path, _ = float_run
    with pytest.raises(TinyGPTError, match="awq-lite chooses int4 scales"):
        QuantizeOptions(scheme="int8", rounding="awq-lite")
    with pytest.raises(TinyGPTError, match="round to nearest only"):
        QuantizeOptions(scheme="dynamic-int8", rounding="gptq-lite")
    out = quantize_run(path, tmp_path / "q", QuantizeOptions(scheme="int8"))
    with pytest.raises(TinyGPTError, match="already quantized"):
        quantize_run(out, tmp_path / "qq", QuantizeOptions(scheme="int4"))
    assert not (tmp_path / "qq").exists()
    odd = tmp_path / "odd"
    make_run(odd, n_layer=1, n_head=2, n_embd=48, block_size=16)
    with pytest.raises(TinyGPTError, match="multiple of 32"):
        quantize_run(odd, tmp_path / "odd4", QuantizeOptions(scheme="int4"))
    assert not (tmp_path / "odd4").exists()
    with pytest.raises(TinyGPTError, match="already quantized"):
        quantize_model(RunDir.open(out).load_model()[0], QuantSpec())


def test_a_quantized_model_saves_and_reloads_to_bitwise_the_same_logits(float_run, tmp_path):
    from tinygpt.checkpoint import load_weights, save_weights

    path, _ = float_run
    out = quantize_run(path, tmp_path / "q", QuantizeOptions(scheme="int4", quantize_head=True))
    first, second = RunDir.open(out).load_model()[0], RunDir.open(out).load_model()[0]
    save_weights(first, tmp_path / "again.safetensors")
    x = ids()
    with torch.no_grad():
        assert torch.equal(first(x).logits, second(x).logits)
    again = load_weights(tmp_path / "again.safetensors")    # saved again: the same integers and scales
    assert again.keys() == first.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in first.state_dict().items())
