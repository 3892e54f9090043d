"""The Celery contract: JSON only, late acks, one routing table covering every task."""

from __future__ import annotations

from pathlib import Path

from infra.jobs import TASK_ROUTES, Queue, TaskName, celery_config
from infra.settings import Settings
from worker.app import create_worker_app


def test_config_is_json_only_late_ack_prefetch_one() -> None:
    conf = celery_config(Settings(home="/tmp/x", database_url=None, broker_url="redis://h:6379/0"))
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert {q.name for q in conf["task_queues"]} == {"cpu", "gpu", "inference"}


def test_every_registered_task_is_routed_and_every_route_is_registered() -> None:
    app = create_worker_app(Settings(home="/tmp/x", broker_url="redis://h:6379/0"))
    app.loader.import_default_modules()
    ours = {name for name in app.tasks if name.startswith("mbpo.")}
    assert ours == {t.value for t in TaskName} == set(TASK_ROUTES)
    for name, queue in TASK_ROUTES.items():
        assert app.amqp.router.route({}, name)["queue"].name == queue.value
        assert queue in Queue


def test_embedded_broker_lives_in_home() -> None:
    settings = Settings(home="/tmp/mbpo-home", database_url=None, broker_url=None)
    assert settings.embedded
    assert celery_config(settings)["broker_url"] == "sqla+sqlite:////tmp/mbpo-home/broker.db"
    assert settings.sqlalchemy_url == "sqlite:////tmp/mbpo-home/mbpo.db"


def test_embedded_broker_options_are_accepted_by_the_transport(tmp_path: Path) -> None:
    """kombu's SQLAlchemy transport passes transport options to create_engine(): a worker option
    there (such as polling_interval) crashes the embedded worker at start. Connect for real."""
    from infra.jobs import EMBEDDED_POLLING_INTERVAL, create_celery

    app = create_celery(Settings(home=tmp_path, database_url=None, broker_url=None))
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.transport.polling_interval == EMBEDDED_POLLING_INTERVAL
        with conn.SimpleQueue("cpu") as queue:
            queue.put({"x": 1})
            assert queue.get(timeout=5).payload == {"x": 1}
