"""Quantized weights: the int8 and int4 formats, llama.cpp's q4_0 rule bit for bit, the
kernels against dequantize-then-matmul, dynamic int8, and fake quantization's gradient."""

import numpy as np
import pytest
import torch

from tinygpt import kernels, quant
from tinygpt.errors import TinyGPTError
from tinygpt.kernels import Linear
from tinygpt.quant import QuantSpec

INT8, INT4 = QuantSpec(bits=8), QuantSpec(bits=4, group_size=32)


def weight(n=48, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)   # rows of different sizes


def layer(spec, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = Linear(128, 48, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight(seed=seed))
    w = lin.weight.detach().clone()
    if spec.bits == 8:
        q, s = quant.quantize_int8(w)
        tensors = {"qweight": q, "scales": s}
    else:
        q, s = quant.quantize_int4(w, spec.group_size)
        tensors = {"qweight": quant.pack_int4(q), "scales": s}
    quant.make_quantized(lin, spec, tensors)
    return lin, w


def test_int8_rounds_each_row_to_its_own_step():
    w = weight()
    q, s = quant.quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (48,)
    assert torch.equal(q.abs().amax(dim=1), torch.full((48,), 127, dtype=torch.int8))   # each row's max is +-127
    err = (quant.dequantize(q, s, 8) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()


def test_int4_is_llama_cpps_q4_0_bit_for_bit():
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    w = weight(8, 256)
    q, s = quant.quantize_int4(w, 32)
    assert q.max() <= 15 and s.dtype == torch.float16
    # q4_0's block: the fp16 scale, then 16 bytes holding values j (low nibble) and j + 16 (high).
    blocks = q.reshape(-1, 32).numpy()
    packed = blocks[:, :16] | (blocks[:, 16:] << 4)
    ours = np.concatenate([s.reshape(-1, 1).numpy().view(np.uint8), packed], axis=1).reshape(8, -1)
    theirs = quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(ours, theirs)
    # The value of largest magnitude in each group is the code 0 (its -8 step); the others are
    # within half a step, but those past 7 steps on its other side, clipped to 7 steps.
    groups, codes = w.reshape(8, -1, 32), q.reshape(8, -1, 32)
    assert (codes.gather(-1, groups.abs().argmax(-1, keepdim=True)) == 0).all()
    err = (quant.dequantize(quant.pack_int4(q), s, 4).reshape(8, -1, 32) - groups).abs()
    step = s.float().abs()[..., None]
    inside = groups.abs() <= 7 * step
    assert (err[inside] <= (step / 2 * 1.002).expand_as(err)[inside]).all()
    assert (err <= step * 1.002).all()


def test_int4_packs_two_codes_a_byte_and_back():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = quant.pack_int4(q)
    assert packed.shape == (5, 32) and torch.equal(packed[:, 0], q[:, 0] | (q[:, 1] << 4))
    assert torch.equal(quant.unpack_int4(packed), q)


@pytest.mark.parametrize("spec", [INT8, INT4, QuantSpec(bits=4, group_size=64)], ids=["int8", "int4-32", "int4-64"])
@pytest.mark.parametrize("how", ["fp32", "fp32 via bf16", "bf16"])
@pytest.mark.parametrize("rows", [1, 7])
def test_the_kernels_compute_what_the_dequantized_weights_do(spec, how, rows, monkeypatch):
    lin, _ = layer(spec)
    dtype = torch.bfloat16 if how == "bf16" else torch.float32
    monkeypatch.setattr(kernels, "quantized_route", lambda _: "int-bf16" if how == "fp32 via bf16" else "int-fp32")
    x = torch.randn(rows, 128).to(dtype)
    with torch.no_grad():
        y = lin(x)
        reference = x.float() @ quant.weight_of(lin).T + lin.bias
    assert y.dtype == dtype and y.shape == (rows, 48)
    tol = 1e-4 if how == "fp32" else 3e-2
    torch.testing.assert_close(y.float(), reference, rtol=tol, atol=tol * reference.abs().max().item())


def test_fp32_activations_take_the_faster_measured_route_and_keep_it(monkeypatch):
    lin, _ = layer(INT4)
    timed = []
    for faster in ("int-bf16", "int-fp32"):
        kernels._ROUTE.clear()
        monkeypatch.setattr(kernels, "_SAVED", {})
        monkeypatch.setattr(kernels, "_quantized_times", lambda _, f=faster: timed.append(f) or
                            {"int-fp32": 1.0, "int-bf16": 0.5 if f == "int-bf16" else 0.9})
        assert kernels.quantized_route(lin) == faster and kernels.quantized_route(lin) == faster
    assert timed == ["int-bf16", "int-fp32"]   # timed once each time, then remembered
    kernels._ROUTE.clear()


def test_a_quantized_layer_holds_no_float_weight_and_keeps_its_scales_dtype():
    lin, _ = layer(INT4)
    assert lin.weight is None and set(lin.state_dict()) == {"qweight", "scales", "bias"}
    scales = lin.scales.clone()
    lin.to(torch.bfloat16)
    assert lin.scales.dtype == torch.float16 and torch.equal(lin.scales, scales)   # not rounded to bf16
    assert lin.bias.dtype == torch.bfloat16 and not lin.pack()


def test_an_input_scale_divides_the_input(monkeypatch):
    monkeypatch.setattr(kernels, "quantized_route", lambda _: "int-fp32")   # fp32 activations as they are
    lin, _ = layer(INT8)
    s = torch.rand(128) + 0.5
    lin.register_buffer("input_scale", s)
    x = torch.randn(3, 128)
    with torch.no_grad():
        expected = (x / s) @ quant.dequantize(lin.qweight, lin.scales, 8).T + lin.bias
        torch.testing.assert_close(lin(x), expected, rtol=1e-5, atol=1e-5)


def test_dynamic_int8_rounds_each_input_row_and_multiplies_integers():
    spec = QuantSpec(bits=8, activations="int8")
    lin, w = layer(spec)
    x = torch.randn(5, 128)
    sx = x.abs().amax(dim=1, keepdim=True) / 127
    xq = torch.round(x / sx).clamp(-127, 127)
    expected = (xq.double() @ lin.qweight.double().T) * sx.double() * lin.scales.double() + lin.bias.double()
    with torch.no_grad():
        y = lin(x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-5)
    assert (y - (x @ w.T + lin.bias)).abs().max() < 0.05 * (x @ w.T).abs().max()   # close to the float layer


def test_fake_quantization_rounds_forward_and_passes_the_gradient_straight_through():
    w = weight().requires_grad_()
    for bits, group in ((8, 0), (4, 32)):
        fq = quant.fake_quantize(w, bits, group)
        if bits == 8:
            q, s = quant.quantize_int8(w)
            assert torch.equal(fq.detach(), q.float() * s[:, None])
        else:
            q, s = quant.quantize_int4(w, 32)
            assert torch.equal(fq.detach(), quant.dequantize(quant.pack_int4(q), s, 4))
        (g,) = torch.autograd.grad((fq * 3).sum(), w)
        assert torch.equal(g, torch.full_like(w, 3.0))


def test_specs_refuse_what_no_kernel_holds():
    with pytest.raises(TinyGPTError, match="int4 needs --group-size"):
        QuantSpec(bits=4, group_size=48)
    with pytest.raises(TinyGPTError, match="int8 or int4"):
        QuantSpec(bits=3)
    with pytest.raises(TinyGPTError, match="only int8 weights"):
        QuantSpec(bits=4, group_size=32, activations="int8")
    with pytest.raises(TinyGPTError, match="multiple of 32"):
        quant.quantize_int4(torch.randn(4, 48), 32)
    with pytest.raises(TinyGPTError, match="not one this version reads"):
        QuantSpec.from_json({"bits": 8, "shape": "round"})


def test_a_missing_kernel_falls_back_to_dequantizing_and_says_so_once(monkeypatch):
    lin, _ = layer(INT8)
    monkeypatch.setattr(kernels, "quantized_route", lambda _: "int-fp32")
    monkeypatch.setattr(kernels, "_KERNELS", {})

    def missing(*args):
        raise NotImplementedError("no kernel for this build")

    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm", missing)
    x = torch.randn(3, 128)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="no CPU int8 kernel.*dequantizing") as said:
            y = lin(x)
            again = lin(x)
    assert len(said) == 1
    expected = x @ quant.weight_of(lin).T + lin.bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, again)
