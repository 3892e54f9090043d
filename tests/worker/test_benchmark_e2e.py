"""POPE as an evaluation dataset of the service, on the real stack (`mbpo api` + `mbpo worker`):
POPE's COCO layout (the official question files + a COCO-named image folder, made from the quick
testbed) registers by server path and validates with its items per split; a copy with a line missing
its label ends `invalid`, the report naming the file and the line. A quick testbed run with the POPE
dataset among its eval datasets reports the benchmark's tables next to the manifest metrics, and
they are the numbers `mbpo eval benchmark --name pope` gives on the same models (the run's base
model and its aligned model): the same answers, the same tables. The admin pages show them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from api.auth.service import create_api_key
from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import pope
from tests.helpers import benchmarks as bh
from tests.helpers import runs as rh
from tests.helpers import services

pytestmark = pytest.mark.slow

SPLITS = {"coco_pope_adversarial", "coco_pope_popular", "coco_pope_random"}


@pytest.fixture(scope="module")
def stack(committed_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[rh.Stack]:
    services.require_redis()
    testbed = rh.quick_testbed()
    base = tmp_path_factory.mktemp("benchmark-run")
    (base / "roots").mkdir()
    prefix = services.broker_prefix()
    env = services.service_env(
        DATABASE_URL=committed_db,
        BROKER_URL=services.REDIS_URL,
        MBPO_BROKER_KEY_PREFIX=prefix,
        MBPO_HOME=str(base / "home"),
        MBPO_DATA_ROOTS=f"{base / 'roots'}:{testbed}",
        MBPO_ENV="test",
        OMP_NUM_THREADS="2",
    )
    stack = rh.Stack(env=env, base=base)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()
        services.delete_redis_prefix(prefix)


@pytest.fixture(scope="module")
def key(pg_factory: sessionmaker[Session]) -> str:
    with pg_factory.begin() as session:
        _, secret = create_api_key(session, user_name="benchmarker", key_name="k", admin=False)
    return secret


@pytest.fixture(scope="module")
def client(stack: rh.Stack, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def pope_files(stack: rh.Stack) -> tuple[Path, Path]:
    return bh.write_pope_coco(rh.quick_testbed(), stack.base / "roots" / "pope", per_split=6)


def register(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = client.post("/v1/datasets", json=body)
    assert created.status_code == 201, created.text

    def validated() -> dict[str, Any] | None:
        dataset: dict[str, Any] = client.get(f"/v1/datasets/{created.json()['id']}").json()
        return dataset if dataset["status"] != "validating" else None

    return services.wait_for(validated, timeout=120, what=f"validation of {body['name']}")


def test_pope_registers_with_its_splits_and_a_broken_file_names_its_line(
    client: httpx.Client, stack: rh.Stack, pope_files: tuple[Path, Path]
) -> None:
    data, images = pope_files
    dataset = register(
        client, {"name": "POPE COCO", "path": str(data), "benchmark": "pope", "images": str(images)}
    )
    assert dataset["status"] == "ready", dataset["report"]
    assert (dataset["format"], dataset["benchmark"], dataset["num_samples"]) == ("benchmark", "pope", 18)
    assert dataset["stats"]["benchmark"]["groups"] == dict.fromkeys(sorted(SPLITS), 6)
    assert dataset["stats"]["images"]["formats"] == {"JPEG": dataset["stats"]["images"]["distinct"]}

    broken = stack.base / "roots" / "pope-broken"
    shutil.copytree(data, broken)
    bh.break_line(broken / "coco_pope_popular.json", 4, "label")
    bad = register(
        client, {"name": "POPE broken", "path": str(broken), "benchmark": "pope", "images": str(images)}
    )
    assert bad["status"] == "invalid" and bad["num_samples"] == 0
    problem = {"file": str(broken / "coco_pope_popular.json"), "line": 4, "message": "missing field 'label'"}
    assert bad["report"]["errors"] == [{"code": "invalid_benchmark", **problem}]
    assert bad["error"]["code"] == "invalid_dataset"
    assert "coco_pope_popular.json, line 4: missing field 'label'" in bad["error"]["message"]
    # Nothing half-registered: no files of its own, and no run can use it.
    assert not (stack.base / "home" / "thumbnails" / bad["id"]).exists()
    assert not (stack.base / "home" / "datasets" / bad["id"]).exists()


@pytest.fixture(scope="module")
def finished_run(client: httpx.Client, stack: rh.Stack, pope_files: tuple[Path, Path]) -> dict[str, Any]:
    testbed = rh.quick_testbed()
    data, images = pope_files
    model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
    assert model.status_code == 201, model.text
    roots = stack.base / "roots"
    online = register(
        client, {"name": "online", "path": str(rh.write_subset(testbed, "online", roots / "online", 32))}
    )
    manifest = register(
        client,
        {
            "name": "pope adversarial",
            "path": str(rh.write_subset(testbed, "pope_adversarial", roots / "adv", 24)),
        },
    )
    bench = register(
        client, {"name": "POPE COCO run", "path": str(data), "benchmark": "pope", "images": str(images)}
    )
    assert online["status"] == manifest["status"] == bench["status"] == "ready"
    config = rh.quick_config()
    config["eval"]["limit"] = None  # the whole benchmark, as the CLI scores it by default
    body = {
        "name": "pope eval",
        "base_model_id": model.json()["id"],
        "online_dataset_id": online["id"],
        "eval_dataset_ids": [manifest["id"], bench["id"]],
        "config": config,
    }
    created = client.post("/v1/runs", json=body)
    assert created.status_code == 201, created.text
    final = rh.wait_status(client, created.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=420)
    assert final["status"] == "succeeded", final["error"]
    return final


def test_the_run_reports_the_numbers_of_mbpo_eval_benchmark(
    finished_run: dict[str, Any],
    client: httpx.Client,
    stack: rh.Stack,
    pope_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    data, images = pope_files
    scores = finished_run["scores"]
    assert set(scores["base"]) == {"pope adversarial"}  # the manifest split keeps its metrics
    card = scores["benchmarks"]["POPE COCO run"]
    assert (card["benchmark"], card["items"]) == ("pope", 18)
    assert set(card["base"]) == set(card["aligned"]) == SPLITS | {"all"}
    assert card["rows"] == [*sorted(SPLITS), "all"]  # the scorer's order: the files', then "all"
    assert card["metrics"] == ["n", "accuracy", "precision", "recall", "f1", "yes_ratio", "non_yes_no"]
    run_dir = stack.base / "home" / "runs" / finished_run["id"]
    models = {"base": rh.quick_testbed() / "base_model", "aligned": run_dir / "training" / "model"}
    items = pope.load(data, images)
    for which, model in models.items():
        out = tmp_path / f"{which}.jsonl"
        args = ["eval", "benchmark", "--name", "pope", "--data", str(data), "--images", str(images)]
        args += ["--model", str(model), "--out", str(out), "--device", "cpu", "--batch-size", "16"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        # The same answers, word for word, as the run saved for this model...
        saved = run_dir / "eval" / which / "benchmarks" / "POPE COCO run.answers.jsonl"
        assert out.read_text() == saved.read_text()
        # ...so the same tables: the run's are the CLI's scorer on the CLI's answers.
        answers = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
        cli_tables = pope.score(items, answers)
        assert card[which] == cli_tables
        for split in SPLITS:
            row = result.output.split(split, 1)[1].splitlines()[0]
            for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                assert f"{card[which][split][metric]:.3f}" in row, (which, split, metric, row)
    for split, metrics in card["delta"].items():
        for metric, delta in metrics.items():
            assert delta == pytest.approx(card["aligned"][split][metric] - card["base"][split][metric])
    # The published checkpoint carries the same scores.
    checkpoints = client.get(f"/v1/runs/{finished_run['id']}/checkpoints").json()
    newest = max(checkpoints, key=lambda c: c["step"])
    assert newest["eval_scores"]["benchmarks"] == scores["benchmarks"]


def shown(value: float) -> str:
    """A metric as the scorecard prints it (M.num in common.js): integers plain, else 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def test_the_admin_pages_show_the_benchmark(
    finished_run: dict[str, Any], client: httpx.Client, stack: rh.Stack, key: str
) -> None:
    from tests.ui.conftest import CHROMIUM_FLAGS, Service, _chromium_or_skip, make_tab

    chromium = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    service = Service(
        url=stack.url, home=stack.base / "home", roots=stack.base / "roots", log=stack.base, key=key
    )
    card = finished_run["scores"]["benchmarks"]["POPE COCO run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        try:
            tab = make_tab(browser, service)
            page = tab.page
            page.goto(f"/admin/runs/{finished_run['id']}/scorecard")
            page.wait_for_selector('table.benchmark-table[data-benchmark="pope"]')
            assert "POPE COCO run · pope (18 items)" in page.locator("#score-table-wrap h2").all_inner_texts()
            metric_rows = page.locator('tr[data-benchmark-split="POPE COCO run"]')
            shown_order = [
                (r.get_attribute("data-row"), r.get_attribute("data-metric")) for r in metric_rows.all()
            ]
            assert shown_order == [(row, m) for row in card["rows"] for m in card["metrics"] if m != "n"]
            for split in SPLITS:
                row = page.locator(
                    f'tr[data-benchmark-split="POPE COCO run"][data-row="{split}"][data-metric="f1"]'
                )
                cells = row.locator("td.num").all_inner_texts()
                assert cells[:2] == [shown(card["base"][split]["f1"]), shown(card["aligned"][split]["f1"])]
            page.wait_for_selector("#score-table")  # the manifest split's table is still there
            tab.screenshot("scorecard-benchmark")
            dataset_id = finished_run["eval_dataset_ids"][1]
            page.goto(f"/admin/datasets/{dataset_id}")
            assert page.locator("#dataset-benchmark").inner_text() == "pope"
            groups = page.locator("#benchmark-groups tbody tr").all_inner_texts()
            assert sorted(g.split()[0] for g in groups) == sorted(SPLITS)
            tab.screenshot("dataset-benchmark")
            assert tab.take_problems() == []
        finally:
            browser.close()
