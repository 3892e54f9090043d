"""The official `openai` client against the running service (`mbpo api` + a real `mbpo worker` on
the inference queue, PostgreSQL and Redis), and against embedded `mbpo serve` (SQLite, no servers):
completions with an image on a base model and on a run's checkpoints, streamed and not,
`client.models.list()`, and spot-checks stored and listed."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import torch
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.db.models import BaseModelRecord, Checkpoint, Run
from infra.db.session import make_engine, make_session_factory
from mbpo_core.models.loader import load_adapter
from mbpo_core.serving.engine import pixels_from_bytes
from tests.helpers import services
from tests.helpers.inference import QUESTION, TinyModels, build_tiny_models, data_url, png_bytes

pytestmark = pytest.mark.services

PNG = png_bytes(seed=5)


@dataclass(frozen=True)
class Service:
    url: str
    key: str
    base: str  # model:<id>
    run_id: str
    broken: str  # model:<id> of a registered model whose directory has since vanished
    tiny: TinyModels
    log: Path
    prefix: str  # the Redis key prefix of this service

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=180)


def _start(args: list[str], env: dict[str, str], log: Path, ready: Any) -> Any:
    proc = services.start_mbpo(args, env, log)

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        return bool(ready())

    try:
        services.wait_for(up, timeout=120, interval=0.5, what=" ".join(args[:1]))
    except BaseException:
        services.stop_process_group(proc)
        raise
    return proc


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _seed_rows(factory: sessionmaker[Session], tiny: TinyModels) -> tuple[str, str, str, str]:
    with factory.begin() as session:
        key_row, key = create_api_key(session, user_name="alice", key_name="e2e", admin=False)
        base = BaseModelRecord(
            owner_id=key_row.user_id,
            name="tiny base",
            path=str(tiny.base),
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        session.add(base)
        session.flush()
        run = Run(
            owner_id=key_row.user_id, name="aligned", base_model_id=base.id, config={}, status="succeeded"
        )
        session.add(run)
        session.flush()
        # step 2: a LoRA adapter only (applied on load); step 4: a checkpoint with its merged model/
        session.add(Checkpoint(run_id=run.id, step=2, path=str(tiny.lora), complete=True))
        session.add(Checkpoint(run_id=run.id, step=4, path=str(tiny.merged), complete=True))
        session.add(Checkpoint(run_id=run.id, step=6, path="/half/written", complete=False))
        broken = BaseModelRecord(
            owner_id=key_row.user_id,
            name="moved away",
            path=str(tiny.base.parent / "gone"),
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=[],
            param_count=1,
        )
        session.add(broken)
        session.flush()
        return key, f"model:{base.id}", run.id, f"model:{broken.id}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    torch.set_num_threads(1)  # this process only compares answers; the worker does the work
    services.require_redis()
    root = tmp_path_factory.mktemp("chat-e2e")
    tiny = build_tiny_models(root / "models")
    prefix = services.broker_prefix()
    with services.fresh_database() as db_url:
        engine = make_engine(db_url)
        key, base, run_id, broken = _seed_rows(make_session_factory(engine), tiny)
        engine.dispose()
        env = services.service_env(
            DATABASE_URL=db_url,
            BROKER_URL=services.REDIS_URL,
            MBPO_BROKER_KEY_PREFIX=prefix,
            MBPO_HOME=str(root / "home"),
            MBPO_ENV="test",
            MBPO_INFERENCE_MAX_TOKENS="4000",  # room for an answer that takes seconds (disconnect test)
        )
        port = services.free_port()
        url = f"http://127.0.0.1:{port}"
        worker_log = root / "worker.log"
        worker = _start(
            ["worker", "--queues", "inference", "--pool", "threads", "--concurrency", "4"],
            env,
            worker_log,
            lambda: "ready." in worker_log.read_text(errors="replace"),
        )
        try:
            api = _start(["api", "--port", str(port)], env, root / "api.log", lambda: _healthy(url))
            try:
                yield Service(url, key, base, run_id, broken, tiny, worker_log, prefix)
            finally:
                services.stop_process_group(api)
        finally:
            services.stop_process_group(worker)
            services.delete_redis_prefix(prefix)


def _messages(png: bytes = PNG) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png)}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]


def _direct(model_dir: Path, max_tokens: int) -> str:
    adapter = load_adapter(model_dir)
    return adapter.generate(pixels_from_bytes(PNG).unsqueeze(0), [QUESTION], max_new_tokens=max_tokens)[0]


def test_models_list_names_base_models_and_checkpoints(service: Service) -> None:
    models = {m.id: m for m in service.client().models.list()}
    run = service.run_id
    expected = {service.base, service.broken, f"run:{run}", f"run:{run}@2", f"run:{run}@4"}
    assert set(models) == expected  # not the incomplete step 6
    assert models[f"run:{run}"].model_dump()["step"] == 4  # newest complete checkpoint
    assert models[service.base].model_dump()["kind"] == "base_model"
    assert all(m.object == "model" for m in models.values())
    retrieved = service.client().models.retrieve(f"run:{run}@2")
    assert retrieved.id == f"run:{run}@2" and retrieved.model_dump()["kind"] == "checkpoint"
    with pytest.raises(openai.NotFoundError):
        service.client().models.retrieve(f"run:{run}@6")


def test_completion_with_an_image_on_the_base_model(service: Service) -> None:
    response = service.client().chat.completions.create(
        model=service.base, messages=_messages(), max_tokens=5, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == _direct(service.tiny.base, 5)  # the same answer as in-process
    assert choice.finish_reason == "length"
    assert response.model == service.base and response.object == "chat.completion"
    assert response.usage is not None and response.usage.completion_tokens == 5
    image_tokens = load_adapter(service.tiny.base).num_image_tokens(56, 56)
    assert response.usage.prompt_tokens > image_tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + 5


@pytest.mark.parametrize("which", ["newest", "lora"])
def test_streamed_completion_on_a_checkpoint(service: Service, which: str) -> None:
    model = f"run:{service.run_id}" if which == "newest" else f"run:{service.run_id}@2"
    stream = service.client().chat.completions.create(
        model=model,
        messages=_messages(),
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1
    assert text == _direct(service.tiny.merged / "model", 6)  # LoRA on load == merged weights
    plain = service.client().chat.completions.create(
        model=model, messages=_messages(), max_tokens=6, temperature=0
    )
    assert plain.choices[0].message.content == text


def test_raw_stream_ends_with_done(service: Service) -> None:
    body = {"model": service.base, "messages": _messages(), "max_tokens": 3, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {service.key}"}
    with httpx.stream(
        "POST", f"{service.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_a_client_that_disconnects_stops_the_decoding(service: Service) -> None:
    """A streamed answer of 4000 tokens (about 10 s on this model) whose client leaves after the
    first text: the API drops the reply channel (no alive key left) and the worker stops decoding,
    so the next request on the model is not kept waiting behind it."""
    body = {
        "model": service.base,
        "messages": _messages(),
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {service.key}"}
    with httpx.stream(
        "POST", f"{service.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":""' not in line and '"content":' in line:
                break  # the first text: the worker is decoding; leave
    left_at = time.monotonic()
    alive = redis.Redis.from_url(services.REDIS_URL)
    services.wait_for(
        lambda: not list(alive.scan_iter(match=f"{service.prefix}mbpo:reply:*:alive")),
        timeout=5,
        interval=0.05,
        what="the reply channel to be dropped",
    )
    plain = service.client().chat.completions.create(
        model=service.base, messages=_messages(), max_tokens=1, temperature=0
    )
    assert plain.choices[0].finish_reason == "length"
    assert time.monotonic() - left_at < 4


def test_client_errors_surface_as_openai_exceptions(service: Service) -> None:
    client = service.client()
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="run:run_missing", messages=_messages())
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=service.base, messages=[])
    bad = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}
    ]
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model=service.base, messages=bad)
    assert invalid.value.code == "invalid_base64"
    with pytest.raises(openai.InternalServerError) as unavailable:  # the worker cannot load it
        client.chat.completions.create(model=service.broken, messages=_messages(), max_tokens=2)
    assert unavailable.value.status_code == 503 and unavailable.value.code == "model_unavailable"


def test_spot_check_is_answered_stored_and_listed(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.key}"}
    body = {
        "image": data_url(PNG),
        "question": QUESTION,
        "models": [service.base, f"run:{service.run_id}"],
        "max_tokens": 4,
    }
    resp = httpx.post(f"{service.url}/v1/spot-checks", json=body, headers=headers, timeout=180)
    assert resp.status_code == 201, resp.text
    check = resp.json()
    assert [r["model"] for r in check["results"]] == body["models"]
    adapter = load_adapter(service.tiny.base)
    pixels = pixels_from_bytes(PNG).unsqueeze(0)
    assert check["results"][0]["answer"] == adapter.generate(pixels, [QUESTION], max_new_tokens=4)[0]
    for result in check["results"]:
        assert isinstance(result["answer_iig"], float) and isinstance(result["null_answer_iig"], float)
        assert result["same_as_prior"] == (result["answer"] == result["null_answer"])
    assert check["image"]["width"] == 56 and check["image"]["thumbnail"].startswith("data:image/jpeg;base64,")
    base64.b64decode(check["image"]["thumbnail"].split(",", 1)[1], validate=True)
    listed = httpx.get(f"{service.url}/v1/spot-checks", headers=headers, timeout=10).json()["data"]
    assert listed[0]["id"] == check["id"]
    one = httpx.get(f"{service.url}/v1/spot-checks/{check['id']}", headers=headers, timeout=10).json()
    assert one["results"] == check["results"]
    missing = httpx.post(
        f"{service.url}/v1/spot-checks",
        json={**body, "models": [service.base, "model:mdl_x"]},
        headers=headers,
    )
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "models.1"
    same = httpx.post(
        f"{service.url}/v1/spot-checks",
        json={**body, "models": [service.base, service.base]},
        headers=headers,
    )
    assert same.status_code == 422


# ---- embedded: mbpo serve, SQLite database and broker, requests and replies through MBPO_HOME ---------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, TinyModels, Path]]:
    root = tmp_path_factory.mktemp("chat-embedded")
    tiny = build_tiny_models(root / "roots" / "models")
    env = services.service_env(MBPO_HOME=str(root / "home"), MBPO_DATA_ROOTS=str(root / "roots"))
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "serve.log"
    proc = _start(
        ["serve", "--port", str(port)],
        env,
        log,
        lambda: _healthy(url) and "ready." in log.read_text(errors="replace"),
    )
    try:
        yield url, (root / "home" / "admin_key").read_text().strip(), tiny, root / "home"
    finally:
        services.stop_process_group(proc)


def _register(url: str, key: str, name: str, path: Path) -> str:
    resp = httpx.post(
        f"{url}/v1/models",
        json={"name": name, "path": str(path)},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return f"model:{resp.json()['id']}"


def test_embedded_serve_answers_chat_completions(embedded: tuple[str, str, TinyModels, Path]) -> None:
    url, key, tiny, home = embedded
    base_dir = tiny.base
    model = _register(url, key, "tiny", base_dir)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=180)
    assert model in {m.id for m in client.models.list()}
    plain = client.chat.completions.create(model=model, messages=_messages(), max_tokens=4, temperature=0)
    streamed = client.chat.completions.create(
        model=model, messages=_messages(), max_tokens=4, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert plain.choices[0].message.content == text == _direct(base_dir, 4)
    replies = home / "inference" / "replies"
    assert not list(replies.glob("*.jsonl"))  # every reply file is removed once read
    assert not list((home / "inference" / "requests").iterdir())  # every request file claimed


def test_embedded_serve_answers_spot_checks(embedded: tuple[str, str, TinyModels, Path]) -> None:
    url, key, tiny, home = embedded
    models = [
        _register(url, key, "spot base", tiny.base),
        _register(url, key, "spot merged", tiny.merged / "model"),
    ]
    body = {"image": data_url(PNG), "question": QUESTION, "models": models, "max_tokens": 4}
    resp = httpx.post(
        f"{url}/v1/spot-checks", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=180
    )
    assert resp.status_code == 201, resp.text
    results = resp.json()["results"]
    assert [r["model"] for r in results] == models
    assert [r["answer"] for r in results] == [_direct(tiny.base, 4), _direct(tiny.merged / "model", 4)]
    assert not list((home / "inference" / "requests").iterdir())
