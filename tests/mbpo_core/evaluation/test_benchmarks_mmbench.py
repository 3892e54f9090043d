"""MMBench: the official TSV (rotations by index modulo 10^6, images base64 or by another row's
index), LMMS-Eval's prompt, VLMEvalKit's answer matching, CircularEval against hand-computed values,
and bad rows named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mbpo_core.evaluation.benchmarks import BENCHMARKS, mmbench
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError
from tests.helpers.tsv_benchmarks import MMBENCH_COLUMNS, mmbench_rows, png_base64, write_tsv


def write_mmbench(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    return write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows or mmbench_rows(), MMBENCH_COLUMNS)


def test_registered() -> None:
    assert BENCHMARKS["mmbench"] is mmbench


def test_load_builds_lmms_eval_prompts_and_decodes_each_image_once(tmp_path: Path) -> None:
    items = mmbench.load(write_mmbench(tmp_path))
    assert [i.id for i in items] == ["0", "1", "1000000", "1000001", "2000000", "2000001", "2"]
    assert items[0].prompt == (
        "Look closely. What is shown? There are several options:\nA. dog\nB. cat\nC. bird\nD. fish"
        "\nAnswer with the option's letter from the given choices directly."
    )
    # no hint: the question first; the empty option D is no option; a new line in a quoted field
    assert items[1].prompt == (
        "Which colour\nis it? There are several options:\nA. red\nB. blue\nC. green"
        "\nAnswer with the option's letter from the given choices directly."
    )
    assert dict(items[2].meta) == {
        "index": 1000000,
        "category": "image_scene",
        "l2_category": "coarse_perception",
        "truth": "D",
        "options": {"A": "cat", "B": "bird", "C": "fish", "D": "dog"},
    }
    # rotations name their original's image by index: one decoded file per distinct image
    cache = tmp_path / "MMBench_DEV_EN_images"
    assert items[0].image == items[2].image == items[4].image and items[0].image.parent == cache
    assert len(list(cache.iterdir())) == 3
    assert Image.open(items[1].image).getpixel((0, 0)) == (40, 40, 200)
    # a second load decodes into the same files and writes nothing new
    stamps = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = mmbench.load(tmp_path / "MMBench_DEV_EN.tsv")
    assert [i.image for i in again] == [i.image for i in items]
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps


def test_images_go_to_the_folder_given(tmp_path: Path) -> None:
    items = mmbench.load(write_mmbench(tmp_path), tmp_path / "decoded")
    assert all(i.image.parent == tmp_path / "decoded" for i in items)
    assert not (tmp_path / "MMBench_DEV_EN_images").exists()


def test_answer_matching_follows_vlmevalkit_can_infer() -> None:
    options = {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"}
    assert mmbench.choice("A", options) == "A"
    assert mmbench.choice("The answer is (B).", options) == "B"
    assert mmbench.choice("C. cat", options) == "C"
    assert mmbench.choice("**D**", options) == "D"
    assert mmbench.choice("a cute teddy bear", options) == "A"  # no letter: the option's text
    assert mmbench.choice("A or B", options) is None  # two letters, and no option text
    # VLMEvalKit reads a capital article as option A (its quantifier check only logs, verbose)
    assert mmbench.choice("A rabbit or a cat", options) == "A"
    assert mmbench.choice("Sorry, I can't help with images of people yet.", options) == "Z"
    assert mmbench.choice("Z", options) == "Z"
    assert mmbench.choice("b", options) is None  # letters are upper case only
    assert mmbench.choice("E", options) is None  # not an option here


def test_circular_eval_by_hand(tmp_path: Path) -> None:
    items = mmbench.load(write_mmbench(tmp_path))
    answers = {
        "0": "A",  # right (dog)
        "1": "(B)",  # right (blue)
        "1000000": "The answer is D.",  # right (dog is D)
        "1000001": "It is blue",  # right by the option text (blue is A)
        "2000000": "B",  # wrong (dog is C): question 0 fails CircularEval
        "2000001": "C",  # right (blue is C): question 1 passes
        "2": "I think C or D",  # two letters, no option text: unmatched, wrong
    }
    tables = mmbench.score(items, [answers[i.id] for i in items])
    assert list(tables) == ["image_scene", "ocr", "all"]
    assert tables["image_scene"] == {"n": 2, "circular_accuracy": 0.5, "vanilla_accuracy": 1.0}
    assert tables["ocr"] == {"n": 1, "circular_accuracy": 0.0, "vanilla_accuracy": 0.0}
    assert tables["all"]["n"] == 3
    assert tables["all"]["circular_accuracy"] == pytest.approx(1 / 3)
    assert tables["all"]["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert tables["all"]["unmatched"] == pytest.approx(1 / 7)


def test_one_wrong_rotation_fails_the_question(tmp_path: Path) -> None:
    items = [i for i in mmbench.load(write_mmbench(tmp_path)) if int(i.meta["index"]) % 1_000_000 == 0]
    right = [str(i.meta["truth"]) for i in items]
    assert mmbench.score(items, right)["all"]["circular_accuracy"] == 1.0
    for k in range(len(items)):
        answers = [*right]
        answers[k] = "A" if right[k] != "A" else "B"
        tables = mmbench.score(items, answers)
        assert tables["all"]["circular_accuracy"] == 0.0
        assert tables["all"]["vanilla_accuracy"] == (0.0 if k == 0 else 1.0)


def test_without_rotations_circular_equals_vanilla(tmp_path: Path) -> None:
    rows = [r for r in mmbench_rows() if r["index"] < 1_000_000]
    items = mmbench.load(write_mmbench(tmp_path, rows))
    tables = mmbench.score(items, ["A", "C", "C"])
    assert tables["all"]["circular_accuracy"] == tables["all"]["vanilla_accuracy"] == pytest.approx(2 / 3)


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    # lines: 1 header, 2 q0, 3-4 q1 (a quoted new line), 5 rotation of q0, ...
    rows = mmbench_rows()
    rows[2]["image"] = png_base64((1, 2, 3))[:40] + "!" * 40  # not base64
    path = write_mmbench(tmp_path, rows)
    with pytest.raises(BenchmarkDataError, match="base64") as caught:
        mmbench.load(path)
    assert caught.value.path == path and caught.value.line == 5 and f"{path}, line 5" in str(caught.value)

    rows = mmbench_rows()
    rows[0]["image"] = "bm90IGFuIGltYWdl" * 8  # base64 of "not an image"
    with pytest.raises(BenchmarkDataError, match="image") as caught:
        mmbench.load(write_mmbench(tmp_path, rows))
    assert caught.value.line == 2

    rows = mmbench_rows()
    rows[1]["answer"] = "D"  # question 1 has no option D
    with pytest.raises(
        BenchmarkDataError, match=r"answer 'D' is not one of the options \(A, B, C\)"
    ) as caught:
        mmbench.load(write_mmbench(tmp_path, rows))
    assert caught.value.line == 3

    rows = [r for r in mmbench_rows() if r["index"] != 0]  # rotations of a missing question 0
    for r in rows:
        if r["image"] == "0":
            r["image"] = png_base64((9, 9, 9))
    with pytest.raises(BenchmarkDataError, match="no original row 0") as caught:
        mmbench.load(write_mmbench(tmp_path, rows))

    columns = [c for c in MMBENCH_COLUMNS if c != "answer"]
    path = write_tsv(tmp_path / "no_answer.tsv", mmbench_rows(), columns)
    with pytest.raises(BenchmarkDataError, match=r"missing column.*answer") as caught:
        mmbench.load(path)
    assert caught.value.path == path and caught.value.line == 1

    rows = mmbench_rows()
    rows[3]["index"] = 0
    with pytest.raises(BenchmarkDataError, match="index 0 already on line 2") as caught:
        mmbench.load(write_mmbench(tmp_path, rows))

    with pytest.raises(BenchmarkDataError, match="TSV file"):
        mmbench.load(tmp_path / "missing.tsv")
