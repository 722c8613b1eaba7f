"""The signage console's forms over HTTP (the browser test drives them in Chromium): CSRF checked
before anything is written, a regional user's campaign scoped to their regions with the refusal
shown on the form, and the per-screen API (a second screen of a box, its own tags and calendar)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.signage.models import Campaign, ScreenState
from tests.access.conftest import World
from tests.signage.conftest import png
from tests.signage.test_cloud import client, login, upload


def form(csrf: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {"csrf_token": csrf, "new": "1", "rows": "2", "layer": "normal", "playlist": "house",
                               "priority": "0", "sov_s": "0", "enabled": "on"}
    return base | fields


def test_campaign_form_checks_csrf_and_scope(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        assert c.put("/signage/playlists", json={"name": "house", "items": [{"media": red}]}).status_code == 200
        c.put("/signage/campaigns", json={"id": "hq-all", "name": "For every store", "playlist": "house"})
    with client(world, tmp_path) as c:
        csrf = login(c, "regional")
        r = c.post("/console/signage/campaigns", data=form("", id="x", name="X", regions="east"), follow_redirects=False)
        assert r.status_code == 403
        r = c.post("/console/signage/campaigns", data=form(csrf, id="south-1", name="South", regions="south"))
        assert r.status_code == 422 and "regions: no region &#39;south&#39; (unknown, or outside your regions)" in r.text
        assert 'value="south-1"' in r.text  # the form comes back as typed
        r = c.post("/console/signage/campaigns", data=form(csrf, id="east-1", name="East", regions="east",
                                                           dp0_days=["4", "5"], dp0_start="22:00", dp0_end="01:00"),
                   follow_redirects=False)
        assert r.status_code == 303, r.text
        page = c.get("/console/signage/campaigns")
        # Only campaigns a regional user may edit are listed: not HQ's campaign for every store.
        assert "east-1" in page.text and "hq-all" not in page.text
        assert c.get("/console/signage/campaigns", params={"id": "hq-all"}).status_code == 404
        # Reusing an id on the new-campaign form does not overwrite the campaign.
        r = c.post("/console/signage/campaigns", data=form(csrf, id="east-1", name="Other", regions="east"))
        assert r.status_code == 422 and "a campaign &#39;east-1&#39; exists already: edit it instead" in r.text
    with Session(world.engine) as s:
        c1 = s.get(Campaign, "east-1")
        assert c1 is not None and c1.name == "East" and c1.updated_by == "user:regional"
        assert c1.dayparts == [{"weekdays": [4, 5], "start": "22:00", "end": "01:00"}]
        assert s.scalar(select(func.count()).select_from(Campaign)) == 2


def test_a_second_screen_has_its_own_tags_and_calendar(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        c.put("/signage/playlists", json={"name": "house", "items": [{"media": red}], "is_default": True})
        c.put("/signage/campaigns", json={"id": "win", "name": "Window", "playlist": "house", "tags": ["window"]})
        c.post("/signage/publish", json={})
        r = c.patch("/signage/screens/st0002-k1", json={"screen": "door", "tags": ["window"]})
        assert r.status_code == 200 and r.json() == {"node": "st0002-k1", "tags": ["window"], "screen": "door"}
        rows = [(s["screen"], s["tags"]) for s in c.get("/signage/screens").json() if s["node"] == "st0002-k1"]
        assert rows == [("main", []), ("door", ["window"])]
        start = {"start": "2026-12-05T12:00:00+08:00", "hours": 0.01}
        assert {s["campaign"] for s in c.get("/signage/calendar/st0002-k1", params=start).json()} == {None}
        door = c.get("/signage/calendar/st0002-k1", params=start | {"screen": "door"}).json()
        assert {s["campaign"] for s in door} == {"win"}
        lobby = c.get("/signage/calendar/st0002-k1", params=start | {"screen": "lobby"})
        assert lobby.status_code == 404 and "No screen 'lobby' on box st0002-k1" in lobby.text
        assert c.delete("/signage/screens/st0002-k1/door").status_code == 204
        assert c.delete("/signage/screens/st0002-k1/door").status_code == 404
    with Session(world.engine) as s:
        assert [st.screen for st in s.scalars(select(ScreenState).where(ScreenState.node == "st0002-k1"))] == ["main"]
