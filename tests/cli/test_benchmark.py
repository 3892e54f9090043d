"""`mbpo eval benchmark` on the TSV benchmarks and MMHal-Bench, end to end with the tiny random
Qwen2-VL (its answers are noise; the metrics printed must be the scorer's on the answers it wrote)
and, for MMHal-Bench, a scripted judge server."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import mmbench
from tests.helpers.chat_judge import scripted_judge
from tests.helpers.mmhal_bench import write_template
from tests.helpers.tsv_benchmarks import MMBENCH_COLUMNS, mmbench_rows, write_tsv


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["eval", "benchmark", *args, "--device", "cpu"])


def flat(output: str) -> str:
    """The output with rich's error box and line wrapping undone."""
    return " ".join(output.replace("│", " ").split())


def test_mmbench_prints_circular_eval_of_the_answers_it_writes(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows(), MMBENCH_COLUMNS)
    out = tmp_path / "answers.jsonl"
    result = invoke(
        "--name", "mmbench", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    items = mmbench.load(data)
    assert [r["id"] for r in lines] == [i.id for i in items]
    assert lines[2]["truth"] == "D" and lines[2]["options"]["D"] == "dog"
    expected = mmbench.score(items, [r["answer"] for r in lines])
    for row in ("image_scene", "ocr", "all"):
        assert row in result.output
    assert "circular_accuracy" in result.output and "vanilla_accuracy" in result.output
    assert f"{expected['all']['circular_accuracy']:.3f}" in result.output
    assert (tmp_path / "MMBench_DEV_EN_images").is_dir()


def test_mmbench_bad_row_names_the_file_and_line_before_loading_the_model(tmp_path: Path) -> None:
    rows = mmbench_rows()
    rows[1]["answer"] = "D"  # question 1 has options A-C
    data = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows, MMBENCH_COLUMNS)
    result = invoke("--name", "mmbench", "--data", str(data), "--model", str(tmp_path / "no-model"))
    assert result.exit_code == 2
    assert "MMBench_DEV_EN.tsv, line 3: answer 'D' is not one of the options" in flat(result.output)


def test_mmhal_without_a_judge_is_refused_before_any_generation(tmp_path: Path) -> None:
    data = write_template(tmp_path)
    # the model does not exist: had the command got as far as loading it, the error would differ
    result = invoke("--name", "mmhal", "--data", str(data), "--model", str(tmp_path / "no-model"))
    assert result.exit_code == 2
    assert "mmhal is scored by a judge model: give --judge-url and --judge-model" in flat(result.output)
    result = invoke(
        *("--name", "mmhal", "--data", str(data), "--model", str(tmp_path / "no-model")),
        *("--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--judge-key-env", "UNSET_KEY_VAR"),
    )
    assert result.exit_code == 2 and "UNSET_KEY_VAR (the judge's API key) is not set" in flat(result.output)
    result = invoke(
        *("--name", "mmbench", "--data", str(data), "--model", "m"),
        *("--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"),
    )
    assert result.exit_code == 2 and "mmbench is not scored by a judge model" in flat(result.output)


def test_mmhal_scored_by_a_scripted_judge(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data = write_template(tmp_path)
    out = tmp_path / "answers.jsonl"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-cli-secret")
    replies = ["Rating: 6", "Rating: 2", "Rating: 4", "no rating"]  # 6, 2, 4, 0: mean 3.0, 2 of 4 below 3
    with scripted_judge(replies) as server:
        result = invoke(
            *("--name", "mmhal", "--data", str(data), "--model", str(tiny_model_dir)),
            *("--max-new-tokens", "4", "--out", str(out)),
            *("--judge-url", server.url, "--judge-model", "judge", "--judge-key-env", "MY_JUDGE_KEY"),
        )
    assert result.exit_code == 0, result.output
    assert "sk-cli-secret" not in result.output
    assert all(r["headers"]["Authorization"] == "Bearer sk-cli-secret" for r in server.requests)
    answers = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
    assert [r["body"]["messages"][0]["content"].rsplit("\n", 2)[-2] for r in server.requests] == answers
    assert "average_score" in result.output and "hallucination_rate" in result.output
    assert "3.000" in result.output and "0.500" in result.output


def test_mmhal_judge_failure_keeps_the_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_template(tmp_path, n=1)
    out = tmp_path / "answers.jsonl"
    with scripted_judge([400], error_body='{"error": {"message": "unknown model"}}') as server:
        result = invoke(
            *("--name", "mmhal", "--data", str(data), "--model", str(tiny_model_dir)),
            *("--max-new-tokens", "2", "--out", str(out)),
            *("--judge-url", server.url, "--judge-model", "judge"),
        )
    assert result.exit_code == 1
    assert "answered HTTP 400" in flat(result.output) and "unknown model" in flat(result.output)
    assert len(out.read_text().splitlines()) == 1
