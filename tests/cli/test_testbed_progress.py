"""`mbpo testbed build` progress without a terminal: plain, throttled, flushed lines (`make run > log`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.testing import CliRunner

from mbpo_cli import testbed as testbed_cli
from mbpo_cli.testbed import LogBuildProgress, RichBuildProgress, format_duration, progress_reporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_name_the_phase_and_give_steps_and_eta_at_most_every_interval() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = LogBuildProgress(lines.append, interval_s=10.0, clock=clock)
    progress.start("images sft", 4)
    for _ in range(4):
        clock.now += 1.0
        progress.advance()
    progress.start("train base model", 100)
    for step in range(1, 101):  # one step per second: a line every 10 s
        clock.now += 1.0
        progress.advance(1, f"loss {1 / step:.3f}")
    progress.start("evaluate pope_random", 300)
    clock.now += 3.0
    progress.advance(64)
    progress.close()

    assert lines[:3] == [
        "[testbed] phase: rendering the splits",
        "[testbed] images sft: 0/4 images ...",
        "[testbed] images sft: 4/4 images, done in 4 s",
    ]
    assert lines[3:5] == [
        "[testbed] phase: training the base model",
        "[testbed] train base model: 0/100 steps ...",
    ]
    training = [line for line in lines if "train base model: " in line and "%" in line]
    first = "[testbed] train base model: 10/100 steps (10%), 10 s elapsed, ETA 1m30s  loss 0.100"
    assert training[0] == first
    assert len(training) == 9  # at 10, 20, ..., 90 steps; the 100th is the "done" line
    assert "[testbed] train base model: 100/100 steps, done in 1m40s  loss 0.010" in lines
    assert lines[-3:] == [
        "[testbed] phase: evaluating",
        "[testbed] evaluate pope_random: 0/300 samples ...",
        "[testbed] evaluate pope_random: 64/300 samples, stopped after 3 s",
    ]


def test_a_restarted_stage_is_closed_and_messages_pass_through() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = LogBuildProgress(lines.append, interval_s=5.0, clock=clock)
    progress.start("train base model", 1500)
    clock.now += 65.0
    progress.advance(600)
    progress.log("stuck run, restarting: yes/no loss 0.69 at step 600")
    progress.start("train base model (attempt 2)", 1500)
    assert lines[2:] == [
        "[testbed] train base model: 600/1500 steps (40%), 1m05s elapsed, ETA 1m38s",
        "[testbed] stuck run, restarting: yes/no loss 0.69 at step 600",
        "[testbed] train base model: 600/1500 steps, stopped after 1m05s",
        "[testbed] train base model (attempt 2): 0/1500 steps ...",  # same phase: no new phase line
    ]


def test_durations() -> None:
    durations = [format_duration(s) for s in (0, 9.6, 61, 3599, 3720)]
    assert durations == ["0 s", "10 s", "1m01s", "59m59s", "1h02m"]


class CountingFile(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_reporter_picks_plain_flushed_lines_without_a_terminal_and_bars_on_one() -> None:
    file = CountingFile()
    with progress_reporter(Console(file=file, force_terminal=False)) as progress:
        assert isinstance(progress, LogBuildProgress)
        progress.say("hello")
        assert file.flushed[-1] == "[testbed] hello\n"  # visible at once, not when a buffer fills
        progress.start("train base model", 2)
        progress.advance(1)
    assert file.getvalue().splitlines()[-1].startswith("[testbed] train base model: 1/2 steps, stopped after")
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    with progress_reporter(terminal) as progress:
        assert isinstance(progress, RichBuildProgress)


def _fake_report() -> dict[str, Any]:
    metrics = {"n": 300, "accuracy": 0.7, "precision": 0.7, "recall": 0.7, "f1": 0.7, "yes_ratio": 0.5}
    metrics |= {"false_yes_rate": 0.3, "iig_mean": 2.125}
    return {
        "seed": 0,
        "metrics": {"pope_random": metrics, "pope_adversarial": metrics},
        "false_yes_gap": 0.2,
        "positive_recall": {"anchor_recall": 0.9, "other_recall": 0.6},
        "train": {"attempts": 1},
        "eval_samples_per_s": 500.0,
        "timings": {"total_s": 3.0},
    }


def test_build_command_without_a_terminal_prints_progress_lines(monkeypatch, tmp_path: Path) -> None:
    """The real command and reporter; only the multi-minute build is replaced by its progress calls."""
    from transformers.utils import logging as transformers_logging

    import mbpo_core.testbed.build as build_module

    def fake_build(out: Path, spec: build_module.BuildSpec, progress: build_module.BuildProgress) -> dict:
        assert spec.train.steps == build_module.BuildSpec.quick().train.steps
        assert not transformers_logging.is_progress_bar_enabled()  # no carriage-return bars in logs
        progress.start("images sft", 3)
        for _ in range(3):
            progress.advance()
        progress.start("train base model", 20)
        for step in range(20):
            progress.advance(1, f"loss {1 / (step + 1):.3f} yes/no 0.300")
        progress.start("evaluate pope_random", 300)
        progress.advance(300)
        return _fake_report()

    monkeypatch.setattr(build_module, "build_testbed", fake_build)
    monkeypatch.setattr(testbed_cli, "PROGRESS_INTERVAL_S", 0.0)  # every step: no waiting in a test
    app = typer.Typer()
    testbed_cli.register(app)
    result = CliRunner().invoke(app, ["testbed", "build", "--quick", "--out", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"[testbed] building the quick testbed (seed 0) into {tmp_path / 'tb'}"
    assert lines[1] == "[testbed] loading torch and transformers ..."
    for expected in (
        "[testbed] phase: rendering the splits",
        "[testbed] images sft: 3/3 images, done in 0 s",
        "[testbed] phase: training the base model",
        "[testbed] train base model: 0/20 steps ...",
        "[testbed] phase: evaluating",
        "[testbed] evaluate pope_random: 300/300 samples, done in 0 s",
    ):
        assert expected in lines, expected
    steps = [line for line in lines if line.startswith("[testbed] train base model: ") and "ETA" in line]
    assert len(steps) == 19  # one line per step (interval 0) but the last: its "done" line
    assert steps[4].startswith("[testbed] train base model: 5/20 steps (25%), 0 s elapsed")
    assert "loss 0.200 yes/no 0.300" in steps[4]
    assert "\x1b[" not in result.output  # no terminal: no escape codes, no live bar
    assert "testbed built in 3 s" in result.output
    assert "…" not in result.output  # the metrics table at its natural width, not cut to 80 columns
    assert transformers_logging.is_progress_bar_enabled()  # restored
