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


MONITORING = ("prometheus", "grafana")


def test_monitoring_runs_only_with_its_profile() -> None:
    services = compose()["services"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
    others = set(services) - set(MONITORING)
    assert all("profiles" not in services[name] for name in others)  # a plain `up` starts them


def test_scrape_targets_are_the_services_and_their_ports() -> None:
    services = compose()["services"]
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in scrape["scrape_configs"]
    }
    api_port = services["api"]["ports"][0].split(":")[-1]
    assert targets["mbpo-api"] == [f"api:{api_port}"]
    workers = [n for n, s in services.items() if "worker" in s.get("command", [])[:2]]
    assert sorted(workers) == ["worker", "worker-cpu", "worker-inference"]
    expected = [f"{name}:{services[name]['environment']['MBPO_WORKER_METRICS_PORT']}" for name in workers]
    assert sorted(targets["mbpo-worker"]) == sorted(expected)
    assert services["prometheus"]["volumes"][0].startswith("./prometheus.yml:")


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    import json

    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/mbpo-dashboard.json"].startswith("/var/lib/grafana/dashboards/")
    source = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/mbpo.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DOCKER / "grafana/mbpo-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "mbpo_http_requests_total",
        "mbpo_http_request_duration_seconds_bucket",
        "mbpo_runs",
        "mbpo_queue_depth",
        "mbpo_train_step_seconds_bucket",
        "mbpo_train_tokens_total",
        "mbpo_worker_device_memory_bytes",
    ):
        assert metric in exprs, metric
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["datasources"][0]["uid"]}
