"""Settings come from the environment, through one cached get_settings()."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError

from infra.settings import Settings, get_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_defaults_are_embedded(clean_env: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    assert settings.embedded
    assert settings.home == Path(".mbpo")
    assert settings.sqlalchemy_url.startswith("sqlite:///") and settings.sqlalchemy_url.endswith(
        "/.mbpo/mbpo.db"
    )
    assert settings.data_roots == []
    assert get_settings() is settings  # cached


def test_environment_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MBPO_HOME", str(tmp_path))
    clean_env.setenv("DATABASE_URL", "postgresql://u@db:5432/mbpo")
    clean_env.setenv("BROKER_URL", "redis://redis:6379/0")
    clean_env.setenv("MBPO_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    clean_env.setenv("MBPO_MAX_IMAGE_PIXELS", "1234")
    settings = get_settings()
    assert settings.database_url == "postgresql+psycopg://u@db:5432/mbpo"  # psycopg 3 driver
    assert settings.celery_broker_url == "redis://redis:6379/0"
    assert settings.data_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.max_image_pixels == 1234
    assert not settings.embedded


def test_production_refuses_embedded_mode(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MBPO_ENV", "production")
    with pytest.raises(ValidationError, match="production needs DATABASE_URL and BROKER_URL"):
        get_settings()


def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MBPO_MAX_UPLOAD_BYTES", "-1")
    with pytest.raises(ValidationError, match="max_upload_bytes"):
        get_settings()


def test_every_setting_is_documented() -> None:
    """docs/configuration.md has a row for every setting (under one of its variable names) and none
    for a setting that does not exist."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", doc, re.MULTILINE))
    undocumented = []
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = (
            {str(c) for c in alias.choices} if isinstance(alias, AliasChoices) else {f"MBPO_{name.upper()}"}
        )
        if not names & rows:
            undocumented.append(sorted(names)[0])
    assert undocumented == [], "add these to the settings table of docs/configuration.md"
    assert rows <= Settings.env_names(), rows - Settings.env_names()


def test_importing_the_app_builds_nothing(clean_env: pytest.MonkeyPatch) -> None:
    import importlib

    import api.app

    importlib.reload(api.app)
    assert get_settings.cache_info().currsize == 0
