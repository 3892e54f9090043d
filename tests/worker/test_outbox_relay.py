"""A dataset created while the broker is down is validated once the broker is back, by the worker
that was running all along (its outbox relay sends the job): no worker restart. The broker is a
private redis-server the test stops and starts; the API runs in-process, the worker is
`mbpo worker`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth.service import create_api_key
from infra.settings import Settings
from tests.helpers import datasets as ds
from tests.helpers import services
from tests.worker.conftest import settings_env


@pytest.fixture
def stack(committed_db: str, tmp_path: Path) -> Iterator[tuple[Settings, services.PrivateRedis, Path]]:
    with services.private_redis(tmp_path / "redis") as broker:
        (tmp_path / "roots").mkdir()
        settings = Settings(
            env="test",
            home=tmp_path / "home",
            database_url=committed_db,
            broker_url=broker.url,
            broker_key_prefix=services.broker_prefix(),
            data_roots=[tmp_path / "roots"],
            max_image_pixels=100_000,
        )
        log = tmp_path / "worker.log"
        worker = services.start_mbpo(
            ["worker", "--queues", "cpu", "--concurrency", "1"], settings_env(settings), log
        )
        try:
            services.wait_for(
                lambda: worker.poll() is not None or "ready." in log.read_text(errors="replace"),
                timeout=90,
                what="celery worker to start",
            )
            assert worker.poll() is None, log.read_text()
            yield settings, broker, log
        finally:
            services.stop_process_group(worker)


def test_a_dataset_created_while_the_broker_is_down_is_validated_when_it_is_back(
    stack: tuple[Settings, services.PrivateRedis, Path], pg_factory: sessionmaker[Session]
) -> None:
    settings, broker, log = stack
    ds.make_dataset_dir(settings.data_roots[0] / "shapes")
    with pg_factory.begin() as session:
        _, key = create_api_key(session, user_name="relay", key_name="relay", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        broker.stop()
        created = client.post(
            "/v1/datasets",
            json={"name": "while down", "path": str(settings.data_roots[0] / "shapes")},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        dataset_id = created.json()["id"]
        services.wait_for(
            lambda: "outbox relay: cannot send" in log.read_text(errors="replace"),
            timeout=30,
            what="the worker's relay to meet the outage",
        )
        assert client.get(f"/v1/datasets/{dataset_id}", headers=headers).json()["status"] == "validating"

        broker.start()

        def validated() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/v1/datasets/{dataset_id}", headers=headers).json()
            return body if body["status"] != "validating" else None

        body = services.wait_for(validated, timeout=60, interval=0.3, what="validation after the outage")
    assert body["status"] == "ready", body
    assert "outbox relay: sent 1 job(s)" in log.read_text(errors="replace")
