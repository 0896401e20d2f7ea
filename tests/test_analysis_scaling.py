"""Scaling laws: the fit recovers a known law, the optimum is the iso-FLOP minimum, and a
tiny real sweep runs end to end."""

import json

import numpy as np
import pytest

from tinygpt.analysis.scaling import ScalingLaw, fit_law, parse_size
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


def test_a_fit_and_a_size_refuse_what_they_cannot_use():
    with pytest.raises(TinyGPTError, match="at least 5 runs"):
        fit_law([1e6] * 4, [1e9] * 4, [3.0] * 4)
    with pytest.raises(TinyGPTError, match="more than one model size"):
        fit_law([1e6] * 5, [1e9, 2e9, 3e9, 4e9, 5e9], [3.0] * 5)
    assert parse_size("4x128") == {"n_layer": 4, "n_embd": 128, "n_head": 2}
    with pytest.raises(TinyGPTError, match="LAYERSxWIDTH"):
        parse_size("big")


def test_a_tiny_sweep_runs_end_to_end(tmp_path, tiny_corpus):
    out, report = tmp_path / "sweep", tmp_path / "scaling.json"
    assert main(["scaling", "--data", str(tiny_corpus), "--sizes", "1x16,1x32,2x32,1x64,2x64", "--budgets", "0.2s",
                 "--predict", "1m", "--save-profile", "false", "--block-size", "32", "--batch-size", "4",
                 "--device", "cpu", "--dtype", "fp32", "--out", str(out), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    runs = result["runs"]
    assert [r["size"] for r in runs] == ["1x16", "1x32", "2x32", "1x64", "2x64"]
    assert all(r["tokens"] > 0 and np.isfinite(r["val_loss"]) for r in runs)
    assert [r["params"] for r in runs] == sorted(r["params"] for r in runs)  # the sizes grow
    # Each a run of its own (a run this short may end before an evaluation: its last weights, then).
    assert all(RunDir.open(out / f"0.2s-{r['size']}").weights_path("last").exists() for r in runs)
    assert (out / "isoflops.png").stat().st_size > 10_000
    p = result["prediction"]
    assert p["flops"] == pytest.approx(60 * result["flops_per_second"]) and p["params"] * p["tokens"] * 6 == \
        pytest.approx(p["flops"], rel=1e-9)
