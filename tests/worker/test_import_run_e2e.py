"""A dataset imported in TRL's format trains a run: the quick testbed's online samples written as TRL
`messages` rows, registered by path (format detected), validated and converted by the worker, and
used as the online dataset of a quick run on the real stack (`mbpo api` + `mbpo worker`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from tests.helpers import runs as rh
from tests.helpers import services


@pytest.fixture(scope="module")
def stack(committed_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[rh.Stack]:
    services.require_redis()
    testbed = rh.quick_testbed()
    base = tmp_path_factory.mktemp("import-run")
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


def test_trl_dataset_trains_a_testbed_run(stack: rh.Stack, pg_factory: sessionmaker[Session]) -> None:
    testbed = rh.quick_testbed()
    with pg_factory.begin() as session:
        _, key = create_api_key(session, user_name="trl-runner", key_name="k", admin=False)
    subset = rh.write_subset(testbed, "online", stack.base / "subset", 32)
    trl_dir = stack.base / "roots" / "trl"
    shutil.copytree(subset / "images", trl_dir / "images")
    rows = []
    for line in (subset / "manifest.jsonl").read_text().splitlines():
        sample = json.loads(line)
        rows.append(
            {
                "id": sample["id"],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": sample["question"]}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": sample["answer"]}]},
                ],
                "images": [sample["image"]],
                # Kept next to TRL's columns: a multiple-choice answer ("A") needs its options.
                "task": sample["task"],
                "choices": sample.get("choices"),
            }
        )
    (trl_dir / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
        assert model.status_code == 201, model.text
        created = client.post("/v1/datasets", json={"name": "trl online", "path": str(trl_dir)})
        assert created.status_code == 201, created.text
        assert created.json()["format"] == "trl"
        dataset_id = created.json()["id"]

        def validated() -> dict | None:
            body = client.get(f"/v1/datasets/{dataset_id}").json()
            return body if body["status"] != "validating" else None

        dataset = services.wait_for(validated, timeout=120, what="the TRL dataset to be validated")
        assert dataset["status"] == "ready", dataset["report"]
        assert dataset["num_samples"] == 32
        body = {
            "name": "from trl",
            "base_model_id": model.json()["id"],
            "online_dataset_id": dataset_id,
            "eval_dataset_ids": [],
            "config": rh.quick_config(),
        }
        run = client.post("/v1/runs", json=body)
        assert run.status_code == 201, run.text
        final = rh.wait_status(client, run.json()["id"], {"succeeded", "failed", "cancelled"})
        assert final["status"] == "succeeded", final["error"]
        series = client.get(f"/v1/runs/{final['id']}/metrics").json()["series"]
        assert [p["step"] for p in series["loss"]] == [1, 2, 3]
