"""`train.report_to`: the same loss and reward series reach TensorBoard, MLflow (a local SQLite store)
and W&B (offline mode) as the trainer's own log history, through transformers' integrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbpo_core.training.arguments import TENSORBOARD_SUBDIR, missing_trackers
from mbpo_core.training.session import train_policy
from tests.mbpo_core.training.conftest import tiny_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def _series(log_history: list[dict[str, float]], key: str) -> dict[int, float]:
    return {int(e["step"]): float(e[key]) for e in log_history if key in e}


def test_trackers_get_the_same_series_as_the_log_history(
    tiny_model_dir: Path, tiny_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mbpo-tests")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "mbpo-tests")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert missing_trackers(["tensorboard", "mlflow", "wandb"]) == []
    config = tiny_config(max_steps=3, report_to=["tensorboard", "mlflow", "wandb"])
    out = tmp_path / "run-7" / "training"
    result = train_policy(tiny_model_dir, out, config, online=tiny_data["online"], pairs=tiny_data["pairs"])
    loss = _series(result.log_history, "loss")
    reward = _series(result.log_history, "reward")
    assert sorted(loss) == [1, 2, 3] and sorted(reward) == [1, 2, 3]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / TENSORBOARD_SUBDIR))
    events.Reload()
    tb_loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb_loss == pytest.approx(loss, rel=1e-5)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("mbpo-tests")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-7"  # the service's run id names the tracked run
    for key, expected in (("loss", loss), ("reward", reward)):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == pytest.approx(expected, rel=1e-5), key

    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
