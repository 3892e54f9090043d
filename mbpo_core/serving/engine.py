"""Serving models for inference: a cache of loaded models with a memory budget and LRU eviction,
and one decoding thread per loaded model that batches the requests waiting for it.

Plain Python and torch (no Celery, no web): the inference worker calls `ModelCache.chat` and `.run`
from several threads at once; requests for the same model that are waiting together run as one
`generate` call (greedy requests with each other, sampled ones with the same temperature/top_p).
Nobody waits for a batch to fill: a request that finds the model idle starts at once, and
whatever queued up meanwhile forms the next batch, so batching costs a lone request nothing.

Prompts are chat conversations in the Hugging Face content format (`{"type": "image"}` /
`{"type": "text", "text": ...}` parts) rendered by the model's own chat template, with images
going through the adapter's `pixel_inputs` like every other path in the project.

Each request's tokens are handed out as they are decoded, through a `StoppingCriteria` that sees
every new token of every row (it also ends a row at its own `max_tokens`, stop string or
cancellation, while the batch goes on).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.loader import load_adapter
from mbpo_core.scoring.iig import compute_iig, null_pixels

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"  # a training checkpoint's loadable model (see training.checkpoint)
LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"


class ServingError(Exception):
    """A request that cannot be served; `code` is reported to the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ModelUnloaded(Exception):
    """The model was evicted between lookup and submission; look it up again."""


# ---- what to load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A model to serve. `key` names it in the cache (one loaded copy per key).

    `path` is a model directory, a training checkpoint (its `model/` subdirectory is loaded), or a
    LoRA adapter directory, applied on load to the model at `base_path` and merged."""

    key: str
    path: str
    base_path: str | None = None


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_source(
    source: ModelSource, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> VLMAdapter:
    path = Path(source.path)
    if not path.is_dir():
        raise ServingError("model_unavailable", f"model directory of {source.key} is missing")
    if _is_model_dir(path / MODEL_SUBDIR):
        return load_adapter(path / MODEL_SUBDIR, device=device, dtype=dtype)
    if _is_model_dir(path):
        return load_adapter(path, device=device, dtype=dtype)
    if (path / LORA_CONFIG).is_file():
        return _load_lora(path, source, device=device, dtype=dtype)
    raise ServingError("model_unavailable", f"{source.key} is neither a model directory nor a LoRA adapter")


def _load_lora(path: Path, source: ModelSource, *, device: str, dtype: torch.dtype) -> VLMAdapter:
    from peft import PeftModel

    if source.base_path is None:
        raise ServingError("model_unavailable", f"LoRA checkpoint {source.key} has no base model")
    if not (path / LORA_WEIGHTS).is_file():
        # The other format peft reads is a pickle; never load one.
        raise ServingError("model_unavailable", f"LoRA checkpoint {source.key} has no {LORA_WEIGHTS}")
    adapter = load_adapter(source.base_path, device=device, dtype=dtype)
    peft_model = PeftModel.from_pretrained(adapter.model, str(path), is_trainable=False)
    adapter.model = peft_model.merge_and_unload().eval()
    return adapter


def model_nbytes(adapter: VLMAdapter) -> int:
    tensors = [*adapter.model.parameters(), *adapter.model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# ---- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI's knobs. temperature 0 is greedy decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def batch_key(self) -> tuple[Any, ...] | None:
        """Requests with equal keys decode together; None runs alone (a seeded sample must not
        depend on which other requests happened to share its batch)."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string), "length", "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatRequest:
    """One conversation to continue. `messages` in HF content format; one image per image part,
    in order, each (H, W, 3) float in [0, 1]."""

    messages: list[dict[str, Any]]
    images: list[torch.Tensor]
    params: SamplingParams
    on_text: Callable[[str], None] = field(default=lambda _: None)
    is_cancelled: Callable[[], bool] = field(default=lambda: False)
    future: Future[Completion] = field(default_factory=Future)


def pixels_from_bytes(data: bytes) -> torch.Tensor:
    """Encoded image -> (H, W, 3) float32 in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb.copy())


def prompt_ids(
    adapter: VLMAdapter, messages: list[dict[str, Any]], images: Sequence[torch.Tensor]
) -> list[int]:
    """Token ids of the templated conversation, each image placeholder expanded to its tokens."""
    text = str(adapter.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    pieces = text.split(adapter.image_token)
    if len(pieces) - 1 != len(images):
        raise ServingError("invalid_request", "the chat template dropped or repeated an image")
    expanded = pieces[0]
    for image, piece in zip(images, pieces[1:], strict=True):
        expanded += adapter.image_sequence(int(image.shape[0]), int(image.shape[1])) + piece
    return list(adapter.tokenizer(expanded, add_special_tokens=False)["input_ids"])


def _left_pad(
    sequences: Sequence[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[i, length - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def _pixel_kwargs(adapter: VLMAdapter, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every image of the batch, in prompt order, through the adapter's preprocessing; images of
    different sizes are processed one by one and concatenated (the model consumes them in order)."""
    if not images:
        return {}
    parts = [adapter.pixel_inputs(img.unsqueeze(0).to(adapter.device)) for img in images]
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        value = torch.cat([p[key] for p in parts])
        out[key] = value.to(adapter.dtype) if value.is_floating_point() else value
    return out


class _RowDecoder:
    """Incremental text of one row: emits new text, ends the row on end of turn, a stop string,
    its token budget or cancellation."""

    def __init__(
        self,
        request: ChatRequest,
        tokenizer: Any,
        eos_ids: set[int],
        prompt_tokens: int,
        answer_text: Callable[[str], str] = str.lstrip,
    ):
        self.request = request
        self.tokenizer = tokenizer
        self.answer_text = answer_text  # the adapter's (a thinking block is never shown)
        self.eos_ids = eos_ids
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.holdback = max((len(s) for s in request.params.stop), default=1) - 1

    def push(self, token: int) -> None:
        if self.finish_reason is not None:
            return
        if self.request.is_cancelled():
            self.finish_reason = "cancelled"
            return
        self.tokens.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
        else:
            self.text = self.answer_text(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
            cut = min((i for s in self.request.params.stop if (i := self.text.find(s)) >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
            elif len(self.tokens) >= self.request.params.max_tokens:
                self.finish_reason = "length"
        self._emit()

    def _emit(self) -> None:
        # A stop string may be arriving: hold back its length minus one until the row is done;
        # a trailing replacement character is half of a multi-byte character.
        end = len(self.text) if self.finish_reason else len(self.text.rstrip("\ufffd")) - self.holdback
        if end > self.emitted:
            self.request.on_text(self.text[self.emitted : end])
            self.emitted = end

    def finish(self) -> Completion:
        if self.finish_reason is None:
            self.finish_reason = "length"
            self._emit()
        return Completion(self.text, self.finish_reason, self.prompt_tokens, len(self.tokens))


class _RowsDone(StoppingCriteria):
    """Feeds each new token to its row's decoder; a row is done when its decoder says so."""

    def __init__(self, rows: list[_RowDecoder]):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            row.push(int(token))
        return torch.tensor([r.finish_reason is not None for r in self.rows], device=input_ids.device)


@torch.no_grad()
def generate_batch(adapter: VLMAdapter, requests: Sequence[ChatRequest]) -> list[Completion]:
    """Decode `requests` (same batch key) as one `generate` call, streaming each row's text."""
    params = requests[0].params
    sequences = [prompt_ids(adapter, r.messages, r.images) for r in requests]
    tokenizer = adapter.tokenizer
    eos_ids = set(adapter.stop_token_ids)
    rows = [
        _RowDecoder(r, tokenizer, eos_ids, len(s), adapter.answer_text)
        for r, s in zip(requests, sequences, strict=True)
    ]
    input_ids, attention_mask = _left_pad(sequences, tokenizer.pad_token_id, adapter.device)
    sampling: dict[str, Any] = {"do_sample": not params.greedy}
    if params.greedy:  # explicit, so a checkpoint's generation_config cannot switch to sampling
        sampling.update(temperature=None, top_p=None, top_k=None)
    else:
        sampling.update(temperature=params.temperature, top_p=params.top_p, top_k=None)
        if params.seed is not None:
            torch.manual_seed(params.seed)
    adapter.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **adapter.text_kwargs(input_ids),
        **_pixel_kwargs(adapter, [img for r in requests for img in r.images]),
        max_new_tokens=max(r.params.max_tokens for r in requests),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=adapter.stop_token_ids,
        stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
        **sampling,
    )
    return [row.finish() for row in rows]


# ---- spot-checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpotCheck:
    """A model's answer on the image and on its null image, and the IIG of both answers."""

    answer: str
    null_answer: str
    answer_iig: float
    null_answer_iig: float


@torch.no_grad()
def spot_check(
    adapter: VLMAdapter, image: torch.Tensor, question: str, *, null_image: str = "gray", max_tokens: int = 16
) -> SpotCheck:
    """Greedy answers with the image and with its null image (what the language prior alone says);
    IIG (docs/method.md §1) of each answer on the real image."""
    pixels = image.unsqueeze(0)
    both = torch.cat([pixels, null_pixels(pixels, null_image)])
    answer, null_answer = adapter.generate(both, [question, question], max_new_tokens=max_tokens)
    iig = compute_iig(
        adapter, pixels.expand(2, -1, -1, -1), [question, question], [answer, null_answer], null_image
    )
    return SpotCheck(answer, null_answer, float(iig[0]), float(iig[1]))


# ---- one thread per loaded model -------------------------------------------------------------------


@dataclass
class _Job:
    """Work that runs alone on the model's thread (spot-checks)."""

    fn: Callable[[VLMAdapter], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


class ServedModel:
    """A loaded model and the thread that runs everything on it, batching compatible requests."""

    def __init__(self, key: str, adapter: VLMAdapter, *, max_batch: int, batch_wait_s: float = 0.0):
        self.key = key
        self.adapter = adapter
        self.nbytes = model_nbytes(adapter)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        self._queue: queue.Queue[Any] = queue.Queue()
        self._backlog: list[ChatRequest] = []
        self._stopped = False
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"serve-{key}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        with self._submit_lock:
            if self._stopped:
                raise ModelUnloaded(self.key)
            self._queue.put(item)

    def submit_chat(self, request: ChatRequest) -> Future[Completion]:
        self._put(request)
        return request.future

    def submit_job(self, fn: Callable[[VLMAdapter], Any]) -> Future[Any]:
        job = _Job(fn)
        self._put(job)
        return job.future

    def stop(self) -> None:
        """Finish what was submitted, then end the thread (the cache evicted this model)."""
        with self._submit_lock:
            self._stopped = True
            self._queue.put(_STOP)

    def _next(self, timeout: float | None) -> Any:
        if self._backlog:
            return self._backlog.pop(0)
        return (
            self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        )

    def _collect(self, first: ChatRequest) -> list[ChatRequest]:
        batch = [first]
        key = first.params.batch_key()
        if key is None:
            return batch
        skipped: list[Any] = []
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            try:
                item = (
                    self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    if (self.batch_wait_s > 0)
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if isinstance(item, ChatRequest) and item.params.batch_key() == key:
                batch.append(item)
            else:
                skipped.append(item)
        for item in skipped:  # jobs and stop markers go back in order; they are not lost
            if isinstance(item, ChatRequest):
                self._backlog.append(item)
            else:
                self._queue.put(item)
        return batch

    def _loop(self) -> None:
        while True:
            item = self._next(None)
            if item is _STOP:
                if not self._backlog:
                    return
                self._queue.put(_STOP)  # requests set aside by a batch came first: serve them
                continue
            if isinstance(item, _Job):
                self._run_job(item)
                continue
            batch = [r for r in self._collect(item) if r.future.set_running_or_notify_cancel()]
            if batch:
                self._run_batch(batch)

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(self.adapter))
        except BaseException as exc:
            job.future.set_exception(exc)

    def _run_batch(self, batch: list[ChatRequest]) -> None:
        self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
        try:
            completions = generate_batch(self.adapter, batch)
        except BaseException as exc:
            log.exception("generation failed on %s (batch of %d)", self.key, len(batch))
            for request in batch:
                request.future.set_exception(exc)
            return
        for request, completion in zip(batch, completions, strict=True):
            request.future.set_result(completion)


# Loading is not thread-safe: transformers builds a model on the meta device and fills it in, and
# two loads at once in one process leave each other's weights on the meta device. One at a time.
_LOADING = threading.Lock()


class ModelCache:
    """Loaded models by key, within `budget_bytes` of weights: loading one evicts the least recently
    used others until it fits (a model larger than the budget is still served, alone)."""

    def __init__(
        self,
        budget_bytes: int,
        *,
        max_batch: int = 16,
        batch_wait_s: float = 0.0,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        loader: Callable[[ModelSource], VLMAdapter] | None = None,
    ):
        self.budget_bytes = budget_bytes
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._loader = loader or (lambda source: load_source(source, device=device, dtype=dtype))
        self._models: OrderedDict[str, ServedModel] = OrderedDict()
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        """Loaded keys, least recently used first."""
        with self._lock:
            return list(self._models)

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._models.values())

    def get(self, source: ModelSource) -> ServedModel:
        with self._lock:
            served = self._models.get(source.key)
            if served is not None:
                self._models.move_to_end(source.key)
                return served
        with _LOADING:  # one load at a time: so one per key, however many requests arrive meanwhile
            with self._lock:
                served = self._models.get(source.key)
                if served is not None:
                    self._models.move_to_end(source.key)
                    return served
            started = time.monotonic()
            adapter = self._loader(source)
            served = ServedModel(
                source.key, adapter, max_batch=self.max_batch, batch_wait_s=self.batch_wait_s
            )
            log.info(
                "loaded %s (%.1f MB) in %.1fs", source.key, served.nbytes / 1e6, time.monotonic() - started
            )
            with self._lock:
                self._models[source.key] = served
                self._evict_for(source.key)
            return served

    def _evict_for(self, key: str) -> None:
        total = sum(m.nbytes for m in self._models.values())
        for other in list(self._models):
            if total <= self.budget_bytes:
                break
            if other == key:
                continue
            evicted = self._models.pop(other)
            total -= evicted.nbytes
            evicted.stop()
            log.info("evicted %s from the model cache", other)

    def chat(self, source: ModelSource, request: ChatRequest) -> Completion:
        """Run one chat request (blocking); text arrives through `request.on_text` meanwhile."""
        while True:
            try:
                return self.get(source).submit_chat(request).result()
            except ModelUnloaded:
                continue

    def run(self, source: ModelSource, fn: Callable[[VLMAdapter], Any]) -> Any:
        """Run `fn(adapter)` alone on the model's thread (blocking) and return its result."""
        while True:
            try:
                return self.get(source).submit_job(fn).result()
            except ModelUnloaded:
                continue
