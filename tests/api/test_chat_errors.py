"""Bad chat-completion input: each a clear 4xx in OpenAI's error shape, refused in the API before
any worker is involved. Image URLs: off by default; when on, loopback, private, link-local and
metadata addresses are refused, directly or behind a redirect (a local server redirects)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.deps import get_read_session_factory, get_session_factory
from api.errors import AppError
from api.inference.images import load_image_url
from infra.db.models import BaseModelRecord
from infra.settings import Settings
from tests.api.conftest import KeyFor
from tests.helpers.inference import data_url, png_bytes

PNG = png_bytes()


@pytest.fixture
def model_id(session_factory: sessionmaker[Session], alice: KeyFor) -> str:
    with session_factory.begin() as session:
        record = BaseModelRecord(
            owner_id=alice.user_id,
            name="tiny",
            path="/nonexistent/never-loaded",
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        session.add(record)
        session.flush()
        return f"model:{record.id}"


def _body(model: str, *parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    content = [*parts, {"type": "text", "text": "is there a red circle"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code, error
    assert set(error) >= {"message", "type", "param", "code"}  # OpenAI's shape
    assert error["message"]
    return error


def _post(client: TestClient, key: KeyFor, body: dict[str, Any]) -> Any:
    return client.post("/v1/chat/completions", json=body, headers=key.headers)


def test_unknown_model_is_404(client: TestClient, alice: KeyFor, bob: KeyFor, model_id: str) -> None:
    for name in ["model:mdl_nope", "run:run_nope", "run:run_nope@3", "gpt-4o", ""]:
        resp = _post(client, alice, _body(name, _image(data_url(PNG))))
        if name == "":
            _error(resp, 400, "validation_error")
            continue
        error = _error(resp, 404, "model_not_found")
        assert error["type"] == "invalid_request_error" and error["param"] == "model"
    _error(_post(client, bob, _body(model_id, _image(data_url(PNG)))), 404, "model_not_found")  # not bob's


def test_bad_images_are_400(client: TestClient, alice: KeyFor, model_id: str) -> None:
    cases = {
        "invalid_base64": "data:image/png;base64,@@not*base64@@",
        "unsupported_image_type": data_url(PNG, "image/bmp"),
        "image_type_mismatch": data_url(png_bytes(fmt="JPEG"), "image/png"),
        "invalid_image": data_url(b"\x89PNG\r\n\x1a\n but not really a png", "image/png"),
        "image_too_large": data_url(png_bytes(400, 400)),  # 160,000 pixels > the test limit 100,000
        "invalid_image_url": "data:image/png,rawnotbase64",
    }
    for code, url in cases.items():
        error = _error(_post(client, alice, _body(model_id, _image(url))), 400, code)
        assert error["param"] == "messages.0.content.0.image_url.url"
    bmp = png_bytes(fmt="BMP")
    _error(
        _post(client, alice, _body(model_id, _image(data_url(bmp, "image/png")))),
        400,
        "unsupported_image_type",
    )


def test_image_over_the_byte_limit(
    settings: Settings, session_factory: sessionmaker[Session], alice: KeyFor, model_id: str
) -> None:
    with _client(settings.model_copy(update={"max_image_bytes": 1000}), session_factory) as client:
        _error(
            _post(client, alice, _body(model_id, _image(data_url(png_bytes(56, 56))))), 400, "image_too_large"
        )


def test_too_many_images_empty_messages_and_other_shapes(
    client: TestClient, alice: KeyFor, model_id: str
) -> None:
    two = _body(model_id, _image(data_url(PNG)), _image(data_url(PNG)))
    _error(_post(client, alice, two), 400, "too_many_images")
    error = _error(_post(client, alice, {"model": model_id, "messages": []}), 400, "validation_error")
    assert error["param"] == "messages"
    _error(_post(client, alice, {"model": model_id}), 400, "validation_error")
    _error(_post(client, alice, _body(model_id, n=2)), 400, "validation_error")
    _error(_post(client, alice, _body(model_id, temperature=3)), 400, "validation_error")
    _error(_post(client, alice, _body(model_id, stop=["a", "b", "c", "d", "e"])), 400, "validation_error")
    _error(_post(client, alice, _body(model_id, max_tokens=10_000)), 400, "max_tokens_too_large")
    assistant_image = {
        "model": model_id,
        "messages": [{"role": "assistant", "content": [_image(data_url(PNG))]}],
    }
    _error(_post(client, alice, assistant_image), 400, "invalid_image")
    resp = client.post("/v1/chat/completions", json=_body(model_id))
    assert _error(resp, 401, "unauthorized")["type"] == "authentication_error"


def test_image_urls_refused_when_disabled(client: TestClient, alice: KeyFor, model_id: str) -> None:
    for url in ["https://example.com/cat.png", "http://127.0.0.1/x.png"]:
        _error(_post(client, alice, _body(model_id, _image(url))), 400, "image_urls_disabled")
    _error(_post(client, alice, _body(model_id, _image("ftp://example.com/x.png"))), 400, "invalid_image_url")


# ---- image URLs enabled -----------------------------------------------------------------------------


REDIRECTS = {
    "/to-loopback": "http://localhost:9/x.png",
    "/to-private": "http://10.1.2.3/x.png",
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-ipv6-loopback": "http://[::1]:9/x.png",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.end_headers()
            return
        if self.path == "/big.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\0" * 5000)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _client(settings: Settings, factory: sessionmaker[Session]) -> TestClient:
    app = create_app(settings)
    app.dependency_overrides[get_session_factory] = lambda: factory
    app.dependency_overrides[get_read_session_factory] = lambda: factory
    return TestClient(app)


@pytest.fixture
def url_settings(settings: Settings, image_server: str) -> Settings:
    # The local server stands in for a public image host; nothing else private is allowed.
    return settings.model_copy(
        update={"inference_allow_image_urls": True, "inference_url_allowlist": [image_server]}
    )


def test_image_urls_to_internal_addresses_are_refused(
    url_settings: Settings,
    session_factory: sessionmaker[Session],
    alice: KeyFor,
    model_id: str,
    image_server: str,
) -> None:
    port = image_server.split(":")[1]
    urls = [
        "http://127.0.0.1:1/x.png",
        f"http://localhost:{port}/x.png",  # the allowlist names 127.0.0.1:port, not every loopback name
        "http://10.0.0.8/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        *(f"http://{image_server}{path}" for path in REDIRECTS),
    ]
    with _client(url_settings, session_factory) as client:
        for url in urls:
            error = _error(_post(client, alice, _body(model_id, _image(url))), 400, "image_url_forbidden")
            assert "private" in error["message"], url


def test_fetched_images_are_checked_like_data_urls(url_settings: Settings, image_server: str) -> None:
    image = asyncio.run(load_image_url(f"http://{image_server}/ok.png", url_settings, "f"))
    assert image.data == PNG and (image.width, image.height) == (56, 56)
    small = url_settings.model_copy(update={"max_image_bytes": 1000})
    with pytest.raises(AppError) as excinfo:
        asyncio.run(load_image_url(f"http://{image_server}/big.png", small, "f"))
    assert excinfo.value.code == "image_too_large"


def test_resolved_names_are_reused_for_a_few_seconds_only(
    session_factory: sessionmaker[Session], alice: KeyFor, bob: KeyFor, model_id: str
) -> None:
    """The chat endpoint reuses a resolution for RESOLVE_CACHE_SECONDS (no database round trip),
    per principal: another user's request is still checked, and a failure is never reused."""
    from api.auth.service import Principal
    from api.errors import NotFound
    from api.inference.chat.service import resolve
    from api.inference.models import ResolvedModels

    lookups = 0

    class Counting(sessionmaker[Session]):
        def begin(self) -> Any:
            nonlocal lookups
            lookups += 1
            return session_factory.begin()

    factory = Counting()
    cache = ResolvedModels(ttl=0.3)
    owner = Principal(user_id=alice.user_id, key_id="k1", is_admin=False)
    other = Principal(user_id=bob.user_id, key_id="k2", is_admin=False)

    first = asyncio.run(resolve(factory, cache, owner, model_id))
    assert asyncio.run(resolve(factory, cache, owner, model_id)) == first and lookups == 1
    with pytest.raises(NotFound):  # bob has no access; alice's entry does not answer for him
        asyncio.run(resolve(factory, cache, other, model_id))
    with pytest.raises(NotFound):  # ...and is asked again, not served a cached refusal
        asyncio.run(resolve(factory, cache, other, model_id))
    assert lookups == 3
    with session_factory.begin() as session:  # deleted: refused once the entry has expired
        session.delete(session.get(BaseModelRecord, model_id.removeprefix("model:")))
    assert asyncio.run(resolve(factory, cache, owner, model_id)) == first and lookups == 3
    time.sleep(0.35)
    with pytest.raises(NotFound):
        asyncio.run(resolve(factory, cache, owner, model_id))
    assert lookups == 4


def test_no_inference_worker_is_a_504_and_the_request_is_withdrawn(
    settings: Settings, session_factory: sessionmaker[Session], alice: KeyFor, model_id: str
) -> None:
    """Nobody consumes the inference queue: after MBPO_INFERENCE_TIMEOUT_SECONDS the client gets a
    504 naming the likely cause, and neither the request nor its reply channel is left in Redis."""
    import redis

    from tests.helpers import services

    quick = settings.model_copy(update={"inference_timeout_seconds": 0.5})
    with _client(quick, session_factory) as client:
        error = _error(_post(client, alice, _body(model_id, _image(data_url(PNG)))), 504, "inference_timeout")
    assert "inference queue" in error["message"]
    store = redis.Redis.from_url(services.REDIS_URL)
    assert store.llen(f"{settings.broker_key_prefix}mbpo:inference:requests") == 0
    assert not list(store.scan_iter(match=f"{settings.broker_key_prefix}mbpo:reply:*"))
