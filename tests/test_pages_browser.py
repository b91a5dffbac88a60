"""The CSM pages in a real headless Chromium (Playwright), over HTTP.

``site`` serves the pages app with uvicorn on a workspace built here, mounted at /ui behind the token
as in the service. To run the same tests against the real BentoML service, make ``site`` return the
``served`` fixture from conftest (its workspace is the simulated business's real scores): the tests
read their expectations from the pages, not from the data.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from churnml.config import Settings
from churnml.service.sessions import SESSION_COOKIE
from churnml.workspace.pages import create_pages_app
from tests.conftest import free_port
from tests.test_pages import TOKEN, workspace_tables, write_workspace

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


@dataclass
class PagesSite:
    """The pages app alone under uvicorn: the same face as conftest's ``Server`` (url, token, get)."""

    url: str
    token: str

    def get(self, route: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.get(self.url + route, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def pages_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PagesSite]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    home = tmp_path_factory.mktemp("pages-home")
    settings = Settings(home=home, api_token=TOKEN)
    write_workspace(settings.workspace_path, workspace_tables())
    app = Starlette(routes=[Mount("/ui", create_pages_app(settings))])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start the pages app")
        time.sleep(0.05)
    yield PagesSite(f"http://127.0.0.1:{port}", TOKEN)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def site(served):  # noqa: ANN001, ANN201 - conftest's Server: the real BentoML service with the pages
    """What the tests browse: the real service (`churnml serve`) with the simulated business's scores."""
    return served


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium) for the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, site: PagesSite) -> Iterator[Page]:
    """A signed-in tab (through the login form, as a CSM would) that fails the test on any script dialog."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.on("dialog", lambda d: pytest.fail(f"a script ran in the page: {d.message}"))
    tab.goto(f"{site.url}/ui/login")
    tab.fill("input[name=token]", site.token)
    tab.click("button[type=submit]")
    tab.wait_for_url(f"{site.url}/ui/")
    yield tab
    context.close()


def revenues(tab: Page) -> list[float]:
    cells = tab.locator("#risk-table td.revenue")
    return [float(v) for v in cells.evaluate_all("cells => cells.map(c => c.dataset.value)")]


def test_risk_list_loads_sorted_and_a_filter_narrows_it(page: Page, site: PagesSite) -> None:
    page.wait_for_selector("#risk-table")
    everything = revenues(page)
    assert len(everything) > 1 and everything == sorted(everything, reverse=True)
    total = int(re.search(r"of (\d+)", page.inner_text("nav.pages")).group(1))
    called = page.locator("tr.call-list").count()
    assert called == min(20, len(everything))  # default capacity
    page.screenshot(path=str(SCREENSHOTS / "risk-list.png"), full_page=False)

    page.select_option("select[name=tier]", "high")
    page.fill("input[name=capacity]", "3")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*tier=high.*"))
    tiers = page.locator("#risk-table .tier").all_inner_texts()
    assert tiers and set(tiers) == {"high"}
    narrowed = int(re.search(r"of (\d+)", page.inner_text("nav.pages")).group(1))
    assert narrowed < total
    assert page.locator("tr.call-list").count() == min(3, narrowed)
    assert revenues(page) == sorted(revenues(page), reverse=True)
    page.screenshot(path=str(SCREENSHOTS / "risk-list-high.png"))


def test_clicking_an_account_shows_its_reasons_and_charts(page: Page, site: PagesSite) -> None:
    first = page.locator("#risk-table tbody tr").first
    customer = first.get_attribute("data-customer")
    first.locator("a").click()
    page.wait_for_selector("#reasons")
    assert page.inner_text("h1").startswith(customer)
    reasons = page.locator("#reasons tr.reason")
    assert reasons.count() >= 1 and reasons.first.locator("td").nth(1).inner_text().strip()
    assert page.locator("#reasons svg").count() == 1 and page.locator("#history svg").count() == 1
    box = page.locator("#reasons svg").bounding_box()
    assert box and box["width"] > 300 and box["height"] > 80  # drawn at a readable size
    assert "What changed since the previous score" in page.content()
    page.screenshot(path=str(SCREENSHOTS / "account.png"), full_page=True)

    page.click("text=Retention overview")
    page.wait_for_selector("#cohorts svg")
    assert page.locator("svg.chart").count() >= 5
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)


def test_without_the_token_the_pages_are_blocked(browser: Browser, site: PagesSite) -> None:
    assert httpx.get(f"{site.url}/ui/", timeout=30).status_code == 401
    forged = httpx.get(f"{site.url}/ui/export.csv", timeout=30, cookies={SESSION_COOKIE: "guess.guess"})
    assert forged.status_code == 401
    assert site.get("/ui/export.csv").status_code == 200  # the bearer token works for scripts

    context = browser.new_context()
    tab = context.new_page()
    response = tab.goto(f"{site.url}/ui/overview")
    # a browser is sent to the login form (or refused outright); it never sees the data
    assert response.status == 401 or tab.url.startswith(f"{site.url}/ui/login")
    assert "Retention overview</h1>" not in tab.content()
    if tab.url.startswith(f"{site.url}/ui/login"):
        tab.fill("input[name=token]", "wrong")
        tab.click("button[type=submit]")
        assert "That token is not right" in tab.content()
        assert not [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
        tab.screenshot(path=str(SCREENSHOTS / "login-refused.png"))
    context.close()


def test_the_header_names_who_is_signed_in_and_signing_out_ends_the_session(
    page: Page, site: PagesSite
) -> None:
    assert "Signed in as application token" in page.inner_text("header")
    session = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert session and site.token not in session[0]["value"]  # a signed session id, never the token
    page.click("header button[type=submit]")  # Sign out (a form with its CSRF token)
    page.wait_for_url(re.compile(r".*/ui/login.*"))
    replayed = httpx.get(f"{site.url}/ui/", timeout=30, cookies={SESSION_COOKIE: session[0]["value"]})
    assert replayed.status_code == 401  # signed out for good, not only forgotten by this browser
    response = page.goto(f"{site.url}/ui/overview")
    assert response.status == 401 or page.url.startswith(f"{site.url}/ui/login")
