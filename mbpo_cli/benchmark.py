"""`mbpo eval benchmark`: score a model on POPE, CHAIR, AMBER or MME from their official local files
(docs/benchmarks.md), print the metric table and save the answers as JSON lines.

Heavy imports (torch, the model) happen inside the command so `mbpo --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mbpo_cli.testbed import _plain_library_output, _print_table, console, eval_app, progress_reporter

NAMES = ("pope", "chair", "amber", "mme")


def metrics_table(title: str, tables: dict[str, dict[str, float]]) -> Table:
    """One row per split / subtask / dimension, one column per metric any row has."""
    columns: list[str] = []
    for row in tables.values():
        columns += [c for c in row if c not in columns]
    table = Table(title=title)
    table.add_column("", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in tables.items():
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append(
                "-" if value is None else str(int(value)) if column in ("n", "mentions") else f"{value:.3f}"
            )
        table.add_row(name, *cells)
    return table


def benchmark_command(
    name: str = typer.Option(..., "--name", help=f"Benchmark: {', '.join(NAMES)}."),
    data: Path = typer.Option(
        ..., "--data", help="The benchmark's files: a question / query / annotation file or its folder."
    ),
    images: Path | None = typer.Option(None, "--images", help="Image directory (POPE, CHAIR, AMBER)."),
    model: Path | None = typer.Option(
        None, "--model", help="Model directory (save_pretrained + processor files)."
    ),
    captions: Path | None = typer.Option(
        None,
        "--captions",
        help='CHAIR only: score these captions ([{"image_id", "caption"}]) instead of a model.',
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    out: Path | None = typer.Option(None, "--out", help="JSON-lines file for the answers (one per item)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, help="Answer length (default: the benchmark's own)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1 is fastest on a shared machine)."),
) -> None:
    """Score a model on a hallucination benchmark from its local files; print the metrics."""
    if name not in NAMES:
        raise typer.BadParameter(
            f"unknown benchmark {name!r}; one of {', '.join(NAMES)}", param_hint="--name"
        )
    if captions is not None and name != "chair":
        raise typer.BadParameter("only CHAIR scores captions made elsewhere", param_hint="--captions")
    if captions is None and model is None:
        raise typer.BadParameter("required (or --captions for CHAIR)", param_hint="--model")
    from mbpo_core.evaluation.benchmarks import BENCHMARKS, chair
    from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError

    benchmark = BENCHMARKS[name]
    try:
        if captions is not None:
            _print_table(metrics_table(f"chair: {captions}", chair.score_captions(captions, data)))
            return
        items = benchmark.load(data, images)
    except BenchmarkDataError as error:
        console.print(f"[bold red]{name}: {error}", soft_wrap=True)
        raise typer.Exit(code=2) from error
    assert model is not None
    items = items[:limit] if limit is not None else items

    import torch

    from mbpo_core.evaluation.benchmarks.runner import evaluate_benchmark, write_predictions
    from mbpo_core.models.device import resolve_device, resolve_dtype
    from mbpo_core.models.loader import load_adapter

    torch.set_num_threads(threads)
    with progress_reporter() as progress, _plain_library_output(progress):
        resolved = resolve_device(device)
        adapter = load_adapter(model, device=resolved, dtype=resolve_dtype("auto", resolved))
        progress.start(f"evaluate {name}", len(items))
        result = evaluate_benchmark(
            adapter,
            benchmark,
            items,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            on_batch=progress.advance,
        )
    if out is not None:
        write_predictions(out, items, result.answers)
    _print_table(metrics_table(f"{name}: {model}", result.metrics))
    if out is not None:
        console.print(f"answers written: {out}")


def register(app: typer.Typer) -> None:
    eval_app.command("benchmark")(benchmark_command)
