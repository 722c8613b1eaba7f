"""The signage console in real headless Chromium: publish from the page, the calendar (default
then the campaign at 18:00, a conflict marked), the region view, the report with its SVG chart and
the CSV link; no Content-Security-Policy violation, no console error."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cloud.access.scope import Scope
from cloud.access.service import write_session
from cloud.api import create_app
from cloud.models import Node
from cloud.settings import Settings
from cloud.signage import service
from cloud.signage.media import MediaStore
from cloud.signage.models import Play
from tests.access.conftest import PASSWORD, make_world
from tests.console.test_browser import CHROMIUM, IMG, Server, signed_in_page, sqlite_engine  # noqa: F401 - fixture
from tests.signage.conftest import png
from tests.signage.test_end_to_end import HQ

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def test_signage_console_in_chromium(sqlite_engine, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    from datetime import UTC, datetime

    from playwright.sync_api import expect, sync_playwright

    world = make_world(sqlite_engine)
    cat = tmp_path / "cat"
    with write_session(sqlite_engine) as s, s.begin():
        red = service.upload_media(s, HQ, MediaStore(cat / "signage"), "red.png", png("red")).sha256
        blue = service.upload_media(s, HQ, MediaStore(cat / "signage"), "blue.png", png("blue")).sha256
        service.create_playlist(s, HQ, "house", [{"media": red, "duration_s": 20}], is_default=True)
        service.create_playlist(s, HQ, "promo", [{"media": blue, "duration_s": 15}])
        service.save_campaign(s, HQ, service.CampaignIn(id="evening", name="Evening", layer="normal", playlist="promo",
                                                        regions=("east",), priority=2,
                                                        dayparts=({"weekdays": [5], "start": "18:00", "end": "20:00"},)))
        service.save_campaign(s, HQ, service.CampaignIn(id="weekend", name="Weekend", layer="normal", playlist="promo",
                                                        dayparts=({"weekdays": [5], "start": "17:00", "end": "23:00"},)))
    with Session(sqlite_engine) as s, s.begin():
        node = s.get(Node, "st0001-k1")
        assert node is not None and node.store is not None
        s.add(Play(msg_id="m1", node="st0001-k1", screen="main", store_id=node.store_id, region_id=node.store.region_id,
                   campaign="evening", media=blue, layer="normal", schedule_version=1,
                   started_at=datetime(2026, 12, 5, 10, tzinfo=UTC), duration_ms=15000, day="2026-12-05"))
    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(cat))
    IMG.mkdir(parents=True, exist_ok=True)
    with Server(create_app(settings, run_worker=False, engine=sqlite_engine)) as server, sync_playwright() as p:
        page, seen = signed_in_page(p, server.url, "hq", PASSWORD)
        page.goto(f"{server.url}/console/signage")
        expect(page.locator("#current-version")).to_have_text("none")
        page.fill("input[name=note]", "from the browser")
        page.click("#publish")
        expect(page.locator("#current-version")).to_have_text("1")
        page.screenshot(path=str(IMG / "console-signage.png"), full_page=True)

        page.goto(f"{server.url}/console/signage/calendar?node=st0001-k1&day=2026-12-05&hours=24")
        rows = page.locator("#calendar tbody tr")
        expect(rows.filter(has_text="evening").first).to_contain_text("Sat 05 Dec 18:00:00")
        # 17:00-18:00 the weekend campaign plays; from 18:00 the higher-priority one beats it.
        expect(rows.filter(has_text="beats weekend").first).to_be_visible()
        page.screenshot(path=str(IMG / "console-signage-calendar.png"), full_page=True)

        page.goto(f"{server.url}/console/signage/calendar?region=east&weekday=5&at=19:00")
        expect(page.locator("#region-at tbody tr")).to_have_count(2)
        expect(page.locator("#region-at")).to_contain_text("evening")

        page.goto(f"{server.url}/console/signage/reports?by=campaign")
        expect(page.locator("#plays")).to_contain_text("evening")
        expect(page.locator("svg.chart").first).to_be_visible()
        assert page.locator("#csv").get_attribute("href") == "/signage/reports/plays.csv?by=campaign"
        page.screenshot(path=str(IMG / "console-signage-reports.png"), full_page=True)
        page.context.browser.close()
    assert seen.violations == [] and seen.errors == []
    with Session(sqlite_engine) as s:
        assert service.report(s, Scope(all=True), ["campaign"]) == [{"campaign": "evening", "plays": 1, "seconds": 15.0}]
