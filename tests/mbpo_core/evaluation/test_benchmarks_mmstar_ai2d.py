"""MMStar and AI2D: their TSV layouts, LMMS-Eval's prompts, MMStar's exact_match with LMMS-Eval's
per-axis aggregation, AI2D's exact_match (case and punctuation ignored), hand-computed values, and
bad rows named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import BENCHMARKS, ai2d, mmstar
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError
from tests.helpers.tsv_benchmarks import png_base64, write_tsv

IMAGE = png_base64((120, 120, 120))


def star(index: int, answer: str, category: str, axis: str, options: str = "A: x, B: y, C: z, D: w") -> dict:
    return {
        "index": index,
        "question": f"Question {index}?\nOptions: {options}",
        "answer": answer,
        "category": category,
        "l2_category": axis,
        "image": IMAGE,
    }


def star_rows() -> list[dict]:
    return [
        star(0, "A", "coarse perception", "image scene and topic"),
        star(1, "B", "coarse perception", "image scene and topic"),
        star(2, "C", "coarse perception", "image emotion"),
        star(3, "D", "math", "geometry"),
    ]


def test_registered() -> None:
    assert BENCHMARKS["mmstar"] is mmstar and BENCHMARKS["ai2d"] is ai2d


def test_mmstar_prompt_and_options_from_the_question(tmp_path: Path) -> None:
    items = mmstar.load(write_tsv(tmp_path / "MMStar.tsv", star_rows()))
    assert items[0].prompt == (
        "Question 0?\nOptions: A: x, B: y, C: z, D: w"
        "\nAnswer with the option's letter from the given choices directly"
    )
    assert dict(items[3].meta) == {"index": 3, "category": "math", "l2_category": "geometry", "truth": "D"}
    assert mmstar.question_options("Which?\nOptions: A: 3:4, B: 16:9") == ["A", "B"]
    assert items[0].image == items[1].image  # the same image decodes to one file


def test_mmstar_exact_match() -> None:
    assert mmstar.exact_match("B", "B") and mmstar.exact_match(" b) dog", "B")
    assert mmstar.exact_match("(B)", "B") and mmstar.exact_match("Option B", "B")
    assert mmstar.exact_match("The answer is B.", "B")
    assert not mmstar.exact_match("", "B") and not mmstar.exact_match("(", "B")
    assert not mmstar.exact_match("I choose B", "B")  # only the reference's four forms


def test_mmstar_metrics_by_hand(tmp_path: Path) -> None:
    items = mmstar.load(write_tsv(tmp_path / "MMStar.tsv", star_rows()))
    # right, wrong ("the answer is " then c), right ("option " then c), right
    tables = mmstar.score(items, ["A", "The answer is C", "Option C", "the answer is D."])
    assert list(tables) == ["coarse perception", "math", "all"]
    # coarse perception: axes scene [1, 0] -> 0.5 and emotion [1] -> 1, mean 0.75; 2 of 3 questions
    assert tables["coarse perception"]["n"] == 3
    assert tables["coarse perception"]["accuracy"] == pytest.approx(0.75)
    assert tables["coarse perception"]["question_accuracy"] == pytest.approx(2 / 3)
    assert tables["math"] == {"n": 1, "accuracy": 1.0, "question_accuracy": 1.0}
    # all: mean of the axes (0.5, 1, 1); 3 of 4 questions
    assert tables["all"]["accuracy"] == pytest.approx(2.5 / 3)
    assert tables["all"]["question_accuracy"] == pytest.approx(3 / 4)


def test_mmstar_bad_rows_name_the_line(tmp_path: Path) -> None:
    # every question spans two lines (a quoted new line before "Options:"): rows start on 2, 4, 6, 8
    rows = star_rows()
    rows[1]["answer"] = "E"
    path = write_tsv(tmp_path / "MMStar.tsv", rows)
    with pytest.raises(
        BenchmarkDataError, match=r"answer 'E' is not one of the options \(A, B, C, D\)"
    ) as caught:
        mmstar.load(path)
    assert caught.value.path == path and caught.value.line == 4
    rows = star_rows()
    rows[2]["question"] = "Question without options?"
    with pytest.raises(BenchmarkDataError, match="no options") as caught:
        mmstar.load(write_tsv(tmp_path / "MMStar.tsv", rows))
    assert caught.value.line == 6
    rows = [{k: v for k, v in r.items() if k != "category"} for r in star_rows()]
    with pytest.raises(BenchmarkDataError, match=r"missing column.*category") as caught:
        mmstar.load(write_tsv(tmp_path / "MMStar.tsv", rows))
    assert caught.value.line == 1
    rows = star_rows()
    rows[3]["image"] = "Zm9v" * 20  # base64 of "foo...": not an image
    with pytest.raises(BenchmarkDataError, match="not a base64-encoded image") as caught:
        mmstar.load(write_tsv(tmp_path / "MMStar.tsv", rows))
    assert caught.value.line == 8


def diagram(index: int, answer: str, category: str | None, d: str | None = "root") -> dict:
    row = {"index": index, "question": f"What is part {index}?", "A": "leaf", "B": "stem", "C": "flower"}
    row |= {"D": d, "answer": answer, "image": IMAGE}
    return row | ({"category": category} if category else {})


def test_ai2d_prompt_metrics_and_categories(tmp_path: Path) -> None:
    rows = [diagram(0, "B", "parts"), diagram(1, "C", "parts", d=None), diagram(2, "A", "cycles")]
    items = ai2d.load(write_tsv(tmp_path / "AI2D_TEST.tsv", rows))
    assert items[1].prompt == (
        "What is part 1?\nA. leaf\nB. stem\nC. flower"
        "\nAnswer with the option's letter from the given choices directly."
    )
    assert dict(items[0].meta) == {"index": 0, "truth": "B", "category": "parts"}
    # "B" right; "(C)." right (punctuation and case ignored); "A. leaf" wrong (more than the letter)
    tables = ai2d.score(items, ["B", "(c).", "A. leaf"])
    assert tables == {
        "parts": {"n": 2, "accuracy": 1.0},
        "cycles": {"n": 1, "accuracy": 0.0},
        "all": {"n": 3, "accuracy": pytest.approx(2 / 3)},
    }
    plain = [diagram(0, "B", None), diagram(1, "C", None)]
    items = ai2d.load(write_tsv(tmp_path / "plain.tsv", plain))
    assert ai2d.score(items, ["b", "D"]) == {"all": {"n": 2, "accuracy": 0.5}}


def test_ai2d_bad_rows_name_the_line(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "AI2D_TEST.tsv", [diagram(0, "B", None), diagram(1, "D", None, d=None)])
    with pytest.raises(BenchmarkDataError, match="answer 'D'") as caught:
        ai2d.load(path)
    assert caught.value.path == path and caught.value.line == 3
    rows = [diagram(0, "B", None), {**diagram(1, "A", None), "index": "x1"}]
    with pytest.raises(BenchmarkDataError, match="index 'x1' is not an integer") as caught:
        ai2d.load(write_tsv(tmp_path / "AI2D_TEST.tsv", rows))
    assert caught.value.line == 3
    path = tmp_path / "short.tsv"
    path.write_text("index\tquestion\tA\tB\tanswer\timage\n0\tq\ta\tb\tA\n")
    with pytest.raises(BenchmarkDataError, match="5 fields, the header has 6") as caught:
        ai2d.load(path)
    assert caught.value.line == 2
