"""The OpenAPI schema holds for the running service, checked by Schemathesis: all its checks (no 5xx,
only documented status codes, content types, bodies and headers, valid data accepted, invalid data
refused, authentication enforced, ...) over its coverage, fuzzing and stateful phases, against
`mbpo api` on a fresh migrated PostgreSQL database with Redis as the broker, with a real API key.

A base model, ready datasets and a finished run are there from the start, and half the generated
ids name them, so the routes behind a lookup answer with real bodies too, not only 404s.

Bounded and repeatable (tests/api/schemathesis.toml: deterministic generation, a few dozen examples
per operation). A failure prints Schemathesis' own report: each finding with the response it got
and a curl line that reproduces it against a server started the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.db.models import Artefact, BaseModelRecord, Checkpoint, Dataset, SpotCheckRecord
from infra.db.session import get_session_factory
from tests.helpers import services
from tests.helpers.runs import Stack

CONFIG = Path(__file__).with_name("schemathesis.toml")
# A 1x1 grey PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63600000000200015ea2a8c10000000049454e44ae426082"
)
PHASES = ("coverage", "fuzzing", "stateful")

pytestmark = pytest.mark.services


def _rows(factory: sessionmaker[Session], owner: str) -> tuple[str, list[str], str, str]:
    """A base model, two ready datasets, a spot-check and a second key: (model, datasets, spot-check,
    key) ids."""
    with factory.begin() as session:
        model = BaseModelRecord(
            owner_id=owner,
            name="m",
            path="/nowhere/model",
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        datasets = [
            Dataset(
                owner_id=owner,
                name=f"d{i}",
                source="path",
                root_path="/nowhere",
                manifest_name="manifest.jsonl",
                status="ready",
                task_counts={"yes_no": 10},
                num_samples=10,
            )
            for i in range(2)
        ]
        answer = {"model": "m", "answer": "yes", "null_answer": "no", "answer_iig": 1.0}
        spot_check = SpotCheckRecord(
            owner_id=owner,
            question="Is there a fork?",
            null_image="gray",
            max_tokens=4,
            image_sha256="0" * 64,
            image_width=8,
            image_height=8,
            thumbnail="data:image/jpeg;base64,",
            models=["model:a", "model:b"],
            results=[{**answer, "null_answer_iig": 0.0, "same_as_prior": False, "seconds": 0.1}],
        )
        session.add_all([model, *datasets, spot_check])
        session.flush()
        spare, _ = create_api_key(session, user_name="spare", key_name="spare", admin=False)
        return model.id, [d.id for d in datasets], spot_check.id, spare.id


def _run_files(factory: sessionmaker[Session], home: Path, run_id: str) -> str:
    """A report artefact with an image beside it, and a complete checkpoint at step 1: the artefact id."""
    run_dir = home / "runs" / run_id
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "report.json").write_text('{"accuracy": 0.5}')
    (run_dir / "eval" / "clean.png").write_bytes(PNG)
    model_dir = run_dir / "training" / "checkpoints" / "checkpoint-1" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"w" * 64)
    (model_dir / "config.json").write_text('{"model_type": "qwen2_vl"}')
    with factory.begin() as session:
        report = Artefact(run_id=run_id, kind="eval_report", path=f"runs/{run_id}/eval/report.json")
        checkpoint = Checkpoint(
            run_id=run_id, step=1, path=f"runs/{run_id}/training/checkpoints/checkpoint-1", complete=True
        )
        session.add_all([report, checkpoint])
        session.flush()
        return report.id


def _seed(factory: sessionmaker[Session], owner: str, home: Path, url: str, key: str) -> dict[str, list[Any]]:
    """Values by parameter that name real things: rows written directly, and a run created and
    cancelled through the API (so it has its real events, and its stream ends), with files."""
    model_id, dataset_ids, spot_check_id, spare_key_id = _rows(factory, owner)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        body = {
            "name": "seeded",
            "base_model_id": model_id,
            "offline_dataset_id": dataset_ids[0],
            "online_dataset_id": dataset_ids[1],
        }
        created = client.post("/v1/runs", json=body)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
    artefact_id = _run_files(factory, home, run_id)
    served = [f"model:{model_id}", f"run:{run_id}", f"run:{run_id}@1"]  # names chat completions take
    return {
        "path.run_id": [run_id],
        "path.step": [1],
        "path.artefact_id": [artefact_id],
        "path.relative": ["clean.png"],
        "path.model_id": [model_id, *served],
        "path.dataset_id": dataset_ids,
        "path.spot_check_id": [spot_check_id],
        "path.key_id": [spare_key_id],
        "body.base_model_id": [model_id],
        "body.offline_dataset_id": dataset_ids,
        "body.online_dataset_id": dataset_ids,
        "body.model": served,
        "body.models[*]": served,
    }


def _config(known: dict[str, list[Any]], workdir: Path) -> Path:
    """The checked-in configuration plus the known values. A path parameter takes one for half its
    generated values (the other half stay generated: missing resources are tested too); a body
    reference always does (a run whose model or datasets do not exist is never created), except in
    negative cases, which take none of them."""
    lines = [CONFIG.read_text(), "\n[parameters]"]
    for i, where in enumerate(known):
        probability = 1.0 if where.startswith("body.") else 0.5
        lines.append(f'"{where}" = {{ dictionary = "seeded{i}", probability = {probability} }}')
    for i, values in enumerate(known.values()):
        lines += [f"\n[dictionaries.seeded{i}]", f"values = {json.dumps(values)}"]
    config = workdir / "schemathesis.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _schemathesis(config: Path, url: str, key: str, workdir: Path) -> tuple[str, int, dict[str, Any]]:
    report = workdir / "report.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run"),
            *("--checks", "all", "--phases", ",".join(("examples", *PHASES))),
            *("--report", "json", "--report-json-path", str(report)),
            f"{url}/openapi.json",
        ],
        # The key travels in the environment (the config reads it), never on a command line.
        env={**os.environ, "MBPO_SCHEMATHESIS_KEY": key},
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert report.is_file(), result.stdout + result.stderr
    return result.stdout + result.stderr, result.returncode, json.loads(report.read_text())


@pytest.mark.timeout(600)
def test_openapi_schema_holds_under_schemathesis(tmp_path: Path) -> None:
    services.require_redis()
    (tmp_path / "roots").mkdir()
    prefix = services.broker_prefix()
    with services.fresh_database() as url:
        factory = get_session_factory(url)
        with factory.begin() as session:
            row, key = create_api_key(session, user_name="schemathesis", key_name="schemathesis", admin=True)
            owner = row.user_id
        env = services.service_env(
            DATABASE_URL=url,
            BROKER_URL=services.REDIS_URL,
            MBPO_BROKER_KEY_PREFIX=prefix,
            MBPO_HOME=str(tmp_path / "home"),
            MBPO_DATA_ROOTS=str(tmp_path / "roots"),
            MBPO_ENV="test",
            MBPO_SSE_PING_SECONDS="1",
            # No inference worker: a chat completion or spot-check that gets that far is a 504.
            MBPO_INFERENCE_TIMEOUT_SECONDS="0.5",
            # Rate limits would answer most creations with 429 and leave the routes behind untested.
            MBPO_RATE_LIMIT_RUNS_PER_MINUTE="0",
            MBPO_RATE_LIMIT_INFERENCE_PER_MINUTE="0",
        )
        stack = Stack(env=env, base=tmp_path)
        try:
            stack.start_api()
            config = _config(_seed(factory, owner, tmp_path / "home", stack.url, key), tmp_path)
            output, returncode, report = _schemathesis(config, stack.url, key, tmp_path)
        finally:
            stack.stop()
            services.delete_redis_prefix(prefix)

    cases = report["test_cases"]
    print(f"schemathesis: {cases['generated']} cases, {cases['unique_failures']} unique failures")
    assert returncode == 0, output[-40000:]
    # Nothing skipped its way to green: every operation and phase ran, and generated real traffic.
    assert report["complete"] and report["operations"]["tested"] == report["operations"]["total"] > 20
    assert {name: report["phases"][name]["status"] for name in PHASES} == dict.fromkeys(PHASES, "success")
    assert cases["generated"] > 1000
