"""Every registered model family through the service: a tiny model directory of the family (random
weights saved with `save_pretrained`) registers through the API with its family, a run of the quick
recipe on it reaches `succeeded`, and its aligned checkpoint answers an OpenAI-compatible chat
completion. One embedded `mbpo serve` (its one local worker) serves all families in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import datasets as ds
from tests.helpers import runs as rh
from tests.helpers import services
from tests.helpers.inference import data_url, png_bytes
from tests.mbpo_core.models.conftest import FAMILIES

pytestmark = pytest.mark.slow
WORDS = ["is", "there", "a", "red", "square", "fork", "which", "colour", "the", "how", "many", "squares"]
WORDS += ["describe", "image", "yes", "no", "blue", "green"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    from mbpo_core.models.build import build_model, build_processor

    base = tmp_path_factory.mktemp("families")
    roots = base / "roots"
    for family in FAMILIES:
        processor = build_processor(family, WORDS, image_size=56, max_image_size=112)
        build_model(family, processor, "tiny", seed=0).save_pretrained(roots / "models" / family)
        processor.save_pretrained(roots / "models" / family)
    ds.make_dataset_dir(roots / "data", [s for s in ds.good_samples() if s["task"] != "open"])
    env = services.service_env(MBPO_HOME=str(base / "home"), MBPO_DATA_ROOTS=str(roots), OMP_NUM_THREADS="2")
    with services.embedded_serve([], env, base / "serve.log") as (url, _):
        key = (base / "home" / "admin_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            yield client, roots


@pytest.fixture(scope="module")
def dataset_id(service: tuple[httpx.Client, Path]) -> str:
    client, roots = service
    created = client.post("/v1/datasets", json={"name": "shapes", "path": str(roots / "data")})
    assert created.status_code == 201, created.text

    def ready() -> str | None:
        status: str = client.get(f"/v1/datasets/{created.json()['id']}").json()["status"]
        return None if status == "validating" else status

    assert services.wait_for(ready, timeout=120, interval=0.5, what="dataset validation") == "ready"
    return str(created.json()["id"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_registers_aligns_and_chats(
    service: tuple[httpx.Client, Path], dataset_id: str, family: str
) -> None:
    client, roots = service
    model = client.post("/v1/models", json={"name": family, "path": str(roots / "models" / family)})
    assert model.status_code == 201, model.text
    assert model.json()["family"] == family

    body: dict[str, Any] = {
        "name": f"{family} quick",
        "base_model_id": model.json()["id"],
        "offline_dataset_id": dataset_id,
        "online_dataset_id": dataset_id,
        "eval_dataset_ids": [dataset_id],
        "config": rh.quick_config(max_steps=2, save_steps=2),
    }
    run = client.post("/v1/runs", json=body)
    assert run.status_code == 201, run.text
    done = rh.wait_status(client, run.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
    assert done["status"] == "succeeded", (done.get("error_code"), done.get("error_message"))

    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": f"run:{run.json()['id']}",
            "max_tokens": 3,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(png_bytes(56, 84))}},
                        {"type": "text", "text": "is there a red square"},
                    ],
                }
            ],
        },
    )
    assert chat.status_code == 200, chat.text
    assert isinstance(chat.json()["choices"][0]["message"]["content"], str)
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[f"model:{model.json()['id']}"].get("family") == family
