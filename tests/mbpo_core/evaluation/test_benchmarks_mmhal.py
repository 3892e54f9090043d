"""MMHal-Bench and its judge: the release's response_template.json, the official judge prompt and
rating parse (eval_gpt4.py), aggregation against hand-computed values, and the judge client (judge.py)
against a local server with the OpenAI chat completions route that replies from a script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import BENCHMARKS, mmhal
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, scored_by_judge
from mbpo_core.evaluation.benchmarks.judge import ChatJudge, JudgeError, api_key_from_env, chat_url
from tests.helpers.chat_judge import Step, scripted_judge
from tests.helpers.mmhal_bench import write_template


def test_registered_and_scored_by_a_judge() -> None:
    assert BENCHMARKS["mmhal"] is mmhal
    assert scored_by_judge(mmhal)
    assert not any(scored_by_judge(BENCHMARKS[n]) for n in BENCHMARKS if n != "mmhal")


def test_load_reads_the_template_and_finds_the_images(tmp_path: Path) -> None:
    items = mmhal.load(write_template(tmp_path))
    assert [i.id for i in items] == ["0", "1", "2", "3"]
    assert items[2].prompt == "How many cats are there in picture 2?"
    assert items[2].image == (tmp_path / "images" / "0002_o.jpg").resolve()
    assert dict(items[0].meta) == {
        "question_type": "attribute",
        "gt_answer": "There are two cats.",
        "image_content": ["Tree", "Cat"],
    }


def test_judge_prompt_is_the_official_template(tmp_path: Path) -> None:
    item = mmhal.load(write_template(tmp_path))[0]
    prompt = mmhal.judge_prompt(item, "I see one cat.")
    assert prompt.startswith("Please act as an impartial and objective judge")
    assert prompt.endswith(
        "### Image Contents\nTree, Cat\n\n### Question\nHow many cats are there in picture 0?\n\n"
        "### Standard Human-Generated Answer\nThere are two cats.\n\n"
        "### LMM Response to Evaluate\nI see one cat.\n"
    )
    assert "- Rating: 3, not informative, no hallucination\n" in prompt


def test_rating_parse() -> None:
    assert mmhal.rating("Explanation: fine.\nRating: 6, very informative") == 6
    assert mmhal.rating("RATING: 0") == 0
    assert mmhal.rating("Rating: 3 ... or maybe Rating: 4") is None  # several
    assert mmhal.rating("no rating given") is None
    assert mmhal.rating("Rating 5") is None  # the reference wants "rating: s"


def test_score_with_a_scripted_judge_by_hand(tmp_path: Path) -> None:
    items = mmhal.load(write_template(tmp_path))
    replies = [
        "The response is accurate.\nRating: 6, very informative with good analysis",
        "It invents a dog.\nrating: 2, very informative, with hallucination",
        "Correct count.\nRating: 4",
        "Rating: 1 or Rating: 5",  # two ratings: unparsed, counted 0 as eval_gpt4.py does
    ]
    with scripted_judge(replies) as server:
        judge = ChatJudge(url=server.url, model="judge-7b", api_key="sk-test-secret", backoff_s=0)
        tables = mmhal.score(items, ["a", "b", "c", "d"], judge=judge)
    # ratings 6, 2, 4, 0: average 3.0; below 3: 2 of 4
    assert tables["all"] == {"n": 4, "average_score": 3.0, "hallucination_rate": 0.5, "unparsed": 0.25}
    assert tables["attribute"] == {"n": 2, "average_score": 4.0, "hallucination_rate": 0.5, "unparsed": 0.0}
    assert tables["counting"] == {"n": 1, "average_score": 4.0, "hallucination_rate": 0.0, "unparsed": 0.0}
    assert tables["holistic"] == {"n": 1, "average_score": 0.0, "hallucination_rate": 1.0, "unparsed": 1.0}
    assert list(tables) == ["attribute", "counting", "holistic", "all"]
    # the reference's request: one user message (the judge prompt), temperature 0, the key as a bearer
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test-secret"
    assert first["body"]["model"] == "judge-7b" and first["body"]["temperature"] == 0.0
    assert first["body"]["messages"] == [{"role": "user", "content": mmhal.judge_prompt(items[0], "a")}]


def test_score_refuses_without_a_judge(tmp_path: Path) -> None:
    items = mmhal.load(write_template(tmp_path))
    with pytest.raises(mmhal.JudgeRequiredError, match="judge model"):
        mmhal.score(items, ["a"] * 4)


def test_evaluate_benchmark_refuses_before_generating(tmp_path: Path) -> None:
    from mbpo_core.evaluation.benchmarks.runner import evaluate_benchmark

    items = mmhal.load(write_template(tmp_path))
    # no adapter at all: the refusal comes before any generation would touch it
    with pytest.raises(ValueError, match="judge model"):
        evaluate_benchmark(None, "mmhal", items)  # type: ignore[arg-type]


def test_judge_retries_transient_failures_and_timeouts() -> None:
    slept: list[float] = []
    steps: list[Step] = [503, ("sleep", 1.0, "late"), "Rating: 5"]
    with scripted_judge(steps) as server:
        judge = ChatJudge(url=server.url, model="m", timeout_s=0.3, backoff_s=0.01, sleep=slept.append)
        assert judge("prompt") == "Rating: 5"
    assert len(server.requests) == 3
    assert slept == [0.01, 0.02]  # exponential back-off between the three attempts


def test_judge_gives_up_after_its_attempts_and_fails_fast_on_client_errors() -> None:
    with scripted_judge([500, 502, 429]) as server:
        judge = ChatJudge(url=server.url, model="m", attempts=3, backoff_s=0)
        with pytest.raises(JudgeError, match="failed 3 times; last: HTTP 429"):
            judge("prompt")
    body = '{"error": {"message": "Incorrect API key provided: sk-test-secret"}}'
    with scripted_judge([401, "never reached"], error_body=body) as server:
        judge = ChatJudge(url=server.url, model="m", api_key="sk-test-secret", backoff_s=0)
        with pytest.raises(JudgeError, match="HTTP 401") as caught:
            judge("prompt")
    assert len(server.requests) == 1
    assert "sk-test-secret" not in str(caught.value) and "***" in str(caught.value)
    assert "sk-test-secret" not in repr(judge)
    with scripted_judge([]) as server:
        url = server.url
    with pytest.raises(JudgeError, match="ConnectError"):  # nothing listens there any more
        ChatJudge(url=url, model="m", attempts=2, backoff_s=0)("prompt")


def test_judge_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        chat_url("h:8000/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert api_key_from_env(None) is None  # a local server needs no key
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default")
    assert api_key_from_env(None) == "sk-default"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-mine")
    assert api_key_from_env("MY_JUDGE_KEY") == "sk-mine"
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        api_key_from_env("NOT_SET_ANYWHERE")


def test_bad_template_entries_name_the_entry(tmp_path: Path) -> None:
    path = write_template(tmp_path)
    records = json.loads(path.read_text())
    del records[2]["gt_answer"]
    path.write_text(json.dumps(records))
    with pytest.raises(BenchmarkDataError, match="gt_answer") as caught:
        mmhal.load(path)
    assert caught.value.path == path and caught.value.entry == 2
    records = json.loads(write_template(tmp_path).read_text())
    records[1]["image_src"] = "https://example.org/gone.jpg"
    path.write_text(json.dumps(records))
    with pytest.raises(BenchmarkDataError, match=r"gone\.jpg") as caught:
        mmhal.load(path)
    assert caught.value.entry == 1
    records[1] = {**records[0], "image_content": ["Tree", 3]}
    path.write_text(json.dumps(records))
    with pytest.raises(BenchmarkDataError, match="image_content") as caught:
        mmhal.load(path)
    assert caught.value.entry == 1
    # an image_path, when there is one, names the image instead of the URL
    records[1] = {**records[0], "image_path": "0003_o.jpg", "image_src": "https://example.org/gone.jpg"}
    path.write_text(json.dumps(records))
    assert mmhal.load(path)[1].image.name == "0003_o.jpg"
