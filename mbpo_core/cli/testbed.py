"""`mbpo testbed build` and `mbpo eval`: build the CPU-scale testbed, score a model on manifests.

Heavy imports (torch, transformers) happen inside the commands so `mbpo --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from mbpo_core.testbed.build import BuildSpec

console = Console()

TABLE_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "yes_ratio", "false_yes_rate", "iig_mean")
# Short headers keep the table readable in an 80-column terminal.
HEADERS = {
    "accuracy": "acc", "precision": "prec", "recall": "rec", "yes_ratio": "yes",
    "false_yes_rate": "false yes", "iig_mean": "IIG",
}  # fmt: skip


class RichBuildProgress:
    """One progress bar per stage; implements `mbpo_core.testbed.build.BuildProgress`."""

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
        self.progress.console.print(f"[yellow]{message}")


def new_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


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

    from mbpo_core.testbed.build import BuildSpec, TestbedPropertyError, build_testbed

    spec: BuildSpec = BuildSpec.quick(seed) if quick else BuildSpec.full(seed)
    spec = replace(spec, train=replace(spec.train, num_threads=threads))
    try:
        with new_progress() as progress:
            report = build_testbed(out, spec, RichBuildProgress(progress))
    except TestbedPropertyError as failure:
        _print_report(json.loads((out / "build_report.json").read_text()))
        console.print(f"[bold red]testbed properties do not hold: {failure}")
        raise typer.Exit(code=1) from failure
    _print_report(report)
    console.print(f"[bold green]testbed built in {report['timings']['total_s']:.0f} s: {out}")


def _print_report(report: dict[str, Any]) -> None:
    console.print(metrics_table(f"base model, seed {report['seed']}", report["metrics"]))
    recall = report["positive_recall"]
    console.print(
        f"false-yes gap adversarial - random: {report['false_yes_gap']:+.3f}   "
        f"recall on anchor positives {recall['anchor_recall']:.3f}, on others {recall['other_recall']:.3f}   "
        f"training attempts {report['train']['attempts']}   eval {report['eval_samples_per_s']:.0f} samples/s"
    )


def eval_command(
    model: Path = typer.Option(..., "--model", help="Model directory (save_pretrained + processor files)."),
    data: list[Path] = typer.Option(
        ..., "--data", help="Manifest(s); the split name is the manifest's folder."
    ),
    out: Path = typer.Option(..., "--out", help="JSON file to write the metrics to."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Samples per split (yes/no balance kept)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    null_image: str = typer.Option("gray", "--null-image", help="IIG null image: gray, noise or blur."),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1 is fastest on a shared machine)."),
) -> None:
    """Score a model on manifests: POPE metrics for yes/no data, accuracy and mean IIG always."""
    import torch

    from mbpo_core.evaluation import evaluate_manifest
    from mbpo_core.manifest import read_manifest
    from mbpo_core.models import load_adapter

    names = [path.parent.name for path in data]
    if len(set(names)) != len(names):
        raise typer.BadParameter("two manifests share a folder name (the split name)", param_hint="--data")
    torch.set_num_threads(threads)
    adapter = load_adapter(model)
    splits: dict[str, dict[str, float]] = {}
    with new_progress() as progress:
        for name, path in zip(names, data, strict=True):
            total = len(read_manifest(path)) if limit is None else min(limit, len(read_manifest(path)))
            task = progress.add_task(f"evaluate {name}", total=total, info="")

            def advance(n: int, task: Any = task) -> None:
                progress.update(task, advance=n)

            evaluation = evaluate_manifest(
                adapter, path, limit=limit, batch_size=batch_size, null_image=null_image, on_batch=advance
            )
            splits[name] = evaluation.metrics
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(model), "splits": splits}, indent=2))
    console.print(metrics_table(str(model), splits))
    console.print(f"written: {out}")


def register(app: typer.Typer) -> None:
    testbed = typer.Typer(help="The CPU-scale testbed: a small world where modality imbalance is real.")
    testbed.command("build")(build_command)
    app.add_typer(testbed, name="testbed")
    app.command("eval")(eval_command)
