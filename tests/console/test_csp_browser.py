"""Every console page, the catalogue pages and /docs work in headless Chromium under the
Content-Security-Policy, and the browser reports no violation and no error.

The policy is first shown to bite (an injected inline script and inline handler are blocked and
reported), so "no violation" afterwards means something.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.api import create_app
from cloud.api.security import CONTENT_SECURITY_POLICY
from tests.access.conftest import PASSWORD, World
from tests.console.csp import watch
from tests.console.test_browser import ARGS, CHROMIUM, Server, pytestmark  # noqa: F401 - skip rule

# Console pages by path → a heading they show once rendered.
PAGES = {
    "fleet": "Fleet", "stores/st0001": "", "devices": "Devices", "users": "Users", "users/regional": "regional",
    "api-keys": "API keys", "audit": "Audit log", "orders": "Orders", "catalogue": "", "catalogue/imports": "",
}


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the browser's view of the policy does not depend on the database."""
    yield f"sqlite:///{tmp_path / 'cloud.db'}"


def test_pages_and_docs_work_under_the_policy_without_violations(world: World) -> None:
    from playwright.sync_api import expect, sync_playwright

    with Server(create_app(world.settings, run_worker=False, engine=world.engine)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        seen = watch(context)
        page = context.new_page()
        expect.set_options(timeout=20_000)

        # The policy bites: injected inline code does not run and is reported.
        first = page.goto(f"{server.url}/console/login")
        assert first is not None and first.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        page.evaluate("""() => {
            const s = document.createElement("script"); s.textContent = "window.__inline = 1"; document.body.append(s);
            document.body.insertAdjacentHTML("beforeend", '<img src="/console/static/favicon.svg" onload="window.__handler = 1">');
        }""")
        page.wait_for_function("() => document.querySelector('img[onload]').complete")
        page.wait_for_timeout(200)
        assert page.evaluate("[window.__inline, window.__handler]") == [None, None]
        assert any("script-src-elem" in v for v in seen.violations), seen.violations
        assert any("script-src-attr" in v for v in seen.violations), seen.violations
        seen.clear()

        # Sign in (a form post: form-action 'self'), then every page, following links and forms.
        page.goto(f"{server.url}/console/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
        # console.js runs: the live update replaces "now" with the time of the first poll.
        expect(page.locator("#updated")).not_to_have_text("now")
        for path, heading in PAGES.items():
            answer = page.goto(f"{server.url}/console/{path}")
            assert answer is not None and answer.status == 200, path
            expect(page.locator("main h1")).to_contain_text(heading)
        # Every page of the menu (each engine's): it renders, and its title is plain words (a
        # template that lost a block's end puts its markup in the title, and in the tab).
        menu = page.locator("header nav a").evaluate_all("links => links.map(a => [a.getAttribute('href'), a.textContent])")
        assert len({label for _, label in menu}) == len(menu), f"a menu entry shows twice: {menu}"
        for href, label in menu:
            answer = page.goto(f"{server.url}{href}")
            assert answer is not None and answer.status == 200, href
            assert re.fullmatch(r"[^<>]+ · omnishelf HQ", page.title()), f"{href} ({label}): title {page.title()!r}"
        page.goto(f"{server.url}/console/api-keys")
        page.fill("#add-key input[name=name]", "csp-check")
        page.click("#add-key button[type=submit]")
        expect(page.locator("#new-secret")).to_contain_text("osk_")
        page.goto(f"{server.url}/console/audit")
        page.fill("input[name=actor]", "admin")
        page.click("form.filters button")
        expect(page.locator("table.audit")).to_contain_text("api_key.create")

        # /docs: Swagger UI starts from its static init script and calls the API (the session
        # cookie is sent, so GET /me answers for the signed-in admin).
        page.goto(f"{server.url}/docs")
        operation = page.locator("#operations-access-me_me_get")
        expect(operation).to_be_visible()
        operation.locator(".opblock-summary").click()
        page.get_by_role("button", name="Try it out").click()
        page.get_by_role("button", name="Execute").click()
        expect(operation.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
        expect(operation.locator(".live-responses-table")).to_contain_text('"name": "admin"')

        page.goto(f"{server.url}/console/fleet")
        page.click("#sign-out")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        assert seen.violations == []
        assert seen.errors == []
        browser.close()
