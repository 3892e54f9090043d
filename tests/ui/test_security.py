"""The admin UI's security in a real browser: login, CSRF (403 without the token), the CSP, and
user strings rendered as text."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import datasets as ds
from tests.ui.conftest import WIDTHS, Service, Tab

pytestmark = pytest.mark.browser

XSS = "<script>alert(1)</script>"


def test_login_rejects_a_wrong_key_and_accepts_the_right_one(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(login=False)
    page = tab.page
    page.goto("/admin/runs")
    assert "/admin/login" in page.url  # every page needs the session
    page.fill("#api_key", "mbpo_nope_wrong")
    page.click("button[type=submit]")
    assert page.locator(".alert-error").inner_text() == "That API key is not valid."
    tab.take_problems()  # the 401 of the failed login is the point here
    page.fill("#api_key", service.key)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/runs")
    cookie = next(c for c in page.context.cookies() if c["name"] == "mbpo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert service.key not in cookie["value"]  # the key itself never sits in the cookie
    # Printed once on purpose by `mbpo serve` (the development key); never logged by a request.
    assert service.log.read_text(errors="replace").count(service.key) == 1


def test_state_changing_requests_without_the_csrf_token_are_refused(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab()
    request = tab.page.request  # shares the page's session cookie
    # A form of the UI: creating an API key.
    resp = request.post("/admin/keys", form={"user": "mallory", "name": "x"}, max_redirects=0)
    assert resp.status == 403 and resp.json()["error"]["code"] == "csrf_failed"
    # The REST API with the session cookie: launching a run, with and without the header.
    body = {"name": "csrf", "base_model_id": "mdl_none", "offline_dataset_id": "ds_none"}
    resp = request.post("/v1/runs", data=body)
    assert resp.status == 403
    token = tab.page.locator('meta[name="csrf-token"]').get_attribute("content")
    resp = request.post(
        "/v1/runs", data={**body, "config": {"no_such_field": 1}}, headers={"X-CSRF-Token": token or ""}
    )
    assert resp.status == 422  # past the CSRF check, stopped by validation
    resp = request.post("/admin/logout", form={}, max_redirects=0)
    assert resp.status == 403
    # The login form has its own token (double-submit cookie).
    resp = httpx.post(f"{service.url}/admin/login", data={"api_key": service.key}, follow_redirects=False)
    assert resp.status_code == 403
    # Keys created by nobody.
    keys = tab.page.goto("/admin/keys")
    assert keys is not None and "mallory" not in tab.page.content()


def test_pages_send_a_strict_content_security_policy(open_tab: Callable[..., Tab]) -> None:
    tab = open_tab()
    resp = tab.page.goto("/admin/datasets")
    assert resp is not None
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["x-content-type-options"] == "nosniff"
    # No inline script anywhere: every script is a file of ours.
    scripts = tab.page.eval_on_selector_all("script", "els => els.map(e => [e.src, e.textContent.trim()])")
    assert scripts and all(
        src.startswith(tab.page.url.split("/admin")[0] + "/admin/static/") and not text
        for src, text in scripts
    )


def test_dataset_upload_shows_the_report_with_line_numbers_and_names_as_text(
    open_tab: Callable[..., Tab], tmp_path: Path
) -> None:
    rows: list[dict[str, Any] | str] = [
        *ds.good_samples()[:4],
        "{not json",
        {**ds.good_samples()[0], "id": "s9", "image": "../../etc/passwd"},
    ]
    root = ds.make_dataset_dir(tmp_path / "bad", rows)
    (tmp_path / "images.zip").write_bytes(ds.zip_dir_images(root))
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        page.goto("/admin/datasets")
        page.fill("#up-name", XSS)
        page.set_input_files("#up-manifest", str(root / "manifest.jsonl"))
        page.set_input_files("#up-images", str(tmp_path / "images.zip"))
        page.click("#upload-form button[type=submit]")
        page.wait_for_url(re.compile(r".*/admin/datasets/ds_\w+$"))
        page.wait_for_selector(".report-table", timeout=60_000)  # reloads itself once validated
        assert page.locator("h1").inner_text() == XSS
        lines = page.locator(".report-table tbody tr td:first-child").all_inner_texts()
        assert lines == ["5", "6"]
        images = page.locator(".samples img")
        assert images.count() == 4
        page.wait_for_function(
            "() => [...document.querySelectorAll('.samples img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        tab.assert_fits()
        tab.screenshot("dataset-report")
        page.goto("/admin/datasets")
        assert page.locator("a", has_text=XSS).count() >= 1
        tab.assert_fits()
        tab.screenshot("datasets")
        assert tab.take_problems() == []


def test_api_keys_page_creates_and_revokes_keys(open_tab: Callable[..., Tab], service: Service) -> None:
    for width in WIDTHS:
        tab = open_tab(width)
        page = tab.page
        page.goto("/admin/keys")
        page.fill("input[name=user]", f"carol{width}")
        page.fill("input[name=name]", "laptop")
        page.click("form.form-inline button[type=submit]")
        new_key = page.locator("#new-key").input_value()
        assert new_key.startswith("mbpo_")
        assert (
            httpx.get(
                f"{service.url}/v1/datasets", headers={"Authorization": f"Bearer {new_key}"}
            ).status_code
            == 200
        )
        tab.assert_fits()
        tab.screenshot("api-keys")
        tab.accept_confirms = True
        page.locator("tr", has_text=f"carol{width}").locator("button", has_text="Revoke").click()
        page.wait_for_selector(f"tr:has-text('carol{width}') .badge-failed")
        assert tab.take_problems() == []
