"""Signage end to end over the real broker and real HTTP: HQ publishes → the box gets its schedule
within seconds → plays on the boundary (a clock under the test's control) → proof of play counted
once in the cloud's report; unpublish stops playback at once; a box offline for a simulated 24 h
keeps playing and uploads every proof of play on return, exactly once; a file with a wrong
checksum is never played and a missing one falls back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cloud.access.scope import Principal, Role, Scope
from cloud.access.service import write_session
from cloud.models import Node, Region, Store
from cloud.signage import service
from cloud.signage.media import MediaStore
from cloud.signage.models import Play, ScreenState
from edge.agent import EdgeAgent
from edge.component import Component, ComponentContext
from edge.signage.component import SignageComponent
from edge.signage.player import ManualClock, Player
from firmware_config import NodeConfig
from tests.catalogue.test_sync import cloud
from tests.cloud.conftest import until
from tests.conftest import Broker
from tests.signage.conftest import png

NODE = "st1-k1"
ZONE = ZoneInfo("Asia/Shanghai")
HQ = Principal(kind="cli", id=0, name="test", role=Role.ADMIN, scope=Scope(all=True))
# A Saturday in the past: proof of play from the future would be refused as implausible.
DAY = date(2026, 11, 21)


def at(h: int, m: int = 0, s: int = 0, d: date = DAY) -> datetime:
    return datetime.combine(d, time(h, m, s), tzinfo=ZONE).astimezone(UTC)


def setup(engine: Engine, cat_dir: Path, *, promo_s: float = 20, house_s: float = 30,
          daypart: tuple[str, str] = ("12:00", "12:01")) -> dict[str, str]:
    with Session(engine) as s, s.begin():
        region = Region(code="east", name="East China")
        store = Store(code="st1", name="Store 1", region=region, lat=31.2, lon=121.4, timezone="Asia/Shanghai")
        s.add_all([region, store, Node(id=NODE, store=store)])
    media = MediaStore(cat_dir / "signage")
    with write_session(engine) as s, s.begin():
        red = service.upload_media(s, HQ, media, "red.png", png("red")).sha256
        blue = service.upload_media(s, HQ, media, "blue.png", png("blue")).sha256
        service.create_playlist(s, HQ, "house", [{"media": red, "duration_s": house_s}], is_default=True)
        service.create_playlist(s, HQ, "promo", [{"media": blue, "duration_s": promo_s}])
        service.save_campaign(s, HQ, service.CampaignIn(
            id="promo", name="Promo", layer="normal", playlist="promo",
            dayparts=({"weekdays": [5], "start": daypart[0], "end": daypart[1]},)))
    return {"red": red, "blue": blue}


def publish(engine: Engine) -> int:
    with write_session(engine) as s, s.begin():
        return service.publish(s, HQ).version


def box_config(tmp: Path, broker: Broker, cloud_url: str, password: str | None = None) -> NodeConfig:
    return NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st1",
        "broker": {"url": broker.url, "password": password or broker.add_node(NODE), "keepalive_s": 5},
        "outbox": {"path": str(tmp / "outbox.db")},
        "backoff": {"base_s": 0.05, "cap_s": 0.3},
        "signage": {"cloud_url": cloud_url, "path": str(tmp / "signage"), "media_budget_mb": 1},
        "local_api": {"port": 0},
    })


@contextlib.asynccontextmanager
async def agent(cfg: NodeConfig, clock: ManualClock) -> AsyncIterator[tuple[EdgeAgent, SignageComponent]]:
    made: list[SignageComponent] = []

    def factory(ctx: ComponentContext) -> Component:
        made.append(SignageComponent(ctx, clock=clock))
        return made[0]

    a = EdgeAgent(cfg, components=(factory,))
    task = asyncio.create_task(a.run())
    await until(lambda: a.ready.is_set() or task.done(), what="agent ready")
    try:
        yield a, made[0]
    finally:
        await a.stop()
        await task


async def settle(player: Player) -> None:
    """Let the player take the decision it was woken for."""
    turns = player.turns
    player.wake()
    await until(lambda: player.turns > turns and player.sleeping.is_set(), what="player decided")


async def step_to(player: Player, clock: ManualClock, t: datetime) -> None:
    """Move the clock boundary by boundary to `t`, letting the player decide at each one."""
    while True:
        await until(lambda: player.sleeping.is_set(), what="player waiting")
        deadline = player.deadline
        assert deadline is not None
        if deadline > t:
            clock.advance_to(t)
            return
        turns = player.turns
        clock.advance_to(deadline)
        await until(lambda n=turns: player.turns > n and player.sleeping.is_set(),  # type: ignore[misc]
                    what=f"player at {deadline.isoformat()}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def fetch(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body), errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def screen_log(sig: SignageComponent) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sig.screen_log.read_text().splitlines()]


def playing_version(engine: Engine) -> int | None:
    with Session(engine) as s:
        state = s.get(ScreenState, (NODE, "main"))
        return state.playing_version if state else None


def plays(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(Play)) or 0)


def test_publish_plays_on_the_boundary_proof_counted_unpublish_stops_at_once(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    cat_dir = tmp_path / "cloud-cat"
    m = setup(engine, cat_dir)

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            clock = ManualClock(at(11, 59))
            async with agent(box_config(tmp_path, broker, url), clock) as (a, sig):
                started = asyncio.get_running_loop().time()
                assert publish(engine) == 1
                await until(lambda: sig.player.data is not None, timeout=5, what="schedule on the box")
                received_s = asyncio.get_running_loop().time() - started
                assert received_s < 5
                await until(lambda: sig.cache.has(m["red"]) and sig.cache.has(m["blue"]), what="media cached")
                await until(lambda: playing_version(engine) == 1, what="the box acknowledged version 1")
                # Local API: the next items, from the same expansion.
                api = a.api
                assert api is not None
                await settle(sig.player)
                await step_to(sig.player, clock, at(11, 59, 10))
                now = await asyncio.to_thread(get_json, f"{api.url}/signage/now")
                assert now["version"] == 1
                assert [n["campaign"] for n in now["next"]][:3] == [None, "promo", "promo"]
                assert now["next"][1]["start"] == at(12).isoformat()
                # The media the kiosk's attract loop shows: the verified file, byte for byte.
                assert await asyncio.to_thread(fetch, f"{api.url}/signage/media/{m['blue']}") == (
                    200, "image/png", sig.cache.path(m["blue"]).read_bytes())

                await step_to(sig.player, clock, at(12, 0, 5))
                log = screen_log(sig)
                promo = [e for e in log if e["campaign"] == "promo"]
                # Switched exactly on the boundary (the clock was stepped there).
                assert promo[0]["at"] == at(12).isoformat(timespec="milliseconds")
                assert promo[0]["media"] == m["blue"] and promo[0]["reason"] == "scheduled"

                # Unpublish while the promo plays: it stops at once, not at the end of its 20 s.
                with write_session(engine) as s, s.begin():
                    service.set_enabled(s, HQ, "promo", False)
                    service.publish(s, HQ, "stop it")
                await until(lambda: sig.player.data is not None and sig.player.data.version == 2, timeout=5,
                            what="version 2 on the box")
                await until(lambda: screen_log(sig)[-1]["campaign"] is None, timeout=5, what="promo stopped")
                assert screen_log(sig)[-1]["at"] == at(12, 0, 5).isoformat(timespec="milliseconds")
                await step_to(sig.player, clock, at(12, 2))
                sent = sig.player.stats.plays
                await until(lambda: plays(engine) == sent, timeout=10, what=f"{sent} plays counted in the cloud")
            with Session(engine) as s:
                rows = service.report(s, Scope(all=True), ["campaign"])
                promo_row = next(r for r in rows if r["campaign"] == "promo")
                # The promo played 5 s (cut by the unpublish), proved with its monotonic duration.
                assert promo_row == {"campaign": "promo", "plays": 1, "seconds": 5.0}
                assert sum(r["seconds"] for r in rows) == 180.0  # 11:59:00 → 12:02:00, no gap, no overlap
                assert service.dropped_counts(s, Scope(all=True)) == []

    asyncio.run(asyncio.wait_for(main(), 90))


def test_offline_for_a_day_keeps_playing_and_uploads_every_play_once(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    cat_dir = tmp_path / "cloud-cat"
    m = setup(engine, cat_dir, promo_s=600, house_s=1200, daypart=("12:00", "13:00"))
    # Sunday too, so the second day's slot is in the rules, beyond the cloud's 48 h window if need be.
    with write_session(engine) as s, s.begin():
        service.save_campaign(s, HQ, service.CampaignIn(
            id="promo", name="Promo", layer="normal", playlist="promo",
            dayparts=({"weekdays": [5, 6], "start": "12:00", "end": "13:00"},)))

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            clock = ManualClock(at(11, 0))
            cfg = box_config(tmp_path, broker, url)
            async with agent(cfg, clock) as (_a, sig):
                publish(engine)
                await until(lambda: sig.player.data is not None, timeout=5, what="schedule on the box")
                await until(lambda: sig.cache.has(m["red"]) and sig.cache.has(m["blue"]), what="media cached")
                # The link goes (the broker stops: the cloud loses it too, as in a store's outage).
                await asyncio.to_thread(broker.process.stop)
                await settle(sig.player)
                await step_to(sig.player, clock, at(11, 0) + timedelta(hours=26))
                sent = sig.player.stats.plays
                assert plays(engine) <= 1
                log = screen_log(sig)
                promo_starts = [e["at"] for e in log if e["campaign"] == "promo"]
                # Both days' slots played on time, the second one from the rules alone.
                assert at(12).isoformat(timespec="milliseconds") in promo_starts
                assert at(12, d=date(2026, 11, 22)).isoformat(timespec="milliseconds") in promo_starts
                assert sent >= 26 * 3
                # HQ publishes while the store is cut off: the box gets the latest once back.
                with write_session(engine) as s, s.begin():
                    service.publish(s, HQ, "while the store was offline")
                # The link comes back.
                await asyncio.to_thread(broker.process.start)
                await until(lambda: plays(engine) == sent, timeout=30, what=f"all {sent} plays in the cloud")
                await until(lambda: sig.player.data is not None and sig.player.data.version == 2, timeout=15,
                            what="the latest schedule on the reconnected box")
                await until(lambda: playing_version(engine) == 2, what="version 2 acknowledged")
                with Session(engine) as s:
                    rows = service.report(s, Scope(all=True), ["day"])
                    assert sum(r["plays"] for r in rows) == sent
                    assert sum(r["seconds"] for r in rows) == 26 * 3600
                    assert [r["day"] for r in rows] == ["2026-11-21", "2026-11-22"]

    asyncio.run(asyncio.wait_for(main(), 120))


def test_wrong_checksum_is_never_played_and_missing_media_falls_back(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    cat_dir = tmp_path / "cloud-cat"
    m = setup(engine, cat_dir)
    media = MediaStore(cat_dir / "signage")
    # The promo's file on the server no longer hashes to its name.
    media.path(m["blue"]).write_bytes(png("green"))

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            clock = ManualClock(at(11, 59, 50))
            async with agent(box_config(tmp_path, broker, url), clock) as (a, sig):
                publish(engine)
                await until(lambda: sig.cache.has(m["red"]), what="default cached")
                await until(lambda: sig.cache.stats.rejected >= 1, what="the bad file rejected")
                await settle(sig.player)
                await step_to(sig.player, clock, at(12, 0, 30))
                log = screen_log(sig)
                assert m["blue"] not in {e["media"] for e in log}
                at_noon = next(e for e in log if e["at"] == at(12).isoformat(timespec="milliseconds"))
                assert (at_noon["media"], at_noon["reason"]) == (m["red"], "fallback")
                assert not sig.cache.has(m["blue"])
                assert sig.status()["media_rejected"] >= 1
                # Nor is it served to the kiosk; a malformed id is named as such.
                assert a.api is not None
                for sha, code, why in ((m["blue"], 404, "not fetched yet"), ("F00", 400, "64 lowercase hex digits")):
                    status, _type, body = await asyncio.to_thread(fetch, f"{a.api.url}/signage/media/{sha}")
                    assert status == code and why in body.decode(), (status, body)

    asyncio.run(asyncio.wait_for(main(), 60))
