"""`mbpo eval lmms-task`: write POPE's local files as an LMMS-Eval task folder, to score a served
model with LMMS-Eval through the OpenAI-compatible endpoint, offline (docs/benchmarks.md,
"LMMS-Eval"; the task itself: mbpo_core/evaluation/lmms.py)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from mbpo_cli.testbed import console, eval_app


def lmms_task_command(
    data: Path = typer.Option(
        ..., "--data", help="POPE question file, or a directory of them (a split each)."
    ),
    images: Path = typer.Option(..., "--images", help="Directory the questions' `image` names are in."),
    out: Path = typer.Option(..., "--out", help="Task directory to create (must be empty or absent)."),
    name: str = typer.Option(
        "mbpo_pope", "--name", help="Task name prefix: a task <name>_<split> per file, a group <name>."
    ),
) -> None:
    """Write an LMMS-Eval task folder for POPE from its local files; print the lmms_eval command."""
    if not re.fullmatch(r"\w+", name):
        raise typer.BadParameter("letters, digits and underscores only", param_hint="--name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise typer.BadParameter(f"{out} exists and is not an empty directory", param_hint="--out")
    from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError
    from mbpo_core.evaluation.lmms import write_pope_task

    try:
        task = write_pope_task(data, images, out, name=name)
    except BenchmarkDataError as error:
        console.print(f"[bold red]pope: {error}", soft_wrap=True)
        raise typer.Exit(code=2) from error
    console.print(
        f"LMMS-Eval task written: {task.path} ({task.questions} questions; "
        f"tasks: {', '.join(task.tasks)}{f'; group: {task.name}' if len(task.tasks) > 1 else ''})",
        soft_wrap=True,
    )
    console.print(
        "Score a served model with it (MODEL: model:<id> or run:<id>; KEY: an API key):\n"
        "  OPENAI_API_KEY=KEY HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \\\n"
        "  .venv-lmms/bin/python -m lmms_eval eval \\\n"
        "    --model openai --model_args model=MODEL,base_url=http://127.0.0.1:8000/v1 \\\n"
        f"    --tasks {task.name} --include_path {task.path} --log_samples --output_path lmms-results",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    eval_app.command("lmms-task")(lmms_task_command)
