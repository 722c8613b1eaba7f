"""The Clerks page in real headless Chromium under the console's CSP: a store user adds a clerk (a
weak PIN is refused with the rule, nothing typed as a PIN comes back), renames them, resets the PIN,
deactivates and reactivates them; another store's clerks are not offered. Writes staff-*.png to
var/screenshots/ (staff-clerks.png to docs/img/ with `make screenshots`, used by docs/hq.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from broker.pins import verify_pin
from cloud.access.models import AuditEntry
from cloud.api import create_app
from cloud.staff.models import Clerk
from tests.access.conftest import PASSWORD, make_world
from tests.console.test_browser import CHROMIUM, IMG, Server, signed_in_page, sqlite_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def test_clerks_page_in_chromium(sqlite_engine: Engine) -> None:  # noqa: F811 - the fixture
    from playwright.sync_api import expect, sync_playwright

    world = make_world(sqlite_engine)
    IMG.mkdir(parents=True, exist_ok=True)
    with Server(create_app(world.settings, run_worker=False, engine=sqlite_engine)) as server, sync_playwright() as p:
        page, seen = signed_in_page(p, server.url, "store", PASSWORD)
        page.get_by_role("link", name="Clerks", exact=True).click()
        # The store user sees its one store only.
        expect(page.locator("#store option")).to_have_count(1)
        expect(page.locator("#store option")).to_have_attribute("value", "st0003")
        expect(page.locator("#clerks")).to_contain_text("No clerks in this store yet.")

        add = page.locator("#add")
        add.locator("input[name=name]").fill("Mei Chen")
        add.locator("input[name=staff_number]").fill("S-12")
        add.locator("input[name=pin]").fill("4321")
        page.click("#add-clerk")
        expect(page.locator("#problem")).to_contain_text("consecutive digits")
        expect(page.locator("#add input[name=pin]")).to_have_value("")
        assert "4321" not in page.content()
        page.screenshot(path=str(IMG / "staff-weak-pin.png"), full_page=True)

        add.locator("input[name=name]").fill("Mei Chen")
        add.locator("input[name=staff_number]").fill("S-12")
        add.locator("input[name=pin]").fill("5820")
        page.click("#add-clerk")
        row = page.locator("tr[data-clerk]")
        expect(row).to_have_count(1)
        expect(row.locator("input[name=name]")).to_have_value("Mei Chen")
        expect(row.locator('[data-field="state"]')).to_have_text("active")

        row.locator("input[name=name]").fill("Mei Chen-Li")
        row.locator("button.rename").click()
        expect(page.locator("tr[data-clerk] input[name=name]")).to_have_value("Mei Chen-Li")
        page.locator("tr[data-clerk] input[name=pin]").fill("9517")
        page.locator("tr[data-clerk] button.reset-pin").click()
        expect(page.locator("tr[data-clerk] button.toggle")).to_have_text("Deactivate")
        page.locator("tr[data-clerk] button.toggle").click()
        expect(page.locator('tr[data-clerk] [data-field="state"]')).to_have_text("inactive")
        page.screenshot(path=str(IMG / "staff-clerks.png"), full_page=True)
        page.locator("tr[data-clerk] button.toggle").click()
        expect(page.locator('tr[data-clerk] [data-field="state"]')).to_have_text("active")

        # Another store, asked for by hand, is answered like an unknown one.
        page.goto(f"{server.url}/console/staff?store=st0001")
        expect(page.locator("#problem")).to_contain_text("No store 'st0001'")
        # Nothing blocked by the CSP, no script error: only the two refusals' own status codes.
        assert seen.violations == [], seen.violations
        assert [e.split("status of ", 1)[-1][:3] for e in seen.errors] == ["422", "404"], seen.errors
        page.context.browser.close()

    with Session(sqlite_engine) as s:
        clerk = s.scalars(select(Clerk)).one()
        assert (clerk.name, clerk.staff_number, clerk.active) == ("Mei Chen-Li", "S-12", True)
        assert verify_pin("9517", clerk.pin_hash)
        actions = s.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "clerk").order_by(AuditEntry.id))
        assert list(actions) == ["clerk.create", "clerk.update", "clerk.reset_pin", "clerk.deactivate", "clerk.activate"]
        vias = set(s.scalars(select(AuditEntry.via).where(AuditEntry.object_type == "clerk")))
        assert vias == {"console"}
