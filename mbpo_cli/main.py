"""The `mbpo` command. One module per command group; each exposes `register(app)`:

- `serve.py`:   serve (the service with a local worker), api (the web app alone)
- `keys.py`:    keys create
- `worker.py`:  worker (one Celery worker)
- `testbed.py`: testbed build, eval
- `benchmark.py`: eval benchmark (POPE, CHAIR, AMBER, MME from their local files)
- `lmms.py`:    eval lmms-task (POPE as a local LMMS-Eval task)
- `mine.py`:    mine
- `train.py`:   train, run (the whole pipeline without the service)
- `data.py`:    data convert, data export-pairs

The commands call functions of `api`, `worker`, `infra` and `mbpo_core`; they hold no logic of
their own beyond parsing flags and printing. Heavy imports (torch, the web app) happen inside the
commands, so `mbpo --help` is instant.
"""

from __future__ import annotations

import typer

from mbpo_cli import benchmark, data, keys, lmms, mine, serve, testbed, train, worker

app = typer.Typer(
    name="mbpo",
    help="MBPO alignment service: align vision-language models against hallucination.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for module in (serve, keys, worker, testbed, benchmark, lmms, mine, train, data):
    module.register(app)

if __name__ == "__main__":
    app()
