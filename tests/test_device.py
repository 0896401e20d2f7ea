"""Device and number-format choices: measured where they depend on the machine."""

import torch

from tinygpt.device import cpu_inference_dtype, fastest, resolve_dtype

CPU = torch.device("cpu")


def test_fastest_picks_the_callable_that_does_less_work():
    a = torch.randn(256, 256)
    best, times = fastest({"one": lambda: a @ a, "forty": lambda: [a @ a for _ in range(40)]}, CPU)
    assert best == "one" and set(times) == {"one", "forty"} and times["one"] < times["forty"]


def test_auto_resolves_by_purpose_on_a_cpu():
    # Inference: the measured faster weight format (fp32 where bf16 is not supported at all).
    assert resolve_dtype("auto", CPU, inference=True) == cpu_inference_dtype() in (torch.float32, torch.bfloat16)
    # Training: fp32 until the session measures its own model (see test_train_session).
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16 and resolve_dtype("fp32", CPU, inference=True) == torch.float32
