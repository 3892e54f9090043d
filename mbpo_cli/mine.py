"""`mbpo mine`: adversarial hard-negative mining of one manifest into a pairs directory.

Heavy imports happen inside the command so `mbpo --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mbpo_core.config import MBPOConfig


def register(app: typer.Typer) -> None:
    app.command("mine")(mine)


def mine(
    model: Path = typer.Option(..., "--model", help="Model directory (local, safetensors)."),
    data: Path = typer.Option(..., "--data", help="Manifest (JSONL) of the offline pool, images beside it."),
    out: Path = typer.Option(..., "--out", help="Output directory; re-running with it resumes."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N samples after the IIG filter."),
    config: Path | None = typer.Option(None, "--config", help="MBPOConfig YAML (iig, attack, mining, seed)."),
) -> None:
    """IIG filter -> PGD on the image -> decode -> keep the answers the verifier rejects."""
    import torch
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mbpo_core.mining.mine import mine as run_mining
    from mbpo_core.models.device import resolve_device, resolve_dtype
    from mbpo_core.models.loader import load_adapter

    settings = MBPOConfig.from_yaml(config) if config else MBPOConfig.model_validate({})
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    torch.manual_seed(settings.seed)
    adapter = load_adapter(model, device=device, dtype=dtype)

    columns = (
        TextColumn("{task.description:<7}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        summary = run_mining(adapter, data, out, settings, limit=limit, on_progress=report)
    shown = {k: v for k, v in summary.to_dict().items() if k != "config"}
    typer.echo(json.dumps(shown, indent=2))
    typer.echo(f"pairs: {out / 'pairs.jsonl'}  summary: {out / 'summary.json'}")
