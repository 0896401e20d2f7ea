"""The schedules picture is drawn from the trainer's own rates."""

import pytest

from tinygpt.analysis import schedules
from tinygpt.train.optim import SCHEDULES, lr_at


def test_the_curves_are_the_trainers_rates_and_the_picture_is_drawn(tmp_path):
    c = schedules.curves(steps=200, lr=1e-3, warmup=20)
    assert set(c) == {*SCHEDULES, "onecycle momentum"} and all(len(v) == 200 for v in c.values())
    assert c["cosine"][57] == lr_at(57, 57 / 200, lr=1e-3, min_lr=1e-4, warmup_steps=20, schedule="cosine",
                                    total_steps=200)
    assert max(c["onecycle"]) == pytest.approx(1e-3) and c["onecycle"].index(max(c["onecycle"])) == 59  # 0.3 * 200 - 1
    assert min(c["onecycle momentum"]) == pytest.approx(0.85) and c["onecycle"][-1] == pytest.approx(1e-3 / 25 / 1e4)
    assert schedules.draw(tmp_path / "s.png", steps=100).stat().st_size > 10_000
