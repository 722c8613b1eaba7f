"""Transitions: a playlist item may say how it comes on screen (cut, or a fade of so many ms).
Checked at the API, carried in the published rules and the typed `schedule` (optional fields: a
schedule without them is what it always was, hashes included), expanded into the box's slots, and
written by the log screen."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.payloads import PopData, ScheduleData
from cloud.models import DownlinkCommand
from edge.signage import schedule as sched
from edge.signage.player import ManualClock, Player
from edge.signage.screen import LogScreen
from signage_rules import Campaign, Item, Layer, Rules, RulesError, Screen, Transition, plan, validate
from tests.access.conftest import World
from tests.signage.conftest import png
from tests.signage.test_box import A, B, ready, run_until
from tests.signage.test_cloud import client, login, upload

REFUSED = [
    ({"kind": "fade", "ms": 5000}, 5, '"items.0.transition.ms"],"msg":"5000 ms is not shorter than the item itself (5 s)"'),
    ({"kind": "cut", "ms": 200}, 5, '"items.0.transition.ms"],"msg":"a cut is instant: give 0 ms, got 200"'),
    ({"kind": "wipe", "ms": 200}, 5, "String should match pattern '^(cut|fade)$'"),
    ({"kind": "fade", "ms": 6000}, 10, "Input should be less than or equal to 5000"),
]


@pytest.mark.parametrize(("transition", "duration", "says"), REFUSED)
def test_a_transition_that_cannot_play_is_refused(world: World, tmp_path: Path, transition: dict[str, Any],
                                                  duration: int, says: str) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        r = c.put("/signage/playlists", json={"name": "p", "items": [
            {"media": red, "duration_s": duration, "transition": transition}]})
        assert r.status_code == 422 and says in r.text, r.text


def test_transitions_reach_the_schedule_and_the_box_expands_the_same_timeline(world: World, tmp_path: Path) -> None:
    with client(world, tmp_path) as c:
        login(c, "hq")
        red = upload(c, png("red"), "red.png").json()["sha256"]
        blue = upload(c, png("blue"), "blue.png").json()["sha256"]
        r = c.put("/signage/playlists", json={"name": "house", "is_default": True, "items": [
            {"media": red, "duration_s": 10, "transition": {"kind": "fade", "ms": 750}},
            {"media": blue, "duration_s": 10}]})
        assert r.status_code == 200, r.text
        assert [i.get("transition") for i in r.json()["items"]] == [{"kind": "fade", "ms": 750}, None]
        assert c.post("/signage/publish", json={}).status_code == 201
    with Session(world.engine) as s:
        row = s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "schedule",
                                                      DownlinkCommand.node == "st0001-k1")).one()
        data = ScheduleData.model_validate(row.data)
    assert data.default[0].transition is not None and data.default[0].transition.kind == "fade"
    assert data.default[1].transition is None
    by_media = {i.media: i.transition for i in data.items}
    faded = by_media[red]
    assert faded is not None and (faded.kind, faded.ms) == ("fade", 750)
    assert by_media[blue] is None
    # The box expands the rules itself and gets the cloud's items and hash, transitions included.
    assert sched.agreement(data, "st0001-k1") is None


def test_items_without_transitions_keep_their_hashes_and_a_transition_changes_them() -> None:
    start = datetime(2026, 6, 1, tzinfo=UTC)
    screen = Screen("n1", "s1", "r1", "Europe/Berlin")
    assert Item(A, 10.0).text() == f"{A}:10.0"  # what the digest always wrote for an item
    plain = plan(Rules((), (Item(A, 10.0), Item(B, 5.0))), screen, start, start + timedelta(hours=1))
    faded = plan(Rules((), (Item(A, 10.0, Transition("fade", 500)), Item(B, 5.0))), screen, start,
                 start + timedelta(hours=1))
    assert plain.digest() != faded.digest()
    slots = faded.slots(start, start + timedelta(seconds=30))
    assert [s.transition for s in slots[:2]] == [Transition("fade", 500), None]


@pytest.mark.parametrize("t", [Transition("wipe", 0), Transition("cut", 100), Transition("fade", 10_000)])
def test_the_rules_refuse_a_transition_that_cannot_play(t: Transition) -> None:
    with pytest.raises(RulesError, match="has transition"):
        validate(Campaign("c", Layer.NORMAL, (Item(A, 10.0, t),)))


def test_the_schedule_refuses_an_unknown_transition_and_reads_one_without() -> None:
    base = {"version": 1, "valid_from": "2026-06-01T00:00:00+00:00", "valid_until": "2026-06-03T00:00:00+00:00"}
    assert ScheduleData.model_validate(base | {"default": [{"media": A, "duration_s": 10}]}).default[0].transition is None
    with pytest.raises(ValidationError, match=r"default\.0\.transition\.kind"):
        ScheduleData.model_validate(base | {"default": [{"media": A, "duration_s": 10,
                                                         "transition": {"kind": "spin", "ms": 10}}]})


def test_the_log_screen_writes_the_transition(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    log_path = tmp_path / "screen.log"

    async def main() -> None:
        async def publish(_p: PopData) -> None:
            return None

        clock = ManualClock(now)
        player = Player("n1", "main", LogScreen(log_path), ready(tmp_path / "cache", A, B), publish, clock)
        player.load(ScheduleData.model_validate({
            "version": 1, "valid_from": now.isoformat(), "valid_until": (now + timedelta(hours=48)).isoformat(),
            "default": [{"media": A, "duration_s": 10, "transition": {"kind": "fade", "ms": 400}},
                        {"media": B, "duration_s": 10, "transition": {"kind": "cut", "ms": 0}}]}))
        task = asyncio.create_task(player.run())
        await run_until(player, clock, now + timedelta(seconds=15))
        assert player.now_playing()["now"]["transition"] == {"kind": "cut", "ms": 0}
        await player.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 20))
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(x["media"], x.get("transition")) for x in lines[:2]] == [
        (A, {"kind": "fade", "ms": 400}), (B, {"kind": "cut", "ms": 0})]
