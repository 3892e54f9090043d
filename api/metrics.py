"""Prometheus metrics of the API: a pure ASGI middleware that counts and times every HTTP request,
and `GET /metrics` (Prometheus' text format, outside /v1 and without authentication: serve it to
the scraper's network only). `MBPO_METRICS_ENABLED=false` leaves both out.

Labels are bounded: the route is the matched route's template (`/v1/runs/{run_id}`, never the raw
path; `<unmatched>` for a 404 that matched no route), the method one of the HTTP methods (else
`OTHER`). Errors (status >= 400) are also counted by their `error.code` when the body says one.

A pure ASGI middleware, not BaseHTTPMiddleware: it only watches the messages going by, so
streaming responses (SSE, chat streams) pass through untouched, one chunk at a time, and a request
costs about 10 microseconds (the label children are looked up once per label set). A stream's
duration is its whole life. `/metrics` also shows the run and queue gauges (infra.metrics).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.metrics import ServiceCollector, render, scrape_registry
from infra.settings import Settings

REQUESTS = Counter(
    "mbpo_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "mbpo_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method, route template and "
    "status class (2xx, 4xx, ...).",
    ["method", "route", "status_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ERRORS = Counter(
    "mbpo_http_errors",
    "Responses with status >= 400, by route template, status and error.code (`-` when the body names none).",
    ["route", "status", "code"],
)
IN_FLIGHT = Gauge(
    "mbpo_http_requests_in_flight", "Requests being answered (streams included).", multiprocess_mode="livesum"
)

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# error.code values are identifiers written in this code base; anything else is not a label value.
ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ERROR_BODY_BYTES = 4096  # error bodies are short; a longer one is not parsed


class RouteTemplates:
    """Route -> its template, the include prefixes applied. FastAPI puts the matched route in the
    scope, but as declared in its router (`/runs/{run_id}`, without the `/v1` of the include), so
    the templates come from `iter_route_contexts`, read once on the first request (the routes are
    all added by then)."""

    def __init__(self) -> None:
        self._contexts: list[Any] | None = None
        self._by_route: dict[int, str] = {}  # by id(): routes compare by value, unhashable

    def __call__(self, scope: Scope) -> str:
        if self._contexts is None:
            self._contexts = list(iter_route_contexts(scope["app"].router.routes))
            for context in self._contexts:
                self._by_route.setdefault(id(context.original_route), context.path_format)
        route = scope.get("route")
        if route is not None:
            return self._by_route.get(id(route)) or getattr(route, "path_format", None) or UNMATCHED
        # Answered before routing (e.g. a 413 of the body limit), or nothing matched (404).
        for context in self._contexts:
            match, _ = context.matches(scope)
            if match is not Match.NONE:
                return str(context.path_format)
        return UNMATCHED


def _error_code(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return "-"
    return code if isinstance(code, str) and ERROR_CODE.fullmatch(code) else "-"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route_template = RouteTemplates()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        error_body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(error_body) <= ERROR_BODY_BYTES:
                error_body.extend(message.get("body", b""))
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, watch)
        except BaseException:
            status = status or 500  # the server answers 500 for what escaped
            raise
        finally:
            IN_FLIGHT.dec()
            try:
                self._observe(scope, status, time.perf_counter() - start, error_body)
            except Exception:  # a metrics fault must not turn an answered request into an error
                log.exception("request metrics failed")

    def _observe(self, scope: Scope, status: int, seconds: float, error_body: bytearray) -> None:
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        route = self.route_template(scope)
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                REQUESTS.labels(method, route, str(status)),
                LATENCY.labels(method, route, f"{status // 100}xx"),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            code = _error_code(bytes(error_body)) if len(error_body) <= ERROR_BODY_BYTES else "-"
            ERRORS.labels(route, str(status), code).inc()


def mount_metrics(app: FastAPI, settings: Settings) -> None:
    """The request metrics around everything else, and GET /metrics (unless disabled). Called last
    in create_app, so the middleware is the outermost one and times the others too."""
    if not settings.metrics_enabled:
        return
    registry = scrape_registry(ServiceCollector(settings, app.state.session_factory))

    def metrics(_: Request) -> Response:  # sync: the collectors read the database and Redis
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics)
