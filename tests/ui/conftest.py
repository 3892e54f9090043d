"""Browser tests of the admin UI: Debian's headless Chromium driven by Playwright (never a
downloaded browser), against `mbpo serve` in embedded mode with its real local worker, on the quick
testbed's trained model and datasets.

Chromium missing: skip, or fail with MBPO_TEST_REQUIRE_SERVICES=1 (CI must not pass by skipping).
Screenshots of every page at both widths go to test-artifacts/ui/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import services
from tests.helpers.testbed import quick_testbed_path, testbed_cache_root

CHROMIUM = os.environ.get("MBPO_TEST_CHROMIUM", "/usr/bin/chromium")
# The flags this machine needs: no sandbox as root, no GPU, and no background network traffic
# (the machine has no internet; without these Chromium keeps failing to reach Google's hosts).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = services.REPO_ROOT / "test-artifacts" / "ui"
WIDTHS = (1280, 800)
SUBSET_SIZES = {"offline": 40, "online": 32, "pope_random": 16, "pope_adversarial": 16}


def _chromium_or_skip() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if path and os.access(path, os.X_OK):
        return path
    message = f"Chromium not found at {CHROMIUM} (make chromium installs Debian's)"
    if services.services_required():
        pytest.fail(message + " and MBPO_TEST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@dataclass
class Service:
    url: str
    home: Path
    roots: Path  # an allowed data root the tests write datasets into
    log: Path
    key: str
    model_id: str = ""
    datasets: dict[str, str] = field(default_factory=dict)  # split -> dataset id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str) -> Any:
        resp = httpx.get(self.url + path, headers=self.headers, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = httpx.post(self.url + path, json=body, headers=self.headers, timeout=60)
        assert resp.status_code < 300, resp.text
        return resp.json()


def _register_testbed(service: Service, testbed: Path) -> None:
    """The testbed's base model and small subsets of its splits (runs finish in a few minutes)."""
    from tests.helpers.runs import write_subset

    service.model_id = service.post(
        "/v1/models", {"name": "testbed base", "path": str(testbed / "base_model")}
    )["id"]
    for split, n in SUBSET_SIZES.items():
        path = write_subset(testbed, split, service.roots / split, n)
        service.datasets[split] = service.post(
            "/v1/datasets", {"name": f"testbed {split}", "path": str(path)}
        )["id"]
    for split, dataset_id in service.datasets.items():

        def validated(dataset_id: str = dataset_id) -> dict[str, Any] | None:
            body: dict[str, Any] = service.get(f"/v1/datasets/{dataset_id}")
            return None if body["status"] == "validating" else body

        body = services.wait_for(validated, timeout=180, interval=0.5, what=f"validation of {split}")
        assert body["status"] == "ready", body


@pytest.fixture(scope="package")
def chromium_path() -> str:
    return _chromium_or_skip()


@pytest.fixture(scope="package")
def service(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`mbpo serve` on a fresh MBPO_HOME; the testbed cache is an allowed data root."""
    base = tmp_path_factory.mktemp("ui")
    home = base / "home"
    env = services.service_env(
        MBPO_HOME=str(home),
        MBPO_DATA_ROOTS=os.pathsep.join(
            [str(testbed_cache_root()), str(base), os.environ.get("MBPO_UI_TESTBED", str(base))]
        ),
        MBPO_LOG_LEVEL="INFO",
    )
    log = base / "serve.log"
    try:
        with services.embedded_serve([], env, log) as (url, _):
            yield Service(
                url=url, home=home, roots=base, log=log, key=(home / "admin_key").read_text().strip()
            )
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "serve.log")


_testbed: list[Path] = []


def _testbed_root() -> Path:
    """The quick testbed; MBPO_UI_TESTBED may name another built testbed directory (any testbed
    with `base_model/` and `datasets/<split>/` serves these tests)."""
    if not _testbed:
        override = os.environ.get("MBPO_UI_TESTBED")
        _testbed.append(Path(override).resolve() if override else quick_testbed_path())
    return _testbed[0]


@pytest.fixture(scope="package")
def testbed_service(service: Service) -> Service:
    """The service with the testbed's base model and datasets registered (and validated)."""
    _register_testbed(service, _testbed_root())
    return service


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True)
        yield instance
        instance.close()


@dataclass
class Tab:
    """A logged-in page with every console error, page error and failed response recorded."""

    page: Any
    width: int
    problems: list[str] = field(default_factory=list)
    accept_confirms: bool = False  # answer "OK" to confirm() (revoke, cancel); any alert is a problem

    def take_problems(self) -> list[str]:
        out, self.problems = self.problems, []
        return out

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-{self.width}.png"), full_page=True)

    def assert_fits(self) -> None:
        """Usable at this width: nothing forces a horizontal scrollbar on the page."""
        overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than a {self.width}px window"


def _on_dialog(tab: Tab, dialog: Any) -> None:
    if dialog.type == "confirm" and tab.accept_confirms:
        dialog.accept()
        return
    tab.problems.append(f"unexpected {dialog.type} dialog: {dialog.message}")
    dialog.dismiss()


def make_tab(browser: Any, service: Service, width: int = 1280, login: bool = True) -> Tab:
    """A new browser context (its own cookies) and page; logged in unless `login` is False."""
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=service.url)
    page = context.new_page()
    tab = Tab(page, width)
    page.on(
        "console", lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: _on_dialog(tab, d))
    page.on(
        "response", lambda r: tab.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None
    )
    if login:
        page.goto("/admin/login")
        page.fill("#api_key", service.key)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/runs")
    return tab


@pytest.fixture
def open_tab(browser: Any, service: Service) -> Iterator[Callable[..., Tab]]:
    tabs: list[Tab] = []

    def make(width: int = 1280, login: bool = True) -> Tab:
        tabs.append(make_tab(browser, service, width, login))
        return tabs[-1]

    yield make
    for tab in tabs:
        tab.page.context.close()
