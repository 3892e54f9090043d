"""`mbpo train` (hybrid GRPO on mined pairs + online prompts) and `mbpo run` (the whole pipeline).

Heavy imports (torch, TRL) happen inside the commands so `mbpo --help` stays instant.
Ctrl-C during training asks the trainer to stop after the current step and save a checkpoint;
`--resume` continues from it. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from mbpo_core.config import MBPOConfig


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("run")(run)


SET_HELP = (
    "Override one setting: dotted.key=value, e.g. --set train.learning_rate=1e-5 (repeatable; "
    "values are JSON or YAML: 3, 1e-5, true, null, [a, b])."
)


def load_config(path: Path | None, overrides: list[str] | None = None) -> MBPOConfig:
    from mbpo_core.config import apply_overrides

    try:
        if path is not None:
            return MBPOConfig.from_yaml(path, overrides or [])
        return MBPOConfig.model_validate(apply_overrides({}, overrides or []))
    except ValueError as exc:  # pydantic's ValidationError and OverrideError name the field
        raise typer.BadParameter(str(exc), param_hint="--config / --set") from exc


class StopRequest:
    """Set by the first Ctrl-C; the trainer polls it between steps."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_interrupt() -> Iterator[StopRequest]:
    request = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        typer.echo("\nstopping after this step (checkpoint will be saved; Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar; yields a ProgressCallback that advances it and shows key metrics."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mbpo_core.training.progress import ProgressEvent

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=None, metrics="")

        def report(event: ProgressEvent) -> None:
            shown = ("loss", "reward_mean", "reward_online_mean", "reward_offline_mean", "kl")
            text = " ".join(f"{k}={event.metrics[k]:.3g}" for k in shown if k in event.metrics)
            bar.update(task, completed=event.step, total=event.total, metrics=text)

        yield report


def train(
    model: Path = typer.Option(..., "--model", help="Base model directory (safetensors, local)."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoints/ and the final model/."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Mined pairs (pairs.jsonl from `mbpo mine`)."),
    online: Path | None = typer.Option(
        None, "--online", help="Manifest of online prompts (verified rewards)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="MBPOConfig YAML (only `train` and seed/device used)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Hybrid offline/online GRPO: mined pairs and online prompts with verified rewards."""
    if pairs is None and online is None:
        raise typer.BadParameter("give --pairs, --online or both")
    from mbpo_core.training.session import train_policy

    settings = load_config(config, overrides)
    with stop_on_interrupt() as stop, progress_bar("training") as report:
        result = train_policy(
            model, out, settings, online=online, pairs=pairs, progress=report, should_stop=stop, resume=resume
        )
    summary = {
        "steps": result.steps,
        "cancelled": result.cancelled,
        "model": str(result.model_dir) if result.model_dir else None,
        "skipped_pairs": result.skipped_pairs,
    }
    typer.echo(json.dumps(summary, indent=2))
    if result.cancelled:
        raise typer.Exit(code=130)


def run(
    config: Path = typer.Option(..., "--config", help="Run spec YAML: paths + `config:` (an MBPOConfig)."),
    out: Path | None = typer.Option(None, "--out", help="Override the spec's output directory."),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """The whole pipeline without the service: score -> mine -> train -> evaluate, then report.json."""
    from mbpo_core.pipeline.spec import RunSpec, run_pipeline

    try:
        spec = RunSpec.from_yaml(config, overrides or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config / --set") from exc
    if out is not None:
        spec = spec.model_copy(update={"out": out})
    with stop_on_interrupt() as stop, progress_bar("pipeline") as report:
        report_path = run_pipeline(spec, progress=report, should_stop=stop)
    typer.echo(report_path.read_text())
