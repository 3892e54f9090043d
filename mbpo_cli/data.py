"""`mbpo data`: datasets in other formats converted to a manifest directory, and mined pairs
exported as a TRL preference dataset (mbpo_core.data.formats; docs/api.md, "Dataset formats")."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Convert datasets and export mined pairs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("convert")
def convert(
    src: Path = typer.Argument(
        ..., help="HF datasets directory, parquet file/directory, TRL JSONL, LLaVA JSON."
    ),
    out_dir: Path = typer.Argument(..., help="New directory for manifest.jsonl and images/."),
    format: str = typer.Option("auto", "--format", help="auto | hf_disk | parquet | trl | llava"),
    column: list[str] = typer.Option(
        [], "--column", help="FIELD=COLUMN for hf_disk/parquet, e.g. --column question=query (repeatable)."
    ),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", help="Refuse images larger than this."),
    max_bytes: int = typer.Option(
        50 * 1024 * 1024, "--max-bytes", help="Refuse image files larger than this."
    ),
) -> None:
    """Write a manifest directory from a dataset in another format; exits 1 naming every bad row."""
    from mbpo_core.data.formats import convert as run_convert
    from mbpo_core.data.manifest import ManifestError

    columns = {}
    for item in column:
        field, sep, name = item.partition("=")
        if not sep or not field or not name:
            raise typer.BadParameter(f"{item!r} is not FIELD=COLUMN", param_hint="--column")
        columns[field] = name
    if out_dir.exists() and any(out_dir.iterdir()):
        raise typer.BadParameter(f"{out_dir} is not empty", param_hint="OUT_DIR")
    try:
        result = run_convert(
            src, out_dir, format=format, columns=columns, max_pixels=max_pixels, max_bytes=max_bytes
        )
    except ManifestError as exc:
        raise typer.BadParameter(exc.message, param_hint=exc.field or "SRC") from exc
    for error in result.errors:
        typer.echo(json.dumps(error.as_dict()), err=True)
    typer.echo(
        f"{result.format}: {result.samples} samples of {result.rows} rows -> {out_dir / 'manifest.jsonl'}"
    )
    if result.errors:
        typer.echo(f"{len(result.errors)} row(s) refused (above)", err=True)
        raise typer.Exit(1)


@data_app.command("export-pairs")
def export_pairs(
    pairs: Path = typer.Argument(
        ..., help="pairs.jsonl of mining, or the directory (or run directory) holding it."
    ),
    out: Path = typer.Option(..., "--out", help="Parquet file to write."),
) -> None:
    """Mined pairs as a TRL preference dataset (prompt, images, chosen, rejected) in parquet."""
    from mbpo_core.data.formats import pairs_to_preference_parquet
    from mbpo_core.data.pairs import PAIRS_FILE

    for candidate in (pairs, pairs / PAIRS_FILE, pairs / "mining" / PAIRS_FILE):
        if candidate.is_file():
            count = pairs_to_preference_parquet(candidate, out)
            typer.echo(f"{count} pairs -> {out}")
            return
    raise typer.BadParameter(f"no {PAIRS_FILE} at {pairs}", param_hint="PAIRS")
