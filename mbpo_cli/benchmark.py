"""`mbpo eval benchmark`: score a model on a benchmark (POPE, CHAIR, AMBER, MME, MMHal-Bench,
MMBench, MMStar, AI2D) from its official local files (docs/benchmarks.md), print the metric table and
save the answers as JSON lines. MMHal-Bench's judge model is configured here (--judge-url,
--judge-model, the key from an environment variable) and checked before the model loads.

Heavy imports (torch, the model) happen inside the command so `mbpo --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mbpo_cli.testbed import _plain_library_output, _print_table, console, eval_app, progress_reporter
from mbpo_core.evaluation.benchmarks import BENCHMARKS

NAMES = tuple(BENCHMARKS)


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
        ..., "--data", help="The benchmark's files: a question / query / annotation / TSV file or its folder."
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Image directory (POPE, CHAIR, AMBER, MMHal-Bench); for the TSV benchmarks the folder "
        "their base64 images decode to (default: <tsv stem>_images/ beside the file).",
    ),
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
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="MMHal-Bench: the judge's OpenAI-compatible URL (.../v1)."
    ),
    judge_model: str | None = typer.Option(None, "--judge-model", help="MMHal-Bench: the judge model name."),
    judge_key_env: str | None = typer.Option(
        None,
        "--judge-key-env",
        help="MMHal-Bench: environment variable holding the judge's API key (default: OPENAI_API_KEY "
        "when set; none for a local server).",
    ),
) -> None:
    """Score a model on a benchmark from its official local files; print the metrics."""
    if name not in NAMES:
        raise typer.BadParameter(
            f"unknown benchmark {name!r}; one of {', '.join(NAMES)}", param_hint="--name"
        )
    if captions is not None and name != "chair":
        raise typer.BadParameter("only CHAIR scores captions made elsewhere", param_hint="--captions")
    if captions is None and model is None:
        raise typer.BadParameter("required (or --captions for CHAIR)", param_hint="--model")
    from mbpo_core.evaluation.benchmarks import chair
    from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, scored_by_judge

    benchmark = BENCHMARKS[name]
    score_options = {}
    if scored_by_judge(benchmark) or any(o is not None for o in (judge_url, judge_model, judge_key_env)):
        score_options["judge"] = _judge(name, judge_url, judge_model, judge_key_env)
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

    from mbpo_core.evaluation.benchmarks.judge import JudgeError
    from mbpo_core.evaluation.benchmarks.runner import generate_answers, write_predictions
    from mbpo_core.models.device import resolve_device, resolve_dtype
    from mbpo_core.models.loader import load_adapter

    torch.set_num_threads(threads)
    with progress_reporter() as progress, _plain_library_output(progress):
        resolved = resolve_device(device)
        adapter = load_adapter(model, device=resolved, dtype=resolve_dtype("auto", resolved))
        progress.start(f"evaluate {name}", len(items))
        answers = generate_answers(
            adapter,
            items,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens or benchmark.MAX_NEW_TOKENS,
            on_batch=progress.advance,
        )
    if out is not None:  # before scoring: a judge that fails leaves the answers saved
        write_predictions(out, items, answers)
        console.print(f"answers written: {out}")
    try:
        metrics = benchmark.score(items, answers, **score_options)
    except JudgeError as error:
        console.print(f"[bold red]{name}: {error}", soft_wrap=True)
        raise typer.Exit(code=1) from error
    _print_table(metrics_table(f"{name}: {model}", metrics))


def _judge(name: str, url: str | None, model: str | None, key_env: str | None) -> object:
    """The judge a benchmark scored by one needs, built from the options; a usage error (exit 2)
    when it is missing or given to a benchmark that takes none. Nothing is sent yet."""
    from mbpo_core.evaluation.benchmarks.common import scored_by_judge
    from mbpo_core.evaluation.benchmarks.judge import ChatJudge, api_key_from_env

    if not scored_by_judge(BENCHMARKS[name]):
        raise typer.BadParameter(f"{name} is not scored by a judge model", param_hint="--judge-url")
    if url is None or model is None:
        raise typer.BadParameter(
            f"{name} is scored by a judge model: give --judge-url and --judge-model "
            "(an OpenAI-compatible server you run)",
            param_hint="--judge-url / --judge-model",
        )
    try:
        return ChatJudge(url=url, model=model, api_key=api_key_from_env(key_env))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--judge-url / --judge-key-env") from error


def register(app: typer.Typer) -> None:
    eval_app.command("benchmark")(benchmark_command)
