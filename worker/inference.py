"""Inference in a worker that consumes the `inference` queue: chat completions and spot-checks.

Requests do not come as Celery tasks: `InferenceConsumer` (started by worker.app when the worker
consumes the `inference` queue) runs `--concurrency` threads that claim them from the request
channel (`infra.requests`) and serve them. The handlers are thin: they decode
the request, ask this process's `ModelCache` (mbpo_core.serving.engine) for the model and send
events back through `infra.replies`. The request carries everything (images included): a chat
completion is not stored anywhere, and the API already resolved the model to directories, so the
worker never touches the database here.

Run an inference worker with the thread pool (`mbpo worker --queues inference --pool threads
--concurrency 16`): its cpu tasks (if it also consumes `cpu`) then run in threads too, and the
model cache lives in the process that serves the requests. Requests for the same model are decoded
in batches. Torch is imported on first use, not when the worker starts.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.replies import ReplyWriter, open_writer
from infra.requests import RequestKind, RequestSource
from infra.settings import Settings

if TYPE_CHECKING:
    from mbpo_core.serving.engine import ModelCache, ModelSource

log = logging.getLogger(__name__)

_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def get_model_cache(settings: Settings) -> ModelCache:
    """The process's model cache (one per worker process, shared by its task threads)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            from mbpo_core.models.device import resolve_device, resolve_dtype
            from mbpo_core.serving.engine import ModelCache

            device = resolve_device()
            _cache = ModelCache(
                settings.inference_cache_bytes,
                max_batch=settings.inference_max_batch,
                device=device,
                dtype=resolve_dtype("auto", device),
            )
        return _cache


def _source(settings: Settings, spec: dict[str, Any]) -> ModelSource:
    from mbpo_core.serving.engine import ModelSource

    # Checkpoint paths are recorded relative to the storage root (MBPO_HOME), which every process
    # of a deployment shares; base-model paths are absolute.
    path = Path(spec["path"])
    if not path.is_absolute():
        path = settings.home_dir / path
    return ModelSource(key=spec["key"], path=str(path), base_path=spec.get("base_path"))


def _fail(writer: ReplyWriter, exc: BaseException) -> None:
    from mbpo_core.serving.engine import ServingError

    if isinstance(exc, ServingError):
        writer.send({"t": "error", "code": exc.code, "message": exc.message})
        return
    log.exception("inference failed", exc_info=exc)
    writer.send({"t": "error", "code": "internal_error", "message": "inference failed on the worker"})


class _Requester:
    """Whether the requester still listens, asked at most every `every` seconds (the answer is a
    round trip to Redis or a stat, and decoding asks after every token)."""

    def __init__(self, writer: ReplyWriter, every: float = 0.5):
        self.writer, self.every = writer, every
        self.listening, self.checked = True, time.monotonic()

    def gone(self) -> bool:
        if self.listening and time.monotonic() - self.checked > self.every:
            self.listening, self.checked = self.writer.alive(), time.monotonic()
        return not self.listening


def run_chat_completion(settings: Settings, request_id: str, payload: dict[str, Any]) -> None:
    """Decode one chat request. Streaming: events start, text (deltas), done; otherwise a single
    done event carrying the text (one reply instead of one per token)."""
    from mbpo_core.serving.engine import ChatRequest, SamplingParams, pixels_from_bytes

    writer = open_writer(settings, request_id)
    try:
        if not writer.alive():
            return  # the requester gave up before a worker got to it
        images = [pixels_from_bytes(base64.b64decode(b)) for b in payload["images"]]
        params = payload["params"]
        stream = bool(payload.get("stream", True))
        requester = _Requester(writer)

        def on_text(delta: str) -> None:
            if not writer.send({"t": "text", "d": delta}):
                requester.listening = False

        request = ChatRequest(
            messages=payload["messages"],
            images=images,
            params=SamplingParams(
                max_tokens=int(params["max_tokens"]),
                temperature=float(params["temperature"]),
                top_p=float(params["top_p"]),
                seed=params.get("seed"),
                stop=tuple(params.get("stop") or ()),
            ),
            is_cancelled=requester.gone,
        )
        if stream:
            request.on_text = on_text
        cache = get_model_cache(settings)
        source = _source(settings, payload["model"])
        if stream:
            cache.get(source)  # load (or find) the model before the stream starts
            writer.send({"t": "start"})
        completion = cache.chat(source, request)
        writer.send(
            {
                "t": "done",
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            }
        )
    except Exception as exc:
        _fail(writer, exc)
    finally:
        writer.close()


def run_spot_check(settings: Settings, request_id: str, payload: dict[str, Any]) -> None:
    """One model's spot-check; events: result (answers and IIGs) or error."""
    from mbpo_core.serving.engine import pixels_from_bytes, spot_check

    writer = open_writer(settings, request_id)
    try:
        if not writer.alive():
            return
        image = pixels_from_bytes(base64.b64decode(payload["image"]))
        started = time.monotonic()
        result = get_model_cache(settings).run(
            _source(settings, payload["model"]),
            lambda adapter: spot_check(
                adapter,
                image,
                payload["question"],
                null_image=payload["null_image"],
                max_tokens=int(payload["max_tokens"]),
            ),
        )
        writer.send(
            {
                "t": "result",
                "answer": result.answer,
                "null_answer": result.null_answer,
                "answer_iig": result.answer_iig,
                "null_answer_iig": result.null_answer_iig,
                "seconds": round(time.monotonic() - started, 4),
            }
        )
    except Exception as exc:
        _fail(writer, exc)
    finally:
        writer.close()


HANDLERS: dict[RequestKind, Callable[[Settings, str, dict[str, Any]], None]] = {
    RequestKind.chat: run_chat_completion,
    RequestKind.spot_check: run_spot_check,
}

CLAIM_WAIT_S = 1.0  # how long one claim waits for a request: the stop flag is checked in between


class InferenceConsumer:
    """`concurrency` threads, each claiming a request from the channel, serving it, then claiming
    the next: a worker with every thread busy claims nothing (the next request goes to another
    worker), and the requests in progress share the model cache and are decoded in batches there."""

    def __init__(self, settings: Settings, concurrency: int):
        self.settings = settings
        self._source = RequestSource(settings)
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, name=f"inference-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("serving inference requests (%s channel, %d at once)", self._source.kind, len(self._threads))

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                request = self._source.claim(CLAIM_WAIT_S)
            except Exception:  # the broker is unreachable for a moment: try again shortly
                log.exception("claiming inference requests failed")
                self._stopping.wait(CLAIM_WAIT_S)
                continue
            if request is None:
                continue
            try:
                HANDLERS[request.kind](self.settings, request.id, request.payload)
            except Exception:
                log.exception("inference request %s failed", request.id)

    def stop(self, grace: float) -> bool:
        """Claim nothing more and wait up to `grace` seconds for the requests in progress; whether
        they all finished."""
        self._stopping.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)
