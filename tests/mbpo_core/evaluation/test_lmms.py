"""POPE as a local LMMS-Eval task (mbpo_core/evaluation/lmms.py, `mbpo eval lmms-task`): the folder's
layout, its questions (those `pope.load` reads, LMMS-Eval's prompt rebuilt from them), its YAML,
and bad input. LMMS-Eval running it against the service: tests/cli/test_lmms_eval.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError
from mbpo_core.evaluation.lmms import write_pope_task


def write_pope(root: Path, files: dict[str, list[dict[str, Any]]]) -> tuple[Path, Path]:
    """POPE question files (one JSON object a line) in root/questions, their images in root/images."""
    (root / "questions").mkdir(parents=True)
    (root / "images").mkdir()
    for name, rows in files.items():
        for row in rows:
            Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / row["image"])
        (root / "questions" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "questions", root / "images"


def row(
    qid: int | str, label: str, image: str, text: str = " Is there a dog in the image? "
) -> dict[str, Any]:
    return {"question_id": qid, "image": image, "text": text, "label": label}


class TaskLoader(yaml.SafeLoader):
    """Reads LMMS-Eval's `!function module.name` tags as plain strings."""


def _function_tag(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return f"!function {loader.construct_scalar(node)}"


TaskLoader.add_constructor("!function", _function_tag)


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=TaskLoader)


def test_task_folder_holds_the_questions_pope_load_reads(tmp_path: Path) -> None:
    data, images = write_pope(
        tmp_path,
        {
            "coco_pope_random.json": [row(1, "yes", "a.png"), row(2, "no", "a.png", "Is there a cat?")],
            "coco_pope_adversarial.json": [row("x7", "no", "b.png")],
        },
    )
    task = write_pope_task(data, images, tmp_path / "task")
    assert task.path == (tmp_path / "task").resolve() and task.questions == 3
    assert task.name == "mbpo_pope"
    assert task.tasks == {
        "mbpo_pope_coco_pope_adversarial": "coco_pope_adversarial",
        "mbpo_pope_coco_pope_random": "coco_pope_random",
    }
    files = sorted(p.name for p in task.path.iterdir())
    assert files == [
        "data",
        "mbpo_pope.yaml",
        "mbpo_pope_coco_pope_adversarial.yaml",
        "mbpo_pope_coco_pope_random.yaml",
        "utils.py",
    ]
    saved = datasets.load_from_disk(str(task.path / "data"))
    assert sorted(saved) == ["coco_pope_adversarial", "coco_pope_random"]
    items = pope.load(data, images)
    rows = [r for split in ("coco_pope_adversarial", "coco_pope_random") for r in saved[split]]
    by_id = {f"{r['category']}/{r['question_id']}": r for r in rows}
    assert sorted(by_id) == sorted(i.id for i in items)
    config = read_yaml(task.path / "mbpo_pope_coco_pope_random.yaml")
    suffix = config["lmms_eval_specific_kwargs"]["default"]["post_prompt"]
    for item in items:
        doc = by_id[item.id]
        # LMMS-Eval's pope_doc_to_text: pre_prompt + the stripped question + post_prompt
        assert f"{doc['question'].strip()}{suffix}" == item.prompt
        assert doc["answer"] == item.meta["label"] and Path(doc["image"]) == item.image
        assert doc["image_source"] == item.image.name
    assert [r["question_id"] for r in saved["coco_pope_random"]] == ["1", "2"]  # file order


def test_task_yaml_is_lmms_evals_pope_task_on_the_local_dataset(tmp_path: Path) -> None:
    data, images = write_pope(tmp_path, {"coco_pope_popular.json": [row(1, "yes", "a.png")]})
    task = write_pope_task(data / "coco_pope_popular.json", images, tmp_path / "task", name="pope_local")
    assert task.name == "pope_local_coco_pope_popular"  # one file: no group, its task is the name
    assert not (task.path / "pope_local.yaml").exists()
    config = read_yaml(task.path / "pope_local_coco_pope_popular.yaml")
    assert config["task"] == "pope_local_coco_pope_popular"
    assert config["dataset_path"] == str(task.path / "data")
    assert config["dataset_kwargs"] == {"load_from_disk": True}
    assert config["test_split"] == "coco_pope_popular"
    assert config["output_type"] == "generate_until"
    assert config["doc_to_visual"] == "!function utils.pope_doc_to_visual"
    assert config["doc_to_text"] == "!function utils.pope_doc_to_text"
    assert config["process_results"] == "!function utils.pope_process_results"
    assert (
        config["generation_kwargs"]["temperature"] == 0 and config["generation_kwargs"]["do_sample"] is False
    )
    assert config["lmms_eval_specific_kwargs"]["default"] == {
        "pre_prompt": "",
        "post_prompt": pope.PROMPT_SUFFIX,
    }
    names = [m["metric"] for m in config["metric_list"]]
    assert names == ["pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"]
    assert [m["aggregation"] for m in config["metric_list"]] == [
        f"!function utils.pope_aggregate_{n.removeprefix('pope_')}" for n in names
    ]
    utils = (task.path / "utils.py").read_text()
    assert "from lmms_eval.tasks.pope.utils import" in utils and "def pope_doc_to_visual(doc):" in utils
    compile(utils, "utils.py", "exec")


def test_file_names_that_are_not_split_names_are_made_into_ones(tmp_path: Path) -> None:
    data, images = write_pope(tmp_path, {"gqa-pope random.json": [row(1, "yes", "a.png")]})
    task = write_pope_task(data, images, tmp_path / "task")
    assert task.tasks == {"mbpo_pope_gqa_pope_random": "gqa-pope random"}
    saved = datasets.load_from_disk(str(task.path / "data"))
    assert list(saved) == ["gqa_pope_random"] and saved["gqa_pope_random"][0]["category"] == "gqa-pope random"


def test_a_broken_question_file_names_the_line_and_writes_nothing(tmp_path: Path) -> None:
    data, images = write_pope(tmp_path, {"coco_pope_random.json": [row(1, "yes", "a.png")]})
    path = data / "coco_pope_random.json"
    path.write_text(path.read_text() + '{"question_id": 2, "image": "a.png", "text": "Is there a cat?"}\n')
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random\.json, line 2: missing field 'label'"):
        write_pope_task(data, images, tmp_path / "task")
    assert not (tmp_path / "task").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-built folder
    path.write_text(json.dumps(row(1, "yes", "missing.png")) + "\n")
    with pytest.raises(BenchmarkDataError, match="line 1"):
        write_pope_task(data, images, tmp_path / "task")


def test_refuses_a_non_empty_folder_and_a_bad_name(tmp_path: Path) -> None:
    data, images = write_pope(tmp_path, {"coco_pope_random.json": [row(1, "yes", "a.png")]})
    (tmp_path / "task").mkdir()
    write_pope_task(data, images, tmp_path / "task")  # an empty folder is fine
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_pope_task(data, images, tmp_path / "task")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        write_pope_task(data, images, tmp_path / "other", name="my-task")


def test_cli_writes_the_task_and_prints_the_command(tmp_path: Path) -> None:
    data, images = write_pope(
        tmp_path,
        {
            "coco_pope_random.json": [row(1, "yes", "a.png")],
            "coco_pope_popular.json": [row(1, "no", "a.png")],
        },
    )
    args = ["eval", "lmms-task", "--data", str(data), "--images", str(images)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "task")])
    assert result.exit_code == 0, result.output
    assert "2 questions" in result.output and "group: mbpo_pope" in result.output
    assert f"--tasks mbpo_pope --include_path {(tmp_path / 'task').resolve()}" in result.output
    assert (tmp_path / "task" / "mbpo_pope.yaml").is_file()
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "task")])
    assert again.exit_code == 2 and "not an empty directory" in again.output
    (data / "coco_pope_random.json").write_text('{"question_id": 1, "image": "a.png"}\n')
    broken = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "task2")])
    assert broken.exit_code == 2
    assert "coco_pope_random.json, line 1: missing field" in broken.output
    assert not (tmp_path / "task2").exists()
