"""The console in real headless Chromium (Debian's, driven by Playwright), against a real broker,
a real in-process ingest worker and a real `omnishelf edge run` box process.

Writes one screenshot per console page to var/screenshots/ (docs/img/ with `make screenshots`, used by docs/hq.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine

from broker.mosquitto import free_port
from cloud.access import service
from cloud.api import create_app
from cloud.db import make_engine, migrate
from tests.access.conftest import PASSWORD, make_world
from tests.cloud.conftest import cloud_settings
from tests.conftest import Broker
from tests.console.csp import Watch, watch
from tests.system.harness import System

CHROMIUM = Path("/usr/bin/chromium")
IMG = Path(os.environ.get("OMNISHELF_SCREENSHOTS", Path(__file__).resolve().parents[2] / "var" / "screenshots"))
"""Where the browser tests put their screenshots: an ignored folder, so `make test` leaves the
tracked ones alone; `make screenshots` points it at docs/img/ to update them."""
# No background traffic: Chromium must not try to reach the internet (see STACK-NOTES).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def signed_in_page(p: Any, url: str, username: str, password: str, *, height: int = 800) -> tuple[Any, Watch]:
    """A Chromium page (1280 wide) of a new browser, signed in to the console at `url`, and the
    watch on its context (CSP violations, console errors)."""
    from playwright.sync_api import expect

    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    context = browser.new_context(viewport={"width": 1280, "height": height})
    seen = watch(context)
    page = context.new_page()
    expect.set_options(timeout=20_000)
    page.goto(f"{url}/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    return page, seen


class Server:
    """uvicorn serving the app on a free port, in a thread of this process."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,  # type: ignore[arg-type]
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import time

        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def test_console_in_chromium(broker: Broker, sqlite_engine: Engine, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    world = make_world(sqlite_engine)
    settings = asyncio.run(cloud_settings(broker, sqlite_engine, KEEPALIVE_S=5))
    system = System(tmp_path, broker, sqlite_engine.url.render_as_string(hide_password=False))
    IMG.mkdir(parents=True, exist_ok=True)
    try:
        with Server(create_app(settings, run_worker=True, engine=sqlite_engine)) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            # The live page runs under the Content-Security-Policy: it must never trip it.
            seen = watch(context)
            page = context.new_page()
            expect.set_options(timeout=20_000)

            # Sign in.
            page.goto(f"{server.url}/console/")
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            page.screenshot(path=str(IMG / "console-login.png"))
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.get_by_role("heading", name="Fleet")).to_be_visible()

            # A real box comes online and the page shows it without a reload.
            box = system.box("st0001-k1")
            state = page.locator('tr[data-node="st0001-k1"] [data-field="state"]')
            expect(state).to_have_text("online")
            expect(page.locator("#dot-st0001")).to_have_class("store-dot online")
            expect(page.locator('tr[data-node="st0001-k1"] [data-field="software_version"]')).not_to_have_text("\N{EN DASH}")
            page.screenshot(path=str(IMG / "console-fleet.png"), full_page=True)

            # Stopping the box (SIGTERM: clean death) turns it offline, still without a reload.
            page.evaluate("window.__sameDocument = true")
            assert box.stop() == 0, box.tail()
            expect(state).to_have_text("offline")
            expect(page.locator("#dot-st0001")).to_have_class("store-dot offline")
            assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"

            # Filters and search.
            page.select_option("select[name=region]", "south")
            page.click("form.filters button")
            expect(page.locator("tr[data-node]")).to_have_count(1)
            expect(page.locator('tr[data-node="st0003-k1"]')).to_be_visible()

            # API keys: created in the console, shown once.
            page.goto(f"{server.url}/console/api-keys")
            page.fill("#add-key input[name=name]", "tmall-adapter")
            page.select_option("#add-key select[name=role]", "regional")
            page.select_option("#add-key select[name=regions]", ["east"])
            page.click("#add-key button[type=submit]")
            expect(page.locator("#new-secret")).to_contain_text("osk_")
            page.screenshot(path=str(IMG / "console-api-keys.png"), full_page=True)

            # Someone guessed the regional manager's password from one address: locked from there.
            for _ in range(5):
                assert service.sign_in(sqlite_engine, "regional", "a wrong guess", "203.0.113.5", service.Policy()) is None
            for name in ("store", "devices", "users", "user", "audit", "orders"):
                path = {"store": "stores/st0001", "user": "users/regional"}.get(name, name)
                page.goto(f"{server.url}/console/{path}")
                expect(page.locator("main h1")).to_be_visible()
                page.screenshot(path=str(IMG / f"console-{name}.png"), full_page=True)
            page.goto(f"{server.url}/console/users/regional")
            expect(page.locator("#unlock-user")).to_contain_text("203.0.113.5")
            page.click("#unlock-user button")
            expect(page.locator(".saved")).to_contain_text("Unlocked: regional can sign in again")
            expect(page.locator("#unlock-user")).to_contain_text("Not locked.")

            # A form post without the CSRF token, sent by the browser with the session cookie, is refused.
            status = page.evaluate(
                """async () => (await fetch('/console/users', {method: 'POST',
                     body: new URLSearchParams({username: 'mallory', password: 'x'.repeat(12), role: 'admin'})})).status"""
            )
            assert status == 403
            page.goto(f"{server.url}/console/users")
            expect(page.locator('tr[data-user="mallory"]')).to_have_count(0)

            # Tablet portrait: one column, nothing cut off.
            tablet = browser.new_context(viewport={"width": 768, "height": 1024},
                                         storage_state=page.context.storage_state()).new_page()
            tablet.goto(f"{server.url}/console/fleet")
            expect(tablet.get_by_role("heading", name="Fleet")).to_be_visible()
            width = tablet.evaluate("document.documentElement.scrollWidth")
            assert width <= 768, f"the fleet page is {width} px wide on a 768 px tablet"
            tablet.screenshot(path=str(IMG / "console-fleet-tablet.png"), full_page=True)

            # Sign out.
            page.click("#sign-out")
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            page.goto(f"{server.url}/console/fleet")
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()

            # A regional manager cannot open another region's store.
            regional = browser.new_context().new_page()
            regional.goto(f"{server.url}/console/login")
            regional.fill("input[name=username]", "regional")
            regional.fill("input[name=password]", PASSWORD)
            regional.click("button[type=submit]")
            expect(regional.get_by_role("heading", name="Fleet")).to_be_visible()
            answer = regional.goto(f"{server.url}/console/stores/st0003")
            assert answer is not None and answer.status == 404
            expect(regional.locator(".error")).to_contain_text("No store 'st0003'")
            expect(regional.locator("main")).not_to_contain_text("Shenzhen")
            assert seen.violations == []
            browser.close()
    finally:
        system.close()
    assert world.keys  # the world's keys exist for API clients; unused here
