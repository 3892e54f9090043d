"""Core commands of `mbpo`, one module each; none needs a server.

testbed.py: `testbed build`, `eval`   mine.py: `mine`   train.py: `train`, `run`
"""

from __future__ import annotations

import typer

from mbpo_core.cli import mine, testbed, train


def register(app: typer.Typer) -> None:
    for module in (testbed, mine, train):
        module.register(app)
