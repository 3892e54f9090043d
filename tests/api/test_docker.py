"""docker/: the compose file parses, wires the stack, and names only settings the code reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
MBPO_SERVICES = ("migrate", "api", "worker-cpu", "worker")


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["worker"]["build"]["dockerfile"] == "docker/Dockerfile.worker"


def test_every_setting_named_is_read_by_the_settings_class() -> None:
    known = Settings.env_names()
    services = compose()["services"]
    for name in MBPO_SERVICES:
        env = services[name]["environment"]
        assert set(env) <= known, (name, set(env) - known)
        assert {"DATABASE_URL", "BROKER_URL", "MBPO_HOME"} <= set(env)


def test_compose_settings_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in compose()["services"]["api"]["environment"].items():
        monkeypatch.setenv(name, str(value).replace("${POSTGRES_PASSWORD:-mbpo}", "pw"))
    settings = Settings()  # type: ignore[call-arg]
    assert settings.env == "production" and not settings.embedded
    assert settings.database_url == "postgresql+psycopg://mbpo:pw@postgres:5432/mbpo"


def test_dockerfiles_install_cpu_torch_for_the_api_and_cuda_for_the_worker() -> None:
    api = (DOCKER / "Dockerfile.api").read_text()
    worker = (DOCKER / "Dockerfile.worker").read_text()
    assert "whl/cpu" in api and '"torch==2.13.0"' in api
    assert worker.startswith("#") and "FROM nvidia/cuda:" in worker
    assert 'mbpo", "worker"' in worker


def test_dockerfiles_copy_every_package_the_project_installs() -> None:
    import tomllib

    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        text = (DOCKER / dockerfile).read_text()
        missing = [p for p in packages if f"COPY {p} ./{p}" not in text]
        assert not missing, (dockerfile, missing)
