"""LMMS-Eval 0.7.3 (its own environment, .venv-lmms, installed by `make lmms-eval`) scores the
quick testbed's model served by embedded `mbpo serve` through `POST /v1/chat/completions`, offline,
on a 6-question POPE fixture written as a task by `mbpo eval lmms-task`; `mbpo eval benchmark` scores
the same model on the same files. The two see the same prompts and images and give the same
answers, item by item. LMMS-Eval's numbers are its POPE scoring of those answers; ours are POPE's
evaluate.py scoring of them; the two rules agree whenever every answer is a plain yes / no."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import pope
from tests.helpers import services
from tests.helpers.runs import quick_testbed

pytestmark = pytest.mark.slow

LMMS_PYTHON = services.REPO_ROOT / ".venv-lmms" / "bin" / "python"
LMMS_METRICS = ("accuracy", "precision", "recall", "f1_score", "yes_ratio")
# LMMS-Eval's own POPE scoring (lmms_eval/tasks/pope/utils.py) of [doc, answer] pairs on stdin.
LMMS_SCORE = """
import json, sys
from lmms_eval.tasks.pope import utils
results = [utils.pope_process_results(doc, [answer]) for doc, answer in json.load(sys.stdin)]
scores = {m: getattr(utils, f"pope_aggregate_{m}")([r[f"pope_{m}"] for r in results]) for m in sys.argv[1:]}
print(json.dumps(scores))
"""


def lmms_python() -> Path:
    if not LMMS_PYTHON.is_file():
        message = (
            f"LMMS-Eval's environment {LMMS_PYTHON.parent.parent} is missing: `make lmms-eval` installs it"
        )
        if services.services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return LMMS_PYTHON


def lmms_env(tmp: Path, **extra: str) -> dict[str, str]:
    """No hub: LMMS-Eval and `datasets` offline, their caches in the test's directory."""
    env = services.service_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp / "hf"), **extra)
    env.pop("OPENAI_API_BASE", None)
    return env


def lmms_pope_scores(tmp: Path, docs_answers: list[tuple[dict[str, str], str]]) -> dict[str, float]:
    done = subprocess.run(
        [str(lmms_python()), "-c", LMMS_SCORE, *LMMS_METRICS],
        input=json.dumps(docs_answers),
        capture_output=True,
        text=True,
        env=lmms_env(tmp),
        cwd=tmp,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def pope_fixture(testbed: Path, out: Path) -> tuple[Path, Path]:
    """Two POPE question files of three questions (random and adversarial probes of the same
    images), from the testbed's POPE splits; images as PNG files."""
    images = out / "val2014"
    images.mkdir(parents=True)
    questions = out / "questions"
    questions.mkdir()
    for split in ("random", "adversarial"):
        source = testbed / "datasets" / f"pope_{split}"
        rows = []
        for number, line in enumerate((source / "manifest.jsonl").read_text().splitlines()[:3], start=1):
            sample = json.loads(line)
            name = Path(sample["image"]).name
            if not (images / name).exists():
                Image.open(source / sample["image"]).convert("RGB").save(images / name)
            question = {
                "question_id": number,
                "image": name,
                "text": sample["question"],
                "label": sample["answer"],
            }
            rows.append(question)
        (questions / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return questions, images


def test_lmms_eval_scores_the_served_model_offline_as_the_cli_answers(tmp_path: Path) -> None:
    python = lmms_python()
    testbed = quick_testbed()
    data, images = pope_fixture(testbed, tmp_path / "pope")

    # mbpo eval benchmark on the model directory, with LMMS-Eval's POPE answer length
    answers_file = tmp_path / "answers.jsonl"
    args = ["eval", "benchmark", "--name", "pope", "--data", str(data), "--images", str(images)]
    args += ["--model", str(testbed / "base_model"), "--out", str(answers_file), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "128"])
    assert result.exit_code == 0, result.output
    table = result.output
    ours = {
        (a["split"], str(a["question_id"])): a for a in map(json.loads, answers_file.read_text().splitlines())
    }
    assert len(ours) == 6

    result = CliRunner().invoke(
        app,
        ["eval", "lmms-task", "--data", str(data), "--images", str(images), "--out", str(tmp_path / "task")],
    )
    assert result.exit_code == 0, result.output

    env = services.service_env(MBPO_HOME=str(tmp_path / "home"), MBPO_DATA_ROOTS=str(testbed))
    with services.embedded_serve([], env, tmp_path / "serve.log") as (url, _proc):
        key = (tmp_path / "home" / "admin_key").read_text().strip()
        registered = httpx.post(
            f"{url}/v1/models",
            json={"name": "testbed", "path": str(testbed / "base_model")},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert registered.status_code == 201, registered.text
        model = f"model:{registered.json()['id']}"
        command = [str(python), "-m", "lmms_eval", "eval", "--model", "openai", "--tasks", "mbpo_pope"]
        command += [
            "--model_args",
            f"model={model},base_url={url}/v1",
            "--include_path",
            str(tmp_path / "task"),
        ]
        command += ["--log_samples", "--output_path", str(tmp_path / "out")]
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=lmms_env(tmp_path, OPENAI_API_KEY=key),
            cwd=tmp_path,
            timeout=300,
        )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "LMMS_EVAL_REQUEST_FAILED" not in log and key not in log

    [results_file] = (tmp_path / "out").glob("*/*_results.json")
    reported = json.loads(results_file.read_text())["results"]
    for split in ("coco_pope_random", "coco_pope_adversarial"):
        task = f"mbpo_pope_{split}"
        [samples_file] = (tmp_path / "out").glob(f"*/*_samples_{task}.jsonl")
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert len(samples) == 3
        # the same answer to every question, through LMMS-Eval and the service as from the CLI
        answers = {str(s["pope_accuracy"]["question_id"]): s["filtered_resps"] for s in samples}
        assert answers == {qid: a["answer"] for (s, qid), a in ours.items() if s == split}
        assert all(
            s["input"] == ours[(split, qid)]["prompt"] for s, qid in zip(samples, answers, strict=True)
        )
        # LMMS-Eval's numbers: its scoring of our answers; ours: POPE's scoring of its answers
        docs_answers = [
            ({"question_id": qid, "answer": a["label"]}, a["answer"])
            for (s, qid), a in ours.items()
            if s == split
        ]
        expected = lmms_pope_scores(tmp_path, docs_answers)
        assert {m: reported[task][f"pope_{m},none"] for m in LMMS_METRICS} == pytest.approx(expected)
        labels = [a["label"] for (s, _), a in ours.items() if s == split]
        official = pope.metrics(labels, [answers[qid] for (s, qid) in ours if s == split])
        [row] = [line for line in table.splitlines() if split in line]
        printed = re.findall(r"\d\.\d{3}", row)[:4]  # accuracy, precision, recall, f1 (yes_ratio, ...)
        assert printed == [f"{official[m]:.3f}" for m in ("accuracy", "precision", "recall", "f1")]


def test_lmms_eval_and_pope_scoring_agree_on_plain_answers_only(tmp_path: Path) -> None:
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    docs = [{"question_id": str(i), "answer": label} for i, label in enumerate(labels)]
    plain = ["yes", "No", "yes", " no ", "yes", "no"]
    lmms = lmms_pope_scores(tmp_path, list(zip(docs, plain, strict=True)))
    ours = pope.metrics(labels, plain)
    # TP 2, FN 1, FP 1, TN 2 under both rules
    assert lmms["accuracy"] == pytest.approx(ours["accuracy"]) == pytest.approx(4 / 6)
    assert lmms["precision"] == pytest.approx(ours["precision"]) == pytest.approx(2 / 3)
    assert lmms["recall"] == pytest.approx(ours["recall"]) == pytest.approx(2 / 3)
    assert lmms["f1_score"] == pytest.approx(ours["f1"])
    assert lmms["yes_ratio"] == pytest.approx(0.5)  # LMMS-Eval: the share of "yes" in the truth
    assert ours["yes_ratio"] == pytest.approx(0.5)  # POPE: the share of answers counted "yes"
    # Not plain: LMMS-Eval counts only an exact yes / no; POPE's rule reads a yes into the rest.
    wordy = ["Yes, there is.", "1", "yes.", "no", "", "no"]
    lmms = lmms_pope_scores(tmp_path, list(zip(docs, wordy, strict=True)))
    ours = pope.metrics(labels, wordy)
    assert lmms["accuracy"] == pytest.approx(2 / 6) and lmms["recall"] == pytest.approx(0.0)
    assert ours["accuracy"] == pytest.approx(5 / 6) and ours["recall"] == pytest.approx(1.0)
