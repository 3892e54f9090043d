"""GET /metrics: requests counted and timed by route template and status, errors by code, the run
and queue gauges, and MBPO_METRICS_ENABLED=false."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.deps import get_read_session_factory, get_session_factory
from infra.jobs import TaskName, get_celery
from infra.settings import Settings
from tests.api.conftest import KeyFor

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_requests_are_counted_by_route_template_and_status(client: TestClient, alice: KeyFor) -> None:
    before = scrape(client)
    assert client.get("/v1/runs/run_doesnotexist1", headers=alice.headers).status_code == 404
    assert client.get("/v1/runs/run_doesnotexist2", headers=alice.headers).status_code == 404
    assert client.post("/v1/runs", json={"name": 5}, headers=alice.headers).status_code == 422
    assert client.get("/v1/runs", headers=alice.headers).status_code == 200
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    requests = "mbpo_http_requests_total"
    assert delta(after, before, requests, method="GET", route="/v1/runs/{run_id}", status="404") == 2
    assert delta(after, before, requests, method="POST", route="/v1/runs", status="422") == 1
    assert delta(after, before, requests, method="GET", route="/v1/runs", status="200") == 1
    assert delta(after, before, requests, method="GET", route="<unmatched>", status="404") == 1
    # The histogram, by status class: its buckets count the same requests.
    latency = "mbpo_http_request_duration_seconds"
    assert (
        delta(after, before, latency + "_count", method="GET", route="/v1/runs/{run_id}", status_class="4xx")
        == 2
    )
    inf = {"method": "POST", "route": "/v1/runs", "status_class": "4xx", "le": "+Inf"}
    assert delta(after, before, latency + "_bucket", **inf) == 1
    # Errors by the error.code of their body.
    errors = "mbpo_http_errors_total"
    assert delta(after, before, errors, route="/v1/runs/{run_id}", status="404", code="not_found") == 2
    assert delta(after, before, errors, route="/v1/runs", status="422", code="validation_error") == 1
    # Raw paths never become labels.
    assert not any("doesnotexist" in value for _, labels in after for _, value in labels)
    assert after[("mbpo_http_requests_in_flight", ())] == 1  # the scrape itself


def test_metrics_show_runs_by_status_and_queue_depth(client: TestClient, settings: Settings) -> None:
    get_celery(settings).send_task(TaskName.validate_dataset.value, args=["dataset-x"])
    values = scrape(client)
    assert {"queued", "training", "succeeded", "failed"} <= {
        dict(labels)["status"] for name, labels in values if name == "mbpo_runs"
    }
    assert values[("mbpo_queue_depth", (("queue", "cpu"),))] >= 1
    assert values[("mbpo_metrics_source_up", (("source", "database"),))] == 1


def test_metrics_can_be_turned_off(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    app = create_app(settings.model_copy(update={"metrics_enabled": False}))
    app.dependency_overrides[get_session_factory] = lambda: session_factory
    app.dependency_overrides[get_read_session_factory] = lambda: session_factory
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200
