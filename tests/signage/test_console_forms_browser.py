"""HQ builds a whole signage programme in the console, in real headless Chromium: uploads media (a
file that is not one is refused on the form), makes playlists (items in order, durations, a fade;
a fade longer than its item is refused on the form; then reordered), a draft campaign targeting a region with a
Saturday 22:00-02:00 slot (crossing midnight) in a date range (a range that ends before it starts
is refused on the form), edits it, publishes, and the calendar shows the result. No CSP violation,
no console error; every change is in the audit log as made in the console."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access.models import AuditEntry
from cloud.api import create_app
from cloud.settings import Settings
from cloud.signage.models import Campaign, Media, Playlist, Publication
from tests.access.conftest import PASSWORD, make_world
from tests.console.test_browser import CHROMIUM, IMG, Server, signed_in_page, sqlite_engine  # noqa: F401 - fixture
from tests.signage.conftest import png

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def test_hq_builds_and_publishes_a_programme_in_chromium(sqlite_engine, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    world = make_world(sqlite_engine)
    files = tmp_path / "upload"
    files.mkdir()
    (files / "red.png").write_bytes(png("red"))
    (files / "blue.png").write_bytes(png("blue"))
    (files / "notes.txt").write_bytes(b"not an image at all")
    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(tmp_path / "cat"))
    IMG.mkdir(parents=True, exist_ok=True)
    with Server(create_app(settings, run_worker=False, engine=sqlite_engine)) as server, sync_playwright() as p:
        page, seen = signed_in_page(p, server.url, "hq", PASSWORD, height=900)

        # Media: a text file is refused with the API's own reason, on the form.
        page.goto(f"{server.url}/console/signage")
        page.click("text=Media")
        page.set_input_files("input[name=file]", str(files / "notes.txt"))
        page.click("#upload-button")
        expect(page.locator("#error")).to_contain_text("file:")
        expect(page.locator("#media")).to_contain_text("No media yet")
        for name in ("red.png", "blue.png"):
            page.set_input_files("input[name=file]", str(files / name))
            page.click("#upload-button")
            expect(page.locator("#media tbody tr", has_text=name)).to_be_visible()
        expect(page.locator("#media tbody tr")).to_have_count(2)
        expect(page.locator("#media img.thumb").first).to_have_js_property("naturalWidth", 64)
        page.screenshot(path=str(IMG / "console-signage-media.png"), full_page=True)

        # Playlists: the default one, then a promo with a fade (first too long for its item).
        page.click("text=Playlists")
        page.fill("input[name=name]", "house")
        page.select_option("select[name=item0_media]", label="red.png (image)")
        page.fill("input[name=item0_duration]", "20")
        page.check("input[name=is_default]")
        page.click("#save-playlist")
        expect(page.locator("#saved")).to_be_visible()
        page.click("text=new playlist")
        page.fill("input[name=name]", "promo")
        page.select_option("select[name=item0_media]", label="blue.png (image)")
        page.fill("input[name=item0_duration]", "2")
        page.select_option("select[name=item0_transition]", "fade")
        page.fill("input[name=item0_ms]", "3000")
        page.select_option("select[name=item1_media]", label="red.png (image)")
        page.fill("input[name=item1_duration]", "10")
        page.select_option("select[name=item1_transition]", "cut")
        page.click("#save-playlist")
        expect(page.locator("#error")).to_contain_text("items.0.transition.ms: 3000 ms is not shorter than the item itself (2 s)")
        # The form comes back as typed: fix the one field.
        expect(page.locator("input[name=name]")).to_have_value("promo")
        expect(page.locator("select[name=item1_transition]")).to_have_value("cut")
        page.fill("input[name=item0_duration]", "15")
        page.fill("input[name=item0_ms]", "500")
        page.click("#save-playlist")
        expect(page.locator("#saved")).to_be_visible()
        expect(page.locator("#playlists tbody tr", has_text="promo")).to_contain_text("blue.png 15 s (fade 500 ms) → red.png 10 s (cut)")
        # Reorder: the second item's number to 0 puts it first.
        page.fill("input[name=item1_pos]", "0")
        page.click("#save-playlist")
        expect(page.locator("#playlists tbody tr", has_text="promo")).to_contain_text("red.png 10 s (cut) → blue.png 15 s (fade 500 ms)")
        expect(page.locator("select[name=item0_media] option:checked")).to_have_text("red.png (image)")
        page.screenshot(path=str(IMG / "console-signage-playlists.png"), full_page=True)

        # A campaign: region east, Saturdays 22:00 to 02:00, December; the dates first the wrong way round.
        page.click("text=Campaigns")
        page.fill("input[name=id]", "late-night")
        page.fill("input[name=name]", "Late night")
        page.select_option("select[name=layer]", "normal")
        page.fill("input[name=priority]", "2")
        page.select_option("select[name=playlist]", "promo")
        page.check("#regions input[value=east]")
        page.fill("input[name=start_date]", "2026-12-31")
        page.fill("input[name=end_date]", "2026-12-01")
        page.check("input[name=dp0_days][value='5']")
        page.fill("input[name=dp0_start]", "22:00")
        page.fill("input[name=dp0_end]", "02:00")
        page.click("#save-campaign")
        expect(page.locator("#error")).to_contain_text("ends (2026-12-01) before it starts (2026-12-31)")
        expect(page.locator("#regions input[value=east]")).to_be_checked()
        expect(page.locator("input[name=dp0_end]")).to_have_value("02:00")
        page.fill("input[name=start_date]", "2026-12-01")
        page.fill("input[name=end_date]", "2026-12-31")
        page.click("#save-campaign")
        expect(page.locator("#saved")).to_be_visible()
        # Edit it: a new name, and the id stays.
        page.locator("#campaigns tbody tr", has_text="late-night").locator("text=edit").click()
        expect(page.locator("input[name=id]")).to_have_value("late-night")
        page.fill("input[name=name]", "Late night special")
        page.click("#save-campaign")
        expect(page.locator("#campaigns tbody tr", has_text="late-night")).to_contain_text("Late night special")
        expect(page.locator("#campaigns tbody tr", has_text="late-night")).to_contain_text("Sat 22:00\u201302:00")
        page.screenshot(path=str(IMG / "console-signage-campaigns.png"), full_page=True)

        page.goto(f"{server.url}/console/signage")
        page.click("#publish")
        expect(page.locator("#current-version")).to_have_text("1")

        # Saturday 5 December in Shanghai: the default until 22:00, the campaign until 02:00 Sunday.
        page.goto(f"{server.url}/console/signage/calendar?node=st0001-k1&day=2026-12-05&hours=48")
        rows = page.locator("#calendar tbody tr")
        late = rows.filter(has_text="late-night")
        expect(late.first).to_contain_text("Sat 05 Dec 22:00:00")
        expect(late).to_have_count(1)
        expect(rows.filter(has_text="Sun 06 Dec 02:00:00").first).to_contain_text("(default)")
        page.screenshot(path=str(IMG / "console-signage-forms-calendar.png"), full_page=True)
        page.context.browser.close()
    assert seen.violations == []
    # The three refused forms answered 422 (Chromium logs each as a failed load); nothing else.
    assert [e.split(": console error: ")[0].rsplit("/", 1)[1] for e in seen.errors] == ["media", "playlists", "campaigns"]
    assert all("status of 422" in e for e in seen.errors)
    with Session(sqlite_engine) as s:
        assert s.scalar(select(Media).where(Media.name == "blue.png")) is not None
        promo = s.scalars(select(Playlist).where(Playlist.name == "promo")).one()
        assert [i.get("transition") for i in promo.items] == [{"kind": "cut", "ms": 0}, {"kind": "fade", "ms": 500}]
        c = s.get(Campaign, "late-night")
        assert c is not None and c.regions == ["east"] and c.dayparts == [{"weekdays": [5], "start": "22:00", "end": "02:00"}]
        assert s.scalar(select(Publication.version)) == 1
        actions = [a for a, v in s.execute(select(AuditEntry.action, AuditEntry.via).where(AuditEntry.actor == "user:hq"))
                   if v == "console"]
        assert actions.count("signage.media.upload") == 2
        assert actions.count("signage.playlist.save") == 3
        assert actions.count("signage.campaign.save") == 2
        assert "signage.publish" in actions
