"""Proof of play in the cloud, over the real broker and worker, on both databases: each record
counted once however often it arrives; records that cannot be true dropped and counted by reason;
the store-local day of a play; an ack records the version a box plays, an older ack never wins."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import AckData, PopData
from cloud.access.scope import Scope
from cloud.bus.worker import CloudBus
from cloud.models import DownlinkCommand, Node, Region, Store
from cloud.signage import service
from cloud.signage.models import Play, ScreenState
from tests.cloud.conftest import box, cloud_settings, running, until_db
from tests.conftest import Broker

NODE = "be1-k1"
M = "a" * 64


def setup(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        region = Region(code="eu", name="Europe")
        store = Store(code="be1", name="Berlin", region=region, lat=52.5, lon=13.4, timezone="Europe/Berlin")
        s.add_all([region, store, Node(id=NODE, store=store)])
        s.flush()
        s.add(ScreenState(node=NODE, screen="main", tags=[]))


def pop(start: datetime, ms: int, campaign: str | None = "c1") -> PopData:
    return PopData(screen="main", media_id=M, campaign_id=campaign, started_at=start, duration_ms=ms, schedule_version=1)


def test_each_play_is_counted_once_and_implausible_ones_are_dropped(broker: Broker, engine: Engine) -> None:
    setup(engine)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    async def main() -> None:
        worker = CloudBus(await cloud_settings(broker, engine), engine)
        async with running(worker), box(broker, NODE) as b:
            await b.birth(data={"store": "be1"})
            first = b.envelope(MessageType.POP, pop(t0, 15_000))
            await b.send(first)
            await b.send(first)  # redelivered: the same msg_id
            await b.send(b.envelope(MessageType.POP, pop(t0 + timedelta(seconds=15), 15_000)))
            await b.send(b.envelope(MessageType.POP, pop(t0 + timedelta(seconds=20), 5_000)))  # overlaps the previous
            await b.send(b.envelope(MessageType.POP, pop(t0 + timedelta(seconds=40), 0)))
            await b.send(b.envelope(MessageType.POP, pop(t0 + timedelta(seconds=60), 7 * 3600 * 1000)))
            await b.send(b.envelope(MessageType.POP, pop(datetime.now(UTC) + timedelta(hours=1), 1000)))
            # A fence: once this one is counted, everything before it has been handled.
            await b.send(b.envelope(MessageType.POP, pop(t0 - timedelta(hours=20), 10_000, campaign=None)))
            await until_db(engine, lambda s: s.scalar(select(func.count()).select_from(Play)) == 3, what="3 plays")
            # The box acknowledges schedules out of order: version 3, then (late) version 2.
            for version, corr in ((3, "01937a4e-0000-7000-8000-000000000003"), (2, "01937a4e-0000-7000-8000-000000000002")):
                with Session(engine) as s, s.begin():
                    s.add(DownlinkCommand(
                        msg_id=uuid.UUID(corr), node=NODE, type="schedule", data={"version": version,
                        "timeline_hash": f"{version:032x}"}, retain=True, engine="signage", status="sent",
                        created_at=t0, next_attempt_at=t0))
                await b.send(b.envelope(MessageType.ACK, AckData(ok=True, detail="playing"),
                                        corr=uuid.UUID(corr)))
            await until_db(engine, lambda s: (s.get(ScreenState, (NODE, "main")) or ScreenState()).playing_version == 3,
                           what="playing version 3")
            fence = b.envelope(MessageType.POP, pop(t0 - timedelta(hours=10), 1000, campaign="fence"))
            await b.send(fence)
            await until_db(engine, lambda s: s.scalar(select(func.count()).select_from(Play)) == 4, what="fence")

    asyncio.run(asyncio.wait_for(main(), 60))
    with Session(engine) as s:
        assert s.get(ScreenState, (NODE, "main")).playing_version == 3  # type: ignore[union-attr]
        dropped = {d["reason"]: d["count"] for d in service.dropped_counts(s, Scope(all=True))}
        assert dropped == {"overlap": 1, "empty": 1, "over_long": 1, "future": 1}
        rows = service.report(s, Scope(all=True), ["campaign"])
        assert {r["campaign"]: (r["plays"], r["seconds"]) for r in rows} == {
            None: (1, 10.0), "c1": (2, 30.0), "fence": (1, 1.0)}
        days = {p.msg_id: p.day for p in s.scalars(select(Play))}
        # Days are the store's (Berlin), not UTC's.
        assert sorted(days.values()) == sorted(
            t.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()
            for t in (t0, t0 + timedelta(seconds=15), t0 - timedelta(hours=20), t0 - timedelta(hours=10)))
