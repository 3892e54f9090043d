"""The audit log in a real browser: an admin's key creation, revocation and login show up on
/admin/audit (reached from the navigation), newest first, without any key in clear."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.ui.conftest import WIDTHS, Service, Tab

pytestmark = pytest.mark.browser


def test_admin_actions_appear_in_the_audit_log(open_tab: Callable[..., Tab], service: Service) -> None:
    for width in WIDTHS:
        tab = open_tab(width)  # signs in with the development admin key: an admin.login entry
        page = tab.page
        user = f"erin{width}"
        page.goto("/admin/keys")
        page.fill("input[name=user]", user)
        page.fill("input[name=name]", "audited")
        page.click("form.form-inline button[type=submit]")
        new_key = page.locator("#new-key").input_value()
        tab.accept_confirms = True
        page.locator("tr", has_text=user).locator("button", has_text="Revoke").click()
        page.wait_for_selector(f"tr:has-text('{user}') .badge-failed")
        # One API process (mbpo serve): the revoked key is refused on the next request.
        resp = httpx.get(f"{service.url}/v1/datasets", headers={"Authorization": f"Bearer {new_key}"})
        assert resp.status_code == 401

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
        page.wait_for_url("**/admin/audit")
        rows = page.locator(".audit-table tbody tr")
        newest, before = rows.nth(0).inner_text(), rows.nth(1).inner_text()
        assert "key.revoke" in newest and user in newest and "admin" in newest
        assert "key.create" in before and user in before
        texts = rows.all_inner_texts()
        assert any("admin.login" in t for t in texts)
        assert new_key not in page.content() and service.key not in page.content()
        tab.assert_fits()
        tab.screenshot("audit")
        assert tab.take_problems() == []
