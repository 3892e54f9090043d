"""User reward functions (`train.reward_funcs`): loaded only from installed packages' `mbpo.rewards`
entry points, checked before any compute, and trained with next to the verified rewards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mbpo_core.pipeline import stages as pipeline
from mbpo_core.pipeline.stages import PipelineError, RunInputs, RunLayout
from mbpo_core.training.rewards import RewardPluginError, installed_rewards, load_reward_funcs
from mbpo_core.training.session import train_policy
from tests.mbpo_core.training.conftest import tiny_config

PACKAGE = '''
def brevity(prompts, completions, **columns):
    """1 for an answer of at most 3 characters, else 0."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    texts = [t if isinstance(t, str) else "".join(p.get("text", "") for p in t) for t in texts]
    return [1.0 if len(t.strip()) <= 3 else 0.0 for t in texts]

brevity.max_reward = 1.0

def no_maximum(prompts, completions, **columns):
    return [0.0] * len(completions)
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package installed the way pip leaves one: a module and a .dist-info with entry points."""
    site = tmp_path / "site"
    (site / "mbpo_test_rewards-0.1.dist-info").mkdir(parents=True)
    (site / "mbpo_test_rewards.py").write_text(PACKAGE)
    info = site / "mbpo_test_rewards-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mbpo-test-rewards\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mbpo.rewards]\nbrevity = mbpo_test_rewards:brevity\nno_maximum = mbpo_test_rewards:no_maximum\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("mbpo_test_rewards", None)


def test_rewards_are_found_by_entry_point_name_only(installed: Path) -> None:
    assert {"brevity", "no_maximum"} <= set(installed_rewards())
    funcs, maxima = load_reward_funcs(["brevity"])
    assert maxima == [1.0] and funcs[0]([], ["yes", "a long answer"]) == [1.0, 0.0]
    with pytest.raises(RewardPluginError, match="no installed package provides a reward named 'nope'"):
        load_reward_funcs(["nope"])
    with pytest.raises(RewardPluginError, match="max_reward"):
        load_reward_funcs(["no_maximum"])
    # A module path is not a name: code is never imported by path from a run spec.
    with pytest.raises(RewardPluginError):
        load_reward_funcs(["mbpo_test_rewards:brevity"])


def test_an_unknown_reward_fails_validation_before_any_compute(
    installed: Path, tiny_model_dir: Path, tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_config(reward_funcs=["missing"])
    inputs = RunInputs(model_dir=tiny_model_dir, online_manifest=tiny_data["online"])
    with pytest.raises(PipelineError) as error:
        pipeline.validate(inputs, RunLayout(tmp_path / "run"), config)
    assert error.value.code == "unknown_reward" and "missing" in error.value.message


def test_training_logs_the_user_reward_next_to_the_verified_ones(
    installed: Path, tiny_model_dir: Path, tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_config(offline_fraction=0.5, reward_funcs=["brevity"])
    result = train_policy(
        tiny_model_dir, tmp_path / "run", config, online=tiny_data["online"], pairs=tiny_data["pairs"]
    )
    logged = next(entry for entry in result.log_history if "loss" in entry)
    assert {"rewards/accuracy/mean", "rewards/answer_format/mean", "rewards/brevity/mean"} <= set(logged)
