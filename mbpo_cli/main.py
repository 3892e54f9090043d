"""The `mbpo` command: each package contributes its own commands here.

- `api.cli`:       serve, api, keys
- `worker.cli`:    worker
- `mbpo_core.cli`: testbed, mine, train, eval, run
Heavy imports (torch, the web app) happen inside the commands, so `mbpo --help` is instant.
"""

from __future__ import annotations

import typer

from api import cli as api_cli
from mbpo_core import cli as core_cli
from worker import cli as worker_cli

app = typer.Typer(
    name="mbpo",
    help="MBPO alignment service: align vision-language models against hallucination.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for module in (api_cli, worker_cli, core_cli):
    module.register(app)

if __name__ == "__main__":
    app()
