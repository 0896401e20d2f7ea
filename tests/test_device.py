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


def test_auto_chooses_among_fp32_and_what_this_cpu_runs():
    from tinygpt.device import cpu_has_bf16, dtype_candidates

    assert dtype_candidates(CPU) == (("fp32", "bf16") if cpu_has_bf16() else ("fp32",))
    assert dtype_candidates(torch.device("meta")) == ("fp32",)


def test_threads_are_set_once_and_none_leaves_the_default():
    import pytest

    from tinygpt.device import RuntimeConfig, use_threads
    from tinygpt.errors import TinyGPTError

    before = torch.get_num_threads()
    try:
        use_threads(None)
        assert torch.get_num_threads() == before
        use_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(TinyGPTError, match="--threads must be at least 1"):
        RuntimeConfig(threads=0)
