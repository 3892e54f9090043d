"""`mbpo keys create`: API keys, shown once (only their hash is stored)."""

from __future__ import annotations

from typing import Annotated

import typer

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


def ensure_embedded_schema() -> None:
    from infra.db.migrate import upgrade_to_head
    from infra.settings import get_settings

    settings = get_settings()
    if settings.embedded:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head(settings.sqlalchemy_url)


def create_key(user: str, name: str, admin: bool) -> str:
    from api.auth.service import create_api_key
    from infra.db.session import get_session_factory
    from infra.settings import get_settings

    with get_session_factory(get_settings().sqlalchemy_url).begin() as session:
        _, key = create_api_key(session, user_name=user, key_name=name, admin=admin)
    return key


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="User the key belongs to (created if new).")],
    admin: Annotated[bool, typer.Option("--admin", help="The key sees every user's resources.")] = False,
    key_name: Annotated[str | None, typer.Option(help="Label of the key (default: the user name).")] = None,
) -> None:
    """Create an API key and print it. It is shown once: only its hash is stored."""
    ensure_embedded_schema()
    typer.echo(create_key(name, key_name or name, admin))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
