"""Device and number-format choices: measured where they depend on the machine."""

import pytest
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


def test_none_takes_one_thread_per_core_other_processes_leave_free(monkeypatch):
    from tinygpt import device

    before = torch.get_num_threads()
    monkeypatch.setattr(device, "ALL_CORES", 4)
    said = []
    try:
        monkeypatch.delenv("OMP_NUM_THREADS")
        for busy, threads in ((0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.2, 2), (7.0, 1)):
            monkeypatch.setattr(device, "busy_elsewhere", lambda window=0.15, busy=busy: busy)
            assert device.free_cores() == (threads, busy)
            assert device.use_threads(None, log=said.append) == threads == torch.get_num_threads()
        assert said[-1] == "threads: 1 of 4 (other processes keep 7.0 cores busy; --threads N to choose)"
        monkeypatch.setattr(device, "busy_elsewhere", lambda window=0.15: None)  # not Linux: one per core
        assert device.free_cores() == (4, 0.0)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user chose: left as it is, nothing measured
        torch.set_num_threads(1)
        monkeypatch.setattr(device, "busy_elsewhere", lambda window=0.15: 1 / 0)
        assert device.use_threads(None) == 1
    finally:
        torch.set_num_threads(before)


def test_busy_elsewhere_is_the_busy_time_of_this_processs_cpus_less_its_own(tmp_path, monkeypatch):
    import os
    import types

    from tinygpt import device

    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    allowed = sorted(os.sched_getaffinity(0))
    other = max(allowed) + 1  # a CPU this process may not use: its work is not counted

    def write(busy: int) -> None:  # busy ticks on each CPU, split over user, system, irq and steal
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
        for n in allowed + [other]:
            user, system, irq = busy // 2, busy // 4, busy // 8
            steal = busy - user - system - irq
            lines.append(f"cpu{n} {user} 0 {system} {10_000 - busy} 7 {irq} 0 {steal} 0 0")
        stat.write_text("\n".join(lines + ["intr 1 2 3", "ctxt 9"]) + "\n")

    clock = {"cpu": 5.0, "wall": 100.0}

    def sleep(seconds):  # the window passes: every CPU busy for 0.6 s of it, this process for 0.4 s
        write(int(0.6 * tick) + 1000)
        clock["cpu"] += 0.4
        clock["wall"] += seconds

    monkeypatch.setattr(device, "PROC_STAT", str(stat))
    monkeypatch.setattr(device, "time", types.SimpleNamespace(sleep=sleep, process_time=lambda: clock["cpu"],
                                                              perf_counter=lambda: clock["wall"]))
    write(1000)
    want = (len(allowed) * round(0.6 * tick) / tick - 0.4) / 1.0
    assert device.busy_elsewhere(1.0) == pytest.approx(want, abs=len(allowed) / tick)
    monkeypatch.setattr(device, "PROC_STAT", str(tmp_path / "none"))  # no such file: the system does not say
    assert device.busy_elsewhere(1.0) is None


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


def test_the_cpu_is_named_with_its_cores_and_vector_features():
    import os

    from tinygpt.device import cpu_name

    name = cpu_name()
    assert f"({len(os.sched_getaffinity(0))} cores" in name
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), None)
    if flags is not None:  # the OS lists the CPU's features: the name says the ones that decide kernel speed
        assert ("AVX-512" in name) == ("avx512f" in flags)
        assert ("no AMX" in name) == ("amx_tile" not in flags) and ("AMX" in name)
