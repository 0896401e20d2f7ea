"""Training callbacks: progress output in a log file, the metrics file after a resume, periodic samples."""

import io
import json

from tinygpt.run import RunDir
from tinygpt.train import MetricsLog, PeriodicSampler, ProgressBar


class FakeTrainer:
    """Just what the callbacks read: a state, a budget fraction and done()."""

    def __init__(self, steps=10):
        from tinygpt.train import TrainState

        self.state, self.steps = TrainState(), steps

    def progress(self):
        return self.state.step / self.steps

    def done(self):
        return self.state.step >= self.steps

    def step(self, **extra):
        self.state.step += 1
        return {"step": self.state.step, "loss": 3.0 - 0.1 * self.state.step, "lr": 1e-3, "tok_per_s": 1000.0, **extra}


def test_progress_in_a_log_file_is_one_line_per_update():
    stream = io.StringIO()  # not a terminal, like stderr under `nohup ... > train.log`
    bar, trainer = ProgressBar(stream=stream, interval=0), FakeTrainer()
    for _ in range(5):
        bar.on_step_end(trainer, trainer.step())
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and [line.split(" | ")[0] for line in lines] == [f"step {i}" for i in range(1, 6)]
    assert lines[-1].split("| ")[-1].startswith(" 50% [")  # budget fraction and [elapsed<remaining]


def test_progress_lines_are_rate_limited_but_the_last_state_is_kept():
    stream = io.StringIO()
    bar, trainer = ProgressBar(stream=stream, interval=3600), FakeTrainer()
    for _ in range(4):
        bar.on_step_end(trainer, trainer.step())
    assert stream.getvalue() == ""  # within the interval: nothing yet
    bar.close()
    assert stream.getvalue().splitlines()[0].startswith("step 4 | ")  # the end state is always written


def test_metrics_log_appends_after_the_trimmed_file(tmp_path):
    run = RunDir(tmp_path)
    # Steps 6-7 were taken but never saved, and the kill tore the last line in two.
    run.metrics_path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8))
                                + '{"step": 8, "lo')
    notices = []
    run.trim_metrics(5, notice=notices.append)  # what Session.resume does at step 5
    assert notices == [f"notice: dropped 1 damaged line(s) of {run.metrics_path} (a write cut short)"]
    log, trainer = MetricsLog(run.metrics_path), FakeTrainer()
    trainer.state.step = 5
    log.on_train_start(trainer)
    log.on_step_end(trainer, trainer.step())
    log.on_nonfinite(trainer, {**trainer.step(), "loss": float("nan")})
    log.close()
    steps = [json.loads(line)["step"] for line in run.metrics_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_periodic_sampler_writes_on_its_interval_but_not_at_the_end():
    written, trainer = [], FakeTrainer(steps=6)
    sampler = PeriodicSampler(2, lambda: "text", written.append)
    for _ in range(6):
        sampler.on_step_end(trainer, trainer.step())
    assert written == ["--- sample at step 2 ---\ntext", "--- sample at step 4 ---\ntext"]
