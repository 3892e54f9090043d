"""The serving core without Celery: LoRA applied on load, batching of concurrent requests,
streamed deltas, stop strings, token budgets, LRU eviction under the byte budget, concurrent loads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from mbpo_core.models.loader import load_adapter
from mbpo_core.serving import engine as serving
from mbpo_core.serving.engine import ChatRequest, ModelCache, ModelSource, SamplingParams
from tests.helpers.inference import QUESTION, TinyModels, chat_messages, png_bytes


def _request(image_seed: int = 0, **params: object) -> ChatRequest:
    image = serving.pixels_from_bytes(png_bytes(seed=image_seed))
    defaults: dict[str, object] = {"max_tokens": 6, "temperature": 0.0}
    return ChatRequest(chat_messages(), [image], SamplingParams(**{**defaults, **params}))  # type: ignore[arg-type]


def test_chat_prompt_and_greedy_text_match_the_adapter(tiny: TinyModels) -> None:
    adapter = load_adapter(tiny.base)
    request = _request()
    assert serving.prompt_ids(adapter, request.messages, request.images) == adapter.prompt_ids(
        QUESTION, 56, 56
    )
    (completion,) = serving.generate_batch(adapter, [request])
    expected = adapter.generate(request.images[0].unsqueeze(0), [QUESTION], max_new_tokens=6)[0]
    assert completion.text == expected
    assert completion.finish_reason == "length" and completion.completion_tokens == 6
    assert completion.prompt_tokens == len(adapter.prompt_ids(QUESTION, 56, 56))


def test_lora_checkpoint_applied_on_load_equals_the_merged_checkpoint(tiny: TinyModels) -> None:
    cache = ModelCache(10**10)
    sources = {
        "base": ModelSource("base", str(tiny.base)),
        "lora": ModelSource("lora", str(tiny.lora), base_path=str(tiny.base)),
        "merged": ModelSource("merged", str(tiny.merged)),
    }
    image = serving.pixels_from_bytes(png_bytes()).unsqueeze(0)
    logp = {
        name: cache.run(source, lambda a: a.answer_logprobs(image, [QUESTION], ["yes red circle"])[0])
        for name, source in sources.items()
    }
    assert torch.allclose(logp["lora"], logp["merged"], atol=1e-4)
    # The adapter changes the model, so agreeing with the merged weights means it was applied.
    assert not torch.allclose(logp["lora"], logp["base"], atol=1e-2)
    assert cache.chat(sources["lora"], _request()).text == cache.chat(sources["merged"], _request()).text


def test_lora_without_base_or_safetensors_is_refused(tiny: TinyModels, tmp_path: Path) -> None:
    with pytest.raises(serving.ServingError, match="no base model"):
        serving.load_source(ModelSource("x", str(tiny.lora)))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(serving.ServingError, match=r"adapter_model\.safetensors"):
        serving.load_source(ModelSource("x", str(tmp_path), base_path=str(tiny.base)))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tiny: TinyModels) -> None:
    cache = ModelCache(10**10, max_batch=8)
    source = ModelSource("base", str(tiny.base))
    served = cache.get(source)
    requests = [_request(image_seed=i, max_tokens=3 + i % 3) for i in range(6)]
    alone = [
        serving.generate_batch(served.adapter, [r])[0]
        for r in [_request(image_seed=i, max_tokens=3 + i % 3) for i in range(6)]
    ]
    streamed: list[list[str]] = [[] for _ in requests]
    for r, sink in zip(requests, streamed, strict=True):
        r.on_text = sink.append
    gate = threading.Event()
    served.submit_job(lambda _: gate.wait(10))  # hold the model so the requests queue up together
    futures = [served.submit_chat(r) for r in requests]
    gate.set()
    results = [f.result(timeout=60) for f in futures]
    assert max(served.batch_sizes) == 6
    for result, single, sink, request in zip(results, alone, streamed, requests, strict=True):
        assert result.text == single.text  # batching changes nothing about a greedy answer
        assert "".join(sink) == result.text
        assert result.completion_tokens == request.params.max_tokens


def test_seeded_samples_run_alone_and_repeat(tiny: TinyModels) -> None:
    cache = ModelCache(10**10)
    source = ModelSource("base", str(tiny.base))
    first = cache.chat(source, _request(temperature=1.0, seed=7, max_tokens=8))
    again = cache.chat(source, _request(temperature=1.0, seed=7, max_tokens=8))
    assert first.text == again.text
    assert SamplingParams(temperature=1.0, seed=7).batch_key() is None


def test_stop_string_ends_the_answer_before_it(tiny: TinyModels) -> None:
    adapter = load_adapter(tiny.base)
    sampled = {"temperature": 1.0, "seed": 3, "max_tokens": 8}  # varied words, the same each time
    (full,) = serving.generate_batch(adapter, [_request(**sampled)])
    words = full.text.split()
    assert len(set(words)) >= 3, full.text
    stop = next(w for w in words[1:] if w != words[0])
    sink: list[str] = []
    request = _request(**sampled, stop=(stop,))
    request.on_text = sink.append
    (cut,) = serving.generate_batch(adapter, [request])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert "".join(sink) == cut.text


def test_cancelled_request_stops_decoding(tiny: TinyModels) -> None:
    adapter = load_adapter(tiny.base)
    request = _request(max_tokens=50)
    seen: list[str] = []
    request.on_text = seen.append
    request.is_cancelled = lambda: len(seen) >= 2
    (completion,) = serving.generate_batch(adapter, [request])
    assert completion.finish_reason == "cancelled" and completion.completion_tokens == 2


def test_lru_eviction_keeps_loaded_weights_within_the_budget(tiny: TinyModels) -> None:
    one = serving.model_nbytes(load_adapter(tiny.base))
    cache = ModelCache(int(one * 2.5))
    a, b, c = (ModelSource(k, str(tiny.base)) for k in "abc")
    cache.chat(a, _request())
    cache.chat(b, _request())
    cache.chat(a, _request())  # a is now the most recently used
    cache.chat(c, _request())
    assert cache.keys() == ["a", "c"]
    assert cache.loaded_bytes <= cache.budget_bytes


def test_different_models_requested_at_once_both_load(tiny: TinyModels) -> None:
    """Two threads loading two models at once (a spot-check's models on a fresh worker): transformers'
    loading is not thread-safe, so the cache loads one at a time."""
    cache = ModelCache(1 << 30)
    sources = [ModelSource("base", str(tiny.base)), ModelSource("merged", str(tiny.merged / "model"))]
    results: dict[str, str] = {}

    def ask(source: ModelSource) -> None:
        results[source.key] = cache.chat(source, _request()).text

    threads = [threading.Thread(target=ask, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    image = serving.pixels_from_bytes(png_bytes()).unsqueeze(0)
    expected = {s.key: load_adapter(s.path).generate(image, [QUESTION], max_new_tokens=6)[0] for s in sources}
    assert results == expected


def test_spot_check_answers_with_and_without_the_image(tiny: TinyModels) -> None:
    adapter = load_adapter(tiny.base)
    image = serving.pixels_from_bytes(png_bytes())
    result = serving.spot_check(adapter, image, QUESTION, max_tokens=4)
    expected = adapter.generate(image.unsqueeze(0), [QUESTION], max_new_tokens=4)[0]
    assert result.answer == expected
    from mbpo_core.scoring.iig import compute_iig

    iig = compute_iig(adapter, image.unsqueeze(0), [QUESTION], [result.answer])
    assert result.answer_iig == pytest.approx(float(iig[0]), abs=1e-5)
