"""`mbpo testbed build` and `mbpo eval`: build the CPU-scale testbed, score a model on manifests.

Heavy imports (torch, transformers) happen inside the commands so `mbpo --help` stays instant.

Progress (`progress_reporter`): a live bar per stage on a terminal; without one (a log file, a
pipe, `make run > log`) plain lines instead, flushed at once: each phase and stage as it starts,
then "done/total, elapsed, ETA" at most every `PROGRESS_INTERVAL_S`, and when the stage ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from mbpo_core.testbed.build import BuildSpec

console = Console()

# Without a terminal: a progress line per stage at most this often (and at its start and end).
PROGRESS_INTERVAL_S = 5.0
LOG_PREFIX = "[testbed]"
# The stages the build and `eval` report, by the label's first word: (phase, unit) for log lines.
# A label not listed is still reported, without a phase line or unit.
STAGE_KINDS = {
    "images": ("rendering the splits", "images"),
    "train": ("training the base model", "steps"),
    "extend": ("training the base model", "steps"),
    "evaluate": ("evaluating", "samples"),
}

TABLE_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "yes_ratio", "false_yes_rate", "iig_mean")
# Short headers keep the table readable in an 80-column terminal.
HEADERS = {
    "accuracy": "acc", "precision": "prec", "recall": "rec", "yes_ratio": "yes",
    "false_yes_rate": "false yes", "iig_mean": "IIG",
}  # fmt: skip


class Reporter(Protocol):
    """`mbpo_core.testbed.build.BuildProgress` (start, advance, log) plus `say`: a plain message."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, n: int = 1, info: str = "") -> None: ...

    def log(self, message: str) -> None: ...

    def say(self, message: str) -> None: ...


class RichBuildProgress:
    """One progress bar per stage (a terminal); implements `Reporter`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, stage: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total)
        self.task = self.progress.add_task(stage, total=total, info="")

    def advance(self, n: int = 1, info: str = "") -> None:
        self.progress.update(self.task, advance=n, info=info)

    def log(self, message: str) -> None:
        self.progress.console.print(message, style="yellow", markup=False, highlight=False)

    def say(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class LogBuildProgress:
    """Throttled plain progress lines (no terminal); implements `Reporter`.

    `write` gets one line at a time (no newline) and must make it visible at once (flush)."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write, self._interval_s, self._clock = write, interval_s, clock
        self._phase: str | None = None
        self._stage: str | None = None  # None: no stage open
        self._unit = ""
        self._total = self._done = 0
        self._info = ""
        self._started = self._last = 0.0

    def start(self, stage: str, total: int) -> None:
        self.close()
        phase, unit = STAGE_KINDS.get(stage.split(" ", 1)[0], (None, ""))
        if phase is not None and phase != self._phase:
            self.say(f"phase: {phase}")
        self._phase = phase
        self._stage, self._unit, self._total, self._done, self._info = stage, unit, total, 0, ""
        self._started = self._last = self._clock()
        self.say(f"{stage}: {self._count()} ...")

    def advance(self, n: int = 1, info: str = "") -> None:
        if self._stage is None:
            return
        self._done += n
        self._info = info or self._info
        if self._done >= self._total:
            self.close()
            return
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self.say(self._progress_line(now))

    def log(self, message: str) -> None:
        self.say(message)

    def say(self, message: str) -> None:
        self._write(f"{LOG_PREFIX} {message}")

    def close(self) -> None:
        """End the open stage, if any, with its final line."""
        if self._stage is None:
            return
        elapsed = format_duration(self._clock() - self._started)
        ending = f"done in {elapsed}" if self._done >= self._total else f"stopped after {elapsed}"
        info = f"  {self._info}" if self._info else ""
        self.say(f"{self._stage}: {self._count()}, {ending}{info}")
        self._stage = None

    def _count(self) -> str:
        return f"{self._done}/{self._total} {self._unit}".rstrip()

    def _progress_line(self, now: float) -> str:
        elapsed = now - self._started
        percent = 100 * self._done / self._total if self._total else 100.0
        line = f"{self._stage}: {self._count()} ({percent:.0f}%), {format_duration(elapsed)} elapsed"
        if self._done > 0:
            line += f", ETA {format_duration(elapsed * (self._total - self._done) / self._done)}"
        return line + (f"  {self._info}" if self._info else "")


def new_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def _line_writer(out: Console) -> Callable[[str], None]:
    def write(line: str) -> None:
        file = out.file  # looked up per line: tests swap sys.stdout
        file.write(line + "\n")
        file.flush()

    return write


@contextmanager
def progress_reporter(out: Console | None = None) -> Iterator[Reporter]:
    """Live bars on an interactive terminal; otherwise throttled, flushed log lines."""
    out = out or console
    if out.is_interactive:
        with new_progress() as progress:
            yield RichBuildProgress(progress)
        return
    reporter = LogBuildProgress(_line_writer(out), PROGRESS_INTERVAL_S)
    try:
        yield reporter
    finally:
        reporter.close()


def metrics_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("split", no_wrap=True)
    for column in TABLE_COLUMNS:
        table.add_column(HEADERS.get(column, column), justify="right")
    for split, values in metrics.items():
        cells = []
        for column in TABLE_COLUMNS:
            value = values.get(column)
            cells.append("-" if value is None else str(int(value)) if column == "n" else f"{value:.3f}")
        table.add_row(split, *cells)
    return table


def build_command(
    out: Path = typer.Option(..., "--out", help="Directory to create (must be empty or absent)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice: scenes, questions, model init."),
    quick: bool = typer.Option(
        False, "--quick", help="Small splits and a short run (tests; ~2 min on 2 cores)."
    ),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1 is fastest on a shared machine)."),
) -> None:
    """Build the testbed: every split under OUT/datasets/, the biased base model under OUT/base_model/."""
    from dataclasses import replace

    with progress_reporter() as progress:
        progress.say(f"building the {'quick' if quick else 'full'} testbed (seed {seed}) into {out}")
        progress.say("loading torch and transformers ...")
        from mbpo_core.testbed.build import BuildSpec, TestbedPropertyError, build_testbed

        spec: BuildSpec = BuildSpec.quick(seed) if quick else BuildSpec.full(seed)
        spec = replace(spec, train=replace(spec.train, num_threads=threads))
        progress.say(f"generating the scenes and questions ({spec.train.steps} training steps planned)")
        try:
            with _plain_library_output(progress):
                report = build_testbed(out, spec, progress)
        except TestbedPropertyError as error:
            failure: TestbedPropertyError | None = error
        else:
            failure = None
    if failure is not None:
        _print_report(json.loads((out / "build_report.json").read_text()))
        console.print(f"[bold red]testbed properties do not hold: {failure}")
        raise typer.Exit(code=1) from failure
    _print_report(report)
    console.print(f"[bold green]testbed built in {report['timings']['total_s']:.0f} s: {out}")


@contextmanager
def _plain_library_output(progress: Reporter) -> Iterator[None]:
    """Without a terminal, transformers' own bars (loading, saving weights) are carriage-return junk:
    off meanwhile."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    if enabled and isinstance(progress, LogBuildProgress):
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _print_table(table: Table) -> None:
    """Without a terminal rich assumes 80 columns and would truncate the cells: natural width then."""
    out = console if console.is_terminal else Console(file=console.file, width=200)
    out.print(table)


def _print_report(report: dict[str, Any]) -> None:
    _print_table(metrics_table(f"base model, seed {report['seed']}", report["metrics"]))
    recall = report["positive_recall"]
    summary = (
        f"false-yes gap adversarial - random: {report['false_yes_gap']:+.3f}   "
        f"recall on anchor positives {recall['anchor_recall']:.3f}, on others {recall['other_recall']:.3f}   "
        f"training attempts {report['train']['attempts']}   eval {report['eval_samples_per_s']:.0f} samples/s"
    )
    console.print(summary, soft_wrap=True)


# `mbpo eval` scores manifests itself and holds subcommands (`mbpo eval benchmark`, mbpo_cli/benchmark.py).
eval_app = typer.Typer(invoke_without_command=True, help="Score a model on manifests, or on a benchmark.")


@eval_app.callback()
def eval_command(
    ctx: typer.Context,
    model: Path | None = typer.Option(
        None, "--model", help="Model directory (save_pretrained + processor files)."
    ),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Manifest(s); the split name is the manifest's folder."
    ),
    out: Path | None = typer.Option(None, "--out", help="JSON file to write the metrics to."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Samples per split (yes/no balance kept)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    null_image: str = typer.Option("gray", "--null-image", help="IIG null image: gray, noise or blur."),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1 is fastest on a shared machine)."),
) -> None:
    """Score a model on manifests: POPE metrics for yes/no data, accuracy and mean IIG always.
    --model, --data and --out are required unless a subcommand follows."""
    if ctx.invoked_subcommand is not None:
        return
    for value, flag in ((model, "--model"), (data, "--data"), (out, "--out")):
        if not value:
            raise typer.BadParameter("required", param_hint=flag)
    assert model is not None and data is not None and out is not None
    import torch

    from mbpo_core.data.manifest import read_manifest
    from mbpo_core.evaluation.evaluate import evaluate_manifest
    from mbpo_core.models.loader import load_adapter

    names = [path.parent.name for path in data]
    if len(set(names)) != len(names):
        raise typer.BadParameter("two manifests share a folder name (the split name)", param_hint="--data")
    torch.set_num_threads(threads)
    splits: dict[str, dict[str, float]] = {}
    with progress_reporter() as progress, _plain_library_output(progress):
        adapter = load_adapter(model)
        for name, path in zip(names, data, strict=True):
            total = len(read_manifest(path)) if limit is None else min(limit, len(read_manifest(path)))
            progress.start(f"evaluate {name}", total)
            evaluation = evaluate_manifest(
                adapter,
                path,
                limit=limit,
                batch_size=batch_size,
                null_image=null_image,
                on_batch=progress.advance,
            )
            splits[name] = evaluation.metrics
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(model), "splits": splits}, indent=2))
    _print_table(metrics_table(str(model), splits))
    console.print(f"written: {out}")


def register(app: typer.Typer) -> None:
    testbed = typer.Typer(help="The CPU-scale testbed: a small world where modality imbalance is real.")
    testbed.command("build")(build_command)
    app.add_typer(testbed, name="testbed")
    app.add_typer(eval_app, name="eval")
