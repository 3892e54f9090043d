"""MME: its release folder layouts and calculation.py's acc, acc+ and totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import mme
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError


def write_mme(root: Path) -> Path:
    existence = root / "existence"
    existence.mkdir(parents=True)
    for stem, suffix in (("a", ".jpg"), ("b", ".png")):
        (existence / f"{stem}{suffix}").write_bytes(b"")
        (existence / f"{stem}.txt").write_text(
            "Is there a dog? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n"
        )
    artwork = root / "artwork"
    (artwork / "images").mkdir(parents=True)
    (artwork / "questions_answers_YN").mkdir()
    (artwork / "images" / "c.jpg").write_bytes(b"")
    (artwork / "questions_answers_YN" / "c.txt").write_text("By Monet?\tYes\nBy Manet?\tNo\n")
    code = root / "code_reasoning"
    code.mkdir()
    (code / "d.png").write_bytes(b"")
    (code / "results.txt").write_text("d.png\tPrints 3?\tYes\nd.png\tPrints 4?\tNo\n")
    (root / "not_a_subtask").mkdir()
    return root


def test_load_reads_every_layout(tmp_path: Path) -> None:
    items = mme.load(write_mme(tmp_path))
    assert [(i.meta["subtask"], i.meta["image_name"], i.meta["label"]) for i in items] == [
        ("existence", "a.jpg", "yes"), ("existence", "a.jpg", "no"),
        ("existence", "b.png", "yes"), ("existence", "b.png", "no"),
        ("artwork", "c.jpg", "yes"), ("artwork", "c.jpg", "no"),
        ("code_reasoning", "d.png", "yes"), ("code_reasoning", "d.png", "no"),
    ]  # fmt: skip
    assert items[0].prompt == "Is there a dog? Please answer yes or no."
    assert items[4].image == tmp_path / "artwork" / "images" / "c.jpg"


def test_parse_answer_as_calculation_py() -> None:
    assert [mme.parse_answer(a) for a in ("Yes", "no", "yes, there is", "Not sure", "There is none", "")] == [
        "yes", "no", "yes", "no", "other", "other",
    ]  # fmt: skip


def test_scores_by_hand(tmp_path: Path) -> None:
    items = mme.load(write_mme(tmp_path))
    answers = [
        "Yes",
        "No",  # a: both right
        "yes, there is",
        "There is none",  # b: right, other (wrong)
        "not sure",
        "No",  # c: "not " -> no (wrong), right
        "YES",
        "no",  # d: both right
    ]
    tables = mme.score(items, answers)
    assert tables["existence"] == {"n": 4, "acc": 0.75, "acc_plus": 0.5, "score": pytest.approx(125.0)}
    assert tables["artwork"] == {"n": 2, "acc": 0.5, "acc_plus": 0.0, "score": pytest.approx(50.0)}
    assert tables["code_reasoning"]["score"] == pytest.approx(200.0)
    assert tables["perception"] == {"n": 6, "score": pytest.approx(175.0)}
    assert tables["cognition"] == {"n": 2, "score": pytest.approx(200.0)}


def test_bad_lines_name_the_file_and_line(tmp_path: Path) -> None:
    root = write_mme(tmp_path)
    bad = root / "existence" / "b.txt"
    bad.write_text("Is there a dog?\tYes\njust one field\n")
    with pytest.raises(BenchmarkDataError, match="TAB") as caught:
        mme.load(root)
    assert caught.value.path == bad and caught.value.line == 2
    bad.write_text("Is there a dog?\tmaybe\n")
    with pytest.raises(BenchmarkDataError, match="yes or no") as caught:
        mme.load(root)
    assert caught.value.line == 1
    (root / "existence" / "b.png").unlink()
    bad.write_text("Is there a dog?\tYes\n")
    with pytest.raises(BenchmarkDataError, match="no image b"):
        mme.load(root)
    with pytest.raises(BenchmarkDataError, match="no MME subtask"):
        mme.load(root / "not_a_subtask")
