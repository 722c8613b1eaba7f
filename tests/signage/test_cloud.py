"""Signage in the cloud over HTTP, on both databases: media checked and served with ranges,
playlists, campaigns, publish → one retained `schedule` per screen through the downlink, rollback,
scope, the calendar equal to the expansion, and the console pages."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.payloads import ScheduleData
from cloud.api import create_app
from cloud.models import DownlinkCommand, Store
from cloud.settings import Settings
from cloud.signage.rules import rules_from_doc
from cloud.signage.service import current_publication
from signage_rules import Screen, expand, plan
from tests.access.conftest import World, sign_in
from tests.signage.conftest import png, video


def client(world: World, tmp: Path) -> TestClient:
    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(tmp / "cat"))
    return TestClient(create_app(settings, run_worker=False, engine=world.engine))


def login(c: TestClient, who: str) -> str:
    token = sign_in(c, who)
    c.headers["X-CSRF-Token"] = token
    return token


def upload(c: TestClient, data: bytes, name: str) -> Any:
    return c.post("/signage/media", files={"file": (name, data)}, data={"name": name})


def setup_campaigns(c: TestClient, tmp: Path) -> tuple[str, str]:
    img = upload(c, png("red"), "red.png")
    assert img.status_code == 201, img.text
    vid = upload(c, video(tmp), "clip.avi")
    assert vid.status_code == 201, vid.text
    assert vid.json()["kind"] == "video" and abs(vid.json()["duration_s"] - 2.0) < 0.01
    red, clip = img.json()["sha256"], vid.json()["sha256"]
    assert c.put("/signage/playlists", json={"name": "house", "items": [{"media": red, "duration_s": 5}],
                                             "is_default": True}).status_code == 200
    r = c.put("/signage/playlists", json={"name": "promo", "items": [{"media": clip, "duration_s": 99}, {"media": red}]})
    assert r.json()["items"][0]["duration_s"] == 2.0  # a video plays its own length
    r = c.put("/signage/campaigns", json={"id": "evening", "name": "Evening", "playlist": "promo", "regions": ["east"],
                                          "dayparts": [{"weekdays": [0, 1, 2, 3, 4, 5, 6], "start": "18:00", "end": "02:00"}]})
    assert r.status_code == 200, r.text
    return red, clip


def test_publish_sends_each_screen_its_schedule_and_the_calendar_is_the_same_expansion(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red, _clip = setup_campaigns(c, tmp_path)
        # Served by hash, with ranges (a resumed download).
        whole = c.get(f"/signage/media/{red}")
        assert hashlib.sha256(whole.content).hexdigest() == red
        part = c.get(f"/signage/media/{red}", headers={"Range": "bytes=10-"})
        assert part.status_code == 206 and part.content == whole.content[10:]
        r = c.post("/signage/publish", json={"note": "first"})
        assert r.status_code == 201, r.text
        assert r.json()["version"] == 1
        cal = c.get("/signage/calendar/st0001-k1", params={"start": "2026-12-05T17:00:00+08:00", "hours": 2})
        assert cal.status_code == 200, cal.text
        slots = cal.json()
        # 18:00 Shanghai: the evening campaign starts exactly there, the default plays before.
        first_evening = next(s for s in slots if s["campaign"] == "evening")
        assert first_evening["start"] == "2026-12-05T10:00:00Z"
        assert {s["layer"] for s in slots if s["start"] < "2026-12-05T10:00:00Z"} == {"default"}
        # st0003 is in the south: the evening campaign does not reach it.
        south = c.get("/signage/calendar/st0003-k1", params={"start": "2026-12-05T17:00:00+08:00", "hours": 2}).json()
        assert {s["campaign"] for s in south} == {None}
    with Session(world.engine) as s:
        rows = s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "schedule")).all()
        assert sorted(r.node for r in rows) == ["st0001-k1", "st0002-k1", "st0003-k1"]
        assert all(r.retain and r.engine == "signage" for r in rows)
        data = ScheduleData.model_validate(next(r.data for r in rows if r.node == "st0001-k1"))
        assert [c.id for c in data.campaigns] == ["evening"] and data.timezone == "Asia/Shanghai"
        # The hash the box will check is the expansion's, recomputed here from the stored rules.
        pub = current_publication(s)
        assert pub is not None
        store = s.scalars(select(Store).where(Store.code == "st0001")).one()
        screen = Screen("st0001-k1", "st0001", "east", store.timezone)
        slots2 = expand(rules_from_doc(pub.rules), screen, data.valid_from, data.valid_until)
        assert data.timeline_hash == plan(rules_from_doc(pub.rules), screen, data.valid_from, data.valid_until).digest()
        assert [(i.start, i.media) for i in data.items] == [(x.start, x.media) for x in slots2[: len(data.items)]]


def test_rollback_republishes_older_rules_and_a_new_schedule_supersedes(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        setup_campaigns(c, tmp_path)
        assert c.post("/signage/publish", json={}).json()["version"] == 1
        assert c.post("/signage/campaigns/evening/unpublish").json()["version"] == 2
        r = c.post("/signage/publications/1/rollback")
        assert r.status_code == 201 and r.json()["version"] == 3 and r.json()["rollback_of"] == 1
        assert [p["version"] for p in c.get("/signage/publications").json()] == [3, 2, 1]
    with Session(world.engine) as s:
        rows = s.scalars(select(DownlinkCommand).where(DownlinkCommand.node == "st0001-k1",
                                                       DownlinkCommand.type == "schedule").order_by(DownlinkCommand.id)).all()
        assert [r.status for r in rows] == ["superseded", "superseded", "pending"]
        assert [r.data["version"] for r in rows] == [1, 2, 3]
        assert [c["id"] for c in rows[1].data["campaigns"]] == []
        assert [c["id"] for c in rows[2].data["campaigns"]] == ["evening"]


REFUSALS = [
    ("/signage/playlists", {"name": "x", "items": [{"media": "0" * 64}]}, "no media '0000"),
    ("/signage/campaigns", {"id": "c", "name": "c", "playlist": "nope"}, "no playlist 'nope': create it first"),
    ("/signage/campaigns", {"id": "c", "name": "c", "playlist": "house", "regions": ["mars"]}, "no region 'mars'"),
    ("/signage/campaigns", {"id": "c", "name": "c", "playlist": "house", "layer": "interrupt", "sov_s": 7},
     "7 s per hour is not a whole number of 5 s spots within ±5 %: use 5 or 10 s"),
]


def test_bad_input_is_refused_with_the_field_and_the_reason(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        bad = upload(c, b"GIF89a not really", "x.gif")
        assert bad.status_code == 422 and "is not an image" in bad.text
        red = upload(c, png("red"), "red.png").json()["sha256"]
        c.put("/signage/playlists", json={"name": "house", "items": [{"media": red, "duration_s": 5}]})
        for path, body, says in REFUSALS:
            r = c.put(path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert says in r.text, r.text
        naive = c.get("/signage/calendar/st0001-k1", params={"start": "2026-12-05T17:00:00"})
        assert naive.status_code == 422


def test_regional_users_target_only_their_region_and_cannot_publish(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        c.put("/signage/playlists", json={"name": "house", "items": [{"media": red}]})
    with client(world, tmp_path) as c:
        login(c, "regional")
        r = c.put("/signage/campaigns", json={"id": "c", "name": "c", "playlist": "house", "regions": ["south"]})
        assert r.status_code == 422 and "no region 'south'" in r.text
        r = c.put("/signage/campaigns", json={"id": "c", "name": "c", "playlist": "house"})
        assert r.status_code == 422 and "a campaign for every store is for HQ" in r.text
        assert c.put("/signage/campaigns", json={"id": "c", "name": "c", "playlist": "house", "regions": ["east"]}).status_code == 200
        assert c.post("/signage/publish", json={}).status_code == 403
        assert c.get("/signage/calendar/st0003-k1").status_code == 404


def test_console_pages_show_calendar_region_view_and_reports(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        csrf = login(c, "hq")
        setup_campaigns(c, tmp_path)
        r = c.post("/console/signage/publish", data={"csrf_token": csrf, "note": "from the console"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        page = c.get("/console/signage")
        assert 'id="current-version">1<' in page.text and "evening" in page.text
        cal = c.get("/console/signage/calendar", params={"node": "st0001-k1", "day": "2026-12-05"})
        assert cal.status_code == 200 and "evening" in cal.text and "(default)" in cal.text
        at = c.get("/console/signage/calendar", params={"region": "east", "weekday": 5, "at": "19:00"})
        assert at.text.count("<td>evening</td>") == 2  # both east stores
        rep = c.get("/console/signage/reports", params={"by": "campaign"})
        assert rep.status_code == 200 and "No plays recorded" in rep.text
        csv = c.get("/signage/reports/plays.csv", params={"by": ["campaign", "day"]})
        assert csv.text.splitlines()[0] == "campaign,day,plays,seconds"


def test_a_store_in_berlin_switches_at_local_time_on_the_dst_day(world: World, tmp_path: Path) -> None:
    with Session(world.engine) as s, s.begin():
        from cloud.models import Node, Region

        east = s.scalars(select(Region).where(Region.code == "east")).one()
        st = Store(code="be01", name="Berlin", region=east, lat=52.5, lon=13.4, timezone="Europe/Berlin")
        s.add_all([st, Node(id="be01-k1", store=st)])
    with client(world, tmp_path) as c:
        login(c, "hq")
        setup_campaigns(c, tmp_path)
        c.post("/signage/publish", json={})
        # 2026-03-29: Berlin springs forward; 18:00 CEST is 16:00 UTC (it was 17:00 UTC the day before).
        day_before = c.get("/signage/calendar/be01-k1", params={"start": "2026-03-28T16:00:00Z", "hours": 2}).json()
        dst_day = c.get("/signage/calendar/be01-k1", params={"start": "2026-03-29T15:00:00Z", "hours": 2}).json()
        assert next(s for s in day_before if s["campaign"] == "evening")["start"] == "2026-03-28T17:00:00Z"
        assert next(s for s in dst_day if s["campaign"] == "evening")["start"] == "2026-03-29T16:00:00Z"
        assert next(s for s in dst_day if s["campaign"] == "evening")["local_start"].startswith("2026-03-29T18:00:00+02:00")
    _ = datetime.now(UTC) + timedelta(0)


def test_screen_tags_change_what_a_screen_plays(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        c.put("/signage/playlists", json={"name": "house", "items": [{"media": red}], "is_default": True})
        c.put("/signage/campaigns", json={"id": "win", "name": "Window", "playlist": "house", "tags": ["window"]})
        c.post("/signage/publish", json={})
        start = {"start": "2026-12-05T12:00:00+08:00", "hours": 0.01}
        assert {s["campaign"] for s in c.get("/signage/calendar/st0002-k1", params=start).json()} == {None}
        r = c.patch("/signage/screens/st0002-k1", json={"tags": ["window", " big "]})
        assert r.status_code == 200 and r.json()["tags"] == ["big", "window"]
        assert {s["campaign"] for s in c.get("/signage/calendar/st0002-k1", params=start).json()} == {"win"}
        screens = {s["node"]: s for s in c.get("/signage/screens").json()}
        # Its schedule is out of date: the refresher sends a new one.
        assert screens["st0002-k1"]["sent_version"] is None and screens["st0001-k1"]["sent_version"] == 1
    with Session(world.engine) as s, s.begin():
        from cloud.signage.service import refresh

        assert refresh(s, datetime.now(UTC)) == 1
