"""The admin UI end to end in a real browser against `mbpo serve` and its real worker: launch a
quick testbed run from the form, watch its progress bar advance live to `succeeded` without a
reload, then the run list, the mined-negatives gallery with its images, the scorecard and a
spot-check. Every page at 1280 and 800 px, screenshots in test-artifacts/ui/, no console errors."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ui.conftest import WIDTHS, Service, Tab, make_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_NAME = "<script>alert(1)</script>"
# The launch form's fields (dotted config paths) for a run that finishes in minutes on two cores.
# A strong attack budget, so that mining finds pairs for the gallery even on a few samples.
QUICK_FORM: dict[str, str | bool] = {
    "device": "cpu",
    "attack.eps": "0.1",
    "attack.step_size": "0.03",
    "attack.steps": "4",
    "mining.limit": "16",
    "mining.max_new_tokens": "4",
    "train.max_steps": "3",
    "train.prompts_per_step": "2",
    "train.num_generations": "4",
    "train.max_completion_length": "4",
    "train.save_steps": "1",
    "train.learning_rate": "0.0001",
    "eval.limit": "8",
    "eval.batch_size": "16",
    "eval.max_new_tokens": "4",
    "eval.attack_eval": False,
}
RUN_TIMEOUT_S = 900


def _fill_config(page: Any, values: dict[str, str | bool]) -> None:
    for path, value in values.items():
        field = page.locator(f'.cfg[data-path="{path}"]')
        if isinstance(value, bool):
            field.set_checked(value)
        elif field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def _no_problems(tab: Tab, allowed: tuple[str, ...] = ()) -> None:
    problems = [p for p in tab.take_problems() if not any(a in p for a in allowed)]
    assert problems == [], problems


@pytest.fixture(scope="module")
def finished_run(browser: Any, testbed_service: Service) -> Iterator[dict[str, Any]]:
    """Launch through the form and watch the run page until the run succeeds."""
    service = testbed_service
    tab = make_tab(browser, service, 1280)
    page = tab.page
    page.goto("/admin/runs/new")
    page.fill("#f-name", RUN_NAME)
    page.select_option("#f-model", service.model_id)
    page.select_option("#f-offline", service.datasets["offline"])
    page.select_option("#f-online", service.datasets["online"])
    for split in ("pope_random", "pope_adversarial"):
        page.check(f'input[name=eval_dataset_ids][value="{service.datasets[split]}"]')
    _fill_config(page, QUICK_FORM)
    tab.screenshot("launch-filled")
    page.click("#launch-submit")
    page.wait_for_url(re.compile(r".*/admin/runs/run_\w+$"))
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads

    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        state = page.evaluate(
            "() => [Number(document.getElementById('run-progress').dataset.progress || 0),"
            " document.getElementById('run-status').textContent]"
        )
        if not seen or tuple(state) != seen[-1]:
            seen.append((state[0], state[1]))
        if state[1] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"run not finished after {RUN_TIMEOUT_S}s: {seen[-5:]}"
        page.wait_for_timeout(250)
    assert seen[-1][1] == "succeeded", (seen, service.log.read_text(errors="replace")[-4000:])
    assert page.evaluate("window.__sameDocument") is True, "the run page reloaded"
    yield {"id": run_id, "progress": seen, "tab": tab}
    page.context.close()


def test_progress_bar_advances_live_to_succeeded(finished_run: dict[str, Any]) -> None:
    progress = [p for p, _ in finished_run["progress"]]
    statuses = [s for _, s in finished_run["progress"]]
    assert len(set(progress)) >= 4, finished_run["progress"]  # moved several times, not in one jump
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert {"training", "succeeded"} <= set(statuses)
    tab: Tab = finished_run["tab"]
    page = tab.page
    assert page.locator("#run-name").inner_text() == RUN_NAME  # a name is text, never markup
    assert page.locator("#run-timeline li.done").count() == 6
    page.wait_for_selector("#event-log li:has-text('run_succeeded')")
    page.wait_for_selector("#run-charts svg path.series")
    assert page.locator("#ckpt-body a", has_text="Download").count() >= 1
    href = page.locator("#ckpt-body a", has_text="Download").last.get_attribute("href")
    download = page.request.get(href or "")
    assert download.status == 200 and download.headers["content-type"] == "application/x-tar"
    tab.screenshot("run-detail")
    _no_problems(tab)


def test_run_pages_at_both_widths(finished_run: dict[str, Any], open_tab: Callable[..., Tab]) -> None:
    run_id = finished_run["id"]
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        # Runs list: the run with its full bar, found by the status filter.
        page.goto("/admin/runs?status=succeeded")
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        row.wait_for()
        assert row.locator(".run-name").inner_text() == RUN_NAME
        assert row.locator(".badge").inner_text() == "succeeded"
        assert row.locator(".progress").get_attribute("data-progress") == "1.0000"
        tab.assert_fits()
        tab.screenshot("runs")
        # Detail.
        page.goto(f"/admin/runs/{run_id}")
        page.wait_for_selector("#run-charts svg path.series")
        page.wait_for_selector("#event-log li:has-text('run_succeeded')")
        tab.assert_fits()
        tab.screenshot("run-detail")
        # Scorecard: base vs aligned per split, table and chart.
        page.goto(f"/admin/runs/{run_id}/scorecard")
        page.wait_for_selector("#score-table")
        splits = page.locator("#score-table td.mono").all_inner_texts()
        assert any("pope_random" in s for s in splits) and any("pope_adversarial" in s for s in splits)
        assert page.locator("#score-chart svg rect").count() >= 4
        # Every change shows its interval, and only a significant one is coloured.
        scores = page.request.get(f"/v1/runs/{run_id}").json()["scores"]
        shown = 0
        for split, card in scores["significance"].items():
            for metric, interval in card["intervals"].items():
                row = page.locator(f'#score-table tr[data-split="{split}"][data-metric="{metric}"]')
                if row.count() == 0:
                    continue  # a metric the table does not list (false_yes_rate)
                shown += 1
                cell = row.locator("td.num").last
                text, classes = cell.inner_text(), cell.get_attribute("class") or ""
                assert "[" in text and "]" in text, text
                coloured = "delta-up" in classes or "delta-down" in classes
                if interval["significant"]:
                    assert "no significant change" not in text
                else:
                    assert not coloured and "no significant change" in text, (split, metric, text, classes)
            split_cell = page.locator(f'#score-table tr[data-split="{split}"] td.mono')
            assert "McNemar p = " in split_cell.inner_text()
        assert shown >= 8
        tab.assert_fits()
        tab.screenshot("scorecard")
        _no_problems(tab)


def test_gallery_shows_clean_and_perturbed_images(
    finished_run: dict[str, Any], open_tab: Callable[..., Tab]
) -> None:
    """Clean and perturbed images load, the amplified difference is drawn, the summary compares
    PGD with random noise. (The quick testbed's model answers well enough for PGD to flip some.)"""
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        page.goto(f"/admin/runs/{finished_run['id']}/negatives")
        page.wait_for_selector(".pair", timeout=60_000)
        # Images load lazily: bring every pair into view, then every image must have decoded.
        for pair in page.locator(".pair").all():
            pair.scroll_into_view_if_needed()
            pair.locator("img").first.wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.pair img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_function("() => document.querySelector('.pair canvas').width > 0")
        assert page.locator("#mining-summary .stat").count() >= 4
        assert page.locator(".pair .answer.rejected").count() == page.locator(".pair").count()
        page.locator("#amplify").fill("30")
        assert page.locator(".pair figcaption", has_text="×30").count() >= 1
        tab.assert_fits()
        tab.screenshot("negatives")
        _no_problems(tab)


def test_launch_form_shows_the_apis_errors_inline(
    testbed_service: Service, open_tab: Callable[..., Tab]
) -> None:
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        page.goto("/admin/runs/new")
        page.fill("#f-name", "bad config")
        page.select_option("#f-offline", testbed_service.datasets["offline"])
        _fill_config(page, {"train.num_generations": "1"})
        page.click("#launch-submit")
        error = page.locator('.field[data-field="config.train.num_generations"] .field-error')
        error.wait_for()
        assert "greater than or equal to 2" in error.inner_text()
        tab.assert_fits()
        tab.screenshot("launch-error")
        _no_problems(tab, allowed=("422",))


def test_spot_check_compares_base_and_aligned(
    finished_run: dict[str, Any], testbed_service: Service, open_tab: Callable[..., Tab]
) -> None:
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        page.goto("/admin/spot-check")
        page.wait_for_selector("#spot-models input[name=models]")
        base_box = page.locator(f'#spot-models input[value="model:{testbed_service.model_id}"]')
        run_box = page.locator(f'#spot-models input[value="run:{finished_run["id"]}"]')
        for box in page.locator("#spot-models input[name=models]").all():
            box.set_checked(False)
        base_box.check()
        run_box.check()
        # Pick an image from a dataset: the thumbnail strip fills the question too.
        dataset = testbed_service.datasets["pope_adversarial"]
        page.wait_for_selector(f'#spot-dataset option[value="{dataset}"]', state="attached")
        page.select_option("#spot-dataset", dataset)
        page.locator("#spot-thumbs button").first.click()
        page.wait_for_function("() => !document.getElementById('spot-preview').hidden")
        assert page.locator("#spot-question").input_value()
        page.click("#spot-submit")
        page.wait_for_selector("#spot-answers .answer-card", timeout=300_000)
        cards = page.locator("#spot-answers .answer-card")
        assert cards.count() == 2
        # textContent: innerText follows the CSS text-transform of the card's labels once laid out.
        card_text = cards.first.text_content() or ""
        assert "IIG" in card_text and "null-image answer" in card_text.lower()
        page.wait_for_selector("#spot-history .history-item img")
        tab.assert_fits()
        tab.screenshot("spot-check")
        _no_problems(tab)
