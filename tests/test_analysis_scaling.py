"""Scaling laws: the fit recovers a known law, the optimum is the iso-FLOP minimum, and a
tiny real sweep runs end to end."""

import json

import numpy as np
import pytest

from tinygpt.analysis.scaling import (
    ScalingLaw,
    SweepRun,
    fit_law,
    isoflop_minima,
    minima_exponent,
    parse_budget,
    parse_size,
)
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.run import RunDir

CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def test_the_fit_recovers_a_known_law_from_noisy_losses():
    rng = np.random.default_rng(0)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    loss = CHINCHILLA.loss(n, d) * np.exp(rng.normal(0, 0.003, n.size))  # 0.3% noise
    law = fit_law(n, d, loss)
    assert law.alpha == pytest.approx(0.34, abs=0.01) and law.beta == pytest.approx(0.28, abs=0.01)
    assert law.E == pytest.approx(1.69, abs=0.05)
    # The compute-optimal size at 1e21 FLOPs within 5% of the true law's.
    assert law.optimal(1e21)[0] == pytest.approx(CHINCHILLA.optimal(1e21)[0], rel=0.05)


def test_the_optimum_is_the_minimum_of_the_iso_flop_curve():
    c = 1e20
    n_opt, d_opt = CHINCHILLA.optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)
    grid = n_opt * np.geomspace(0.5, 2, 201)
    losses = CHINCHILLA.loss(grid, c / (6 * grid))
    assert grid[losses.argmin()] == pytest.approx(n_opt, rel=0.01)


def test_losses_that_do_not_fall_still_fit_a_law_with_a_real_optimum():
    # Tiny runs' losses can rise with the tokens: the exponents stay positive (small), never complex.
    n = np.array([1e4, 2e4, 4e4, 1e4, 2e4, 4e4])
    d = np.array([4e5, 2e5, 1e5, 8e5, 4e5, 2e5])
    law = fit_law(n, d, np.array([3.1, 3.0, 3.3, 3.2, 3.1, 3.4]))
    assert law.alpha > 0 and law.beta > 0
    assert all(np.isfinite(x) and isinstance(x, float) for x in law.optimal(1e12))
    with pytest.raises(TinyGPTError, match="has no compute-optimal size"):
        ScalingLaw(E=1.0, A=1.0, B=1.0, alpha=0.3, beta=-0.1).optimal(1e12)


def test_iso_flop_minima_find_the_laws_optimum_without_its_formula():
    runs = []
    for budget, c in (("a", 1e19), ("b", 1e20), ("c", 1e21)):
        n_opt = CHINCHILLA.optimal(c)[0]
        for n in n_opt * np.geomspace(1 / 3, 3, 5):  # sizes around the optimum, as a sweep would pick
            runs.append(SweepRun(budget, "-", int(n), int(c / (6 * n)), 1.0, float(CHINCHILLA.loss(n, c / (6 * n)))))
    minima = isoflop_minima(runs)
    assert [m[0] for m in minima] == ["a", "b", "c"]
    for _, c, n in minima:
        assert n == pytest.approx(CHINCHILLA.optimal(c)[0], rel=0.05)
    a = CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta)
    assert minima_exponent(minima) == pytest.approx(a, abs=0.02) and minima_exponent(minima[:1]) is None
    # Losses that only fall with size: the vertex stays at the largest size run.
    falling = [SweepRun("x", "-", n, 10**9, 1.0, 3.0 - 0.1 * i) for i, n in enumerate((10**5, 10**6, 10**7))]
    assert isoflop_minima(falling)[0][2] == pytest.approx(1e7)


def test_a_fit_and_a_size_refuse_what_they_cannot_use():
    with pytest.raises(TinyGPTError, match="at least 5 runs"):
        fit_law([1e6] * 4, [1e9] * 4, [3.0] * 4)
    with pytest.raises(TinyGPTError, match="more than one model size"):
        fit_law([1e6] * 5, [1e9, 2e9, 3e9, 4e9, 5e9], [3.0] * 5)
    assert parse_size("4x128") == {"n_layer": 4, "n_embd": 128, "n_head": 2}
    with pytest.raises(TinyGPTError, match="LAYERSxWIDTH"):
        parse_size("big")
    assert parse_budget("2m") == ("time", 120) and parse_budget("1.5E13flops") == ("flops", 1.5e13)
    for bad in ("soon", "-1e13flops", "xflops", "0flop"):
        with pytest.raises(TinyGPTError, match="--budgets are training times"):
            parse_budget(bad)


def test_a_tiny_sweep_runs_end_to_end(tmp_path, tiny_corpus):
    out, report = tmp_path / "sweep", tmp_path / "scaling.json"
    assert main(["scaling", "--data", str(tiny_corpus), "--sizes", "1x16,2x32,2x64", "--budgets", "0.2s,2e8flops",
                 "--predict", "1m", "--save-profile", "false", "--block-size", "32", "--batch-size", "4",
                 "--device", "cpu", "--dtype", "fp32", "--out", str(out), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    runs = result["runs"]
    assert [(r["budget"], r["size"]) for r in runs] == [(b, s) for b in ("0.2s", "2e8flops")
                                                        for s in ("1x16", "2x32", "2x64")]
    assert all(r["tokens"] > 0 and np.isfinite(r["val_loss"]) for r in runs)
    assert [r["params"] for r in runs[:3]] == sorted(r["params"] for r in runs[:3])  # the sizes grow
    # A compute budget trains each size on C / 6N tokens (whole steps of 4 x 32: the last may go over).
    for r in runs[3:]:
        assert 2e8 <= r["flops"] < 2e8 + 6 * r["params"] * 128
    # Each a run of its own (a run this short may end before an evaluation: its last weights, then).
    assert all(RunDir.open(out / f"{r['budget']}-{r['size']}").weights_path("last").exists() for r in runs)
    assert (out / "isoflops.png").stat().st_size > 10_000
    assert [m["budget"] for m in result["isoflop_minima"]] == ["0.2s", "2e8flops"]
    assert result["isoflop_exponent"] is not None
    p = result["prediction"]
    assert p["flops"] == pytest.approx(60 * result["flops_per_second"]) and p["params"] * p["tokens"] * 6 == \
        pytest.approx(p["flops"], rel=1e-9)


def test_a_signal_stops_the_whole_sweep_with_its_run_saved(tmp_path, tiny_corpus, monkeypatch):
    import os
    import signal

    from tinygpt.train import LambdaCallback, Session

    fit = Session.fit

    def fit_then_sigterm(self, *extra):  # SIGTERM arrives during the first run's first step
        return fit(self, LambdaCallback(lambda trainer, record: os.kill(os.getpid(), signal.SIGTERM)), *extra)

    monkeypatch.setattr(Session, "fit", fit_then_sigterm)
    out = tmp_path / "sweep"
    assert main(["scaling", "--data", str(tiny_corpus), "--sizes", "1x16,2x32,2x64", "--budgets", "10s,20s",
                 "--block-size", "32", "--batch-size", "4", "--device", "cpu", "--dtype", "fp32",
                 "--out", str(out)]) == 128 + signal.SIGTERM
    assert sorted(p.name for p in out.iterdir()) == ["10s-1x16"]  # no later run began
    assert RunDir.open(out / "10s-1x16").load_state()["step"] == 1
