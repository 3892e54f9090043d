"""Progress events and cooperative cancellation (progress.py)."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import TrainerControl

from mbpo_core.training.progress import ProgressBridge, ProgressEvent, eta_seconds, select_metrics
from mbpo_core.training.session import train_policy

from .conftest import tiny_config


def test_select_metrics_renames_the_documented_keys():
    logs = {"loss": 0.5, "reward": 1.0, "rewards/online/mean": 0.25, "kl": 0.01, "epoch": 1, "note": "x"}
    assert select_metrics(logs) == {"loss": 0.5, "reward_mean": 1.0, "reward_online_mean": 0.25, "kl": 0.01}


def test_eta_from_the_pace_so_far():
    assert eta_seconds(10.0, 2, 3) == 15.0
    assert eta_seconds(10.0, 0, 3) is None


def test_stop_request_saves_and_stops_after_agreement():
    state = SimpleNamespace(global_step=3, max_steps=10, is_world_process_zero=True)
    control = TrainerControl()
    bridge = ProgressBridge(
        should_stop=lambda: False, agree=lambda wish: True
    )  # another process wants to stop
    bridge.on_step_end(None, state, control)
    assert bridge.cancelled and control.should_save and control.should_training_stop


def test_training_reports_every_step(tiny_model_dir, tiny_data, tmp_path):
    events: list[ProgressEvent] = []
    config = tiny_config(offline_fraction=0.5, max_steps=2, save_steps=2)
    train_policy(
        tiny_model_dir,
        tmp_path,
        config,
        online=tiny_data["online"],
        pairs=tiny_data["pairs"],
        progress=events.append,
    )
    assert [(e.stage, e.step, e.total) for e in events] == [("training", 1, 2), ("training", 2, 2)]
    assert events[-1].eta_s == 0.0
    expected = {
        "loss",
        "reward_mean",
        "reward_std",
        "reward_online_mean",
        "reward_offline_mean",
        "kl",
        "clip_ratio",
    }
    assert expected | {"completion_length", "learning_rate"} <= set(events[0].metrics)
