"""Clerks end to end over a real Mosquitto: the cloud bus (staff engine) sends the store's roster to a
real edge agent on its birth and on every change; clerks sign in on the box's local API with the
cloud unreachable; a wrong PIN counts down and locks, the lock survives an agent restart and grows on
the next one; a manager's PIN reset unlocks; another store's clerk is refused; a roster with forged
hash parameters or for another store is refused with its reason in the command's ack."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import CLERK_ROSTER, CommandData
from cloud.bus import downlink
from cloud.bus.worker import CloudBus
from cloud.db import write_transaction
from cloud.models import DownlinkCommand, Node
from edge.agent import EdgeAgent
from edge.clerks.component import ClerksComponent
from firmware_config import NodeConfig
from tests.access.conftest import World
from tests.cloud.conftest import cloud_settings, running, until, until_db
from tests.conftest import Broker

NODE = "st0001-k1"


def agent(broker: Broker, tmp: Path, password: str, **clerks: Any) -> EdgeAgent:
    cfg = NodeConfig.model_validate({
        "node_id": NODE, "store_id": "st0001", "data_dir": str(tmp / NODE), "telemetry_every_s": 0,
        "broker": {"url": broker.url, "keepalive_s": 5, "password": password},
        "backoff": {"base_s": 0.05, "cap_s": 0.5}, "local_api": {"port": 0}, "clerks": {"enabled": True, **clerks},
    })
    return EdgeAgent(cfg)


def call(box: EdgeAgent, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    assert box.api is not None
    req = urllib.request.Request(box.api.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def acall(box: EdgeAgent, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, box, method, path, body)


def clerks_of(box: EdgeAgent) -> ClerksComponent:
    c = box.component("clerks")
    assert isinstance(c, ClerksComponent)
    return c


def api(world: World, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with world.app_client() as client:
        r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {world.keys['hq']}"})
        assert r.status_code in (200, 201), r.text
        return r.json()


async def with_box(box: EdgeAgent, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(box.run())
    try:
        await asyncio.wait_for(box.ready.wait(), 20)
        await body()
    finally:
        await box.stop()
        await task


def roster_rows(eng: Engine) -> list[DownlinkCommand]:
    with Session(eng) as s:
        return list(s.scalars(select(DownlinkCommand).where(DownlinkCommand.node == NODE,
                                                            DownlinkCommand.key.like("staff-roster:%"))
                              .order_by(DownlinkCommand.id)))


def test_roster_reaches_the_box_and_clerks_sign_in_offline(broker: Broker, world: World, tmp_path: Path) -> None:
    ana = api(world, "POST", "/staff/clerks", {"store": "st0001", "name": "Ana", "staff_number": "A1", "pin": "2580"})
    other = api(world, "POST", "/staff/clerks", {"store": "st0002", "name": "Bo", "pin": "2580"})
    password = broker.add_node(NODE)
    box = agent(broker, tmp_path, password)

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, world.engine), world.engine)
        async with running(bus):
            async def online() -> None:
                clerks = clerks_of(box)
                await until(lambda: clerks.db.version == 1, what="the roster from the birth")
                # The birth said what the box runs (the cloud sends a box only those commands).
                with Session(world.engine) as s:
                    said = s.scalars(select(Node.commands).where(Node.id == NODE)).one()
                assert said is not None and {"ping", "clerk_roster"} <= set(said)
                assert await acall(box, "GET", "/clerks") == (200, {
                    "store": "st0001", "roster_version": 1,
                    "clerks": [{"id": ana["id"], "name": "Ana", "staff_number": "A1"}]})
                await until_db(world.engine, lambda _s: roster_rows(world.engine)[-1].status == "delivered",
                               what="the roster's ack")
                # A change reaches the box as the next version.
                await asyncio.to_thread(api, world, "PATCH", f"/staff/clerks/{ana['id']}", {"name": "Ana Lima"})
                await until(lambda: clerks.db.version == 2, what="roster version 2")
                assert (await acall(box, "GET", "/clerks"))[1]["clerks"][0]["name"] == "Ana Lima"
            await with_box(box, online)

        # The cloud is gone (its bus stopped): the box signs clerks in from its own roster.
        box2 = agent(broker, tmp_path, password)

        async def offline() -> None:
            assert not clerks_of(box2).ctx.cloud_reachable()
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "2580"})
            assert status == 200, body
            assert body["clerk"] == {"id": ana["id"], "name": "Ana Lima", "staff_number": "A1"}
            token = body["token"]
            status, who = await acall(box2, "POST", "/clerks/session", {"token": token})
            assert status == 200 and who["clerk"]["name"] == "Ana Lima" and who["expires_at"] == body["expires_at"]
            # A clerk of another store is not on this store's roster, and the answer says so.
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": other["id"], "pin": "2580"})
            assert status == 404 and body["reason"] == "not_on_roster"
            assert f"clerk {other['id']} is not on the roster of store 'st0001'" in body["error"]
            assert "another store" in body["error"]
            assert await acall(box2, "POST", "/clerks/sign-out", {"token": token}) == (200, {"signed_out": True})
            status, body = await acall(box2, "POST", "/clerks/session", {"token": token})
            assert status == 401 and body["reason"] == "no_session"
            # A malformed PIN is refused before it counts as a try.
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "25a0"})
            assert status == 400 or status == 422, body
            assert clerks_of(box2).db.attempts(ana["id"]).failures == 0
        await with_box(box2, offline)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_lockout_counts_down_survives_a_restart_grows_and_a_pin_reset_clears_it(
    broker: Broker, world: World, tmp_path: Path
) -> None:
    ana = api(world, "POST", "/staff/clerks", {"store": "st0001", "name": "Ana", "pin": "2580"})
    password = broker.add_node(NODE)
    box = agent(broker, tmp_path, password, max_failures=3, lock_s=60, lock_max_s=600)
    locked_until: list[str] = []
    sign_in = {"clerk_id": ana["id"], "pin": "1470"}

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, world.engine), world.engine)
        async with running(bus):
            async def first() -> None:
                await until(lambda: clerks_of(box).db.version == 1, what="the roster")
            await with_box(box, first)

        async def wrong_pins() -> None:
            answers = [await acall(box1, "POST", "/clerks/sign-in", sign_in) for _ in range(3)]
            assert [(s, b["reason"], b.get("tries_left")) for s, b in answers] == [
                (401, "wrong_pin", 2), (401, "wrong_pin", 1), (423, "locked", None)]
            assert answers[0][1]["error"] == "wrong PIN for Ana: 2 tries left before a lockout"
            assert answers[1][1]["error"] == "wrong PIN for Ana: 1 try left before a lockout"
            locked = answers[2][1]
            assert locked["error"].startswith("3 wrong PINs: Ana is locked until ")
            assert 59 <= locked["retry_after_s"] <= 60
            locked_until.append(locked["locked_until"])
            # Locked: even the right PIN is refused (and not checked).
            status, body = await acall(box1, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "2580"})
            assert status == 423 and body["locked_until"] == locked_until[0]
        box1 = agent(broker, tmp_path, password, max_failures=3, lock_s=60, lock_max_s=600)
        await with_box(box1, wrong_pins)

        # A restart of the agent (same data directory) keeps the lock.
        box2 = agent(broker, tmp_path, password, max_failures=3, lock_s=60, lock_max_s=600)

        async def after_restart() -> None:
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "2580"})
            assert status == 423 and body["locked_until"] == locked_until[0], body
            # Past the lock, three more wrong PINs lock again, twice as long.
            clerks = clerks_of(box2)
            real = clerks.clock
            clerks.clock = lambda: real() + 61
            answers = [await acall(box2, "POST", "/clerks/sign-in", sign_in) for _ in range(3)]
            assert [s for s, _b in answers] == [401, 401, 423]
            assert 119 <= answers[2][1]["retry_after_s"] <= 120
            # Past that one too, the right PIN signs in and clears the count.
            clerks.clock = lambda: real() + 61 + 121
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "2580"})
            assert status == 200, body
            assert clerks.db.attempts(ana["id"]).lockouts == 0
            # Locked again; a manager resets the PIN: the new roster clears the lock at once.
            clerks.clock = real
            for _ in range(3):
                await acall(box2, "POST", "/clerks/sign-in", sign_in)
            assert clerks.db.attempts(ana["id"]).locked_until > real()
            bus = CloudBus(await cloud_settings(broker, world.engine), world.engine)
            async with running(bus):
                await asyncio.to_thread(api, world, "POST", f"/staff/clerks/{ana['id']}/pin", {"pin": "3691"})
                await until(lambda: clerks.db.version == 2, what="the roster with the new PIN")
            status, body = await acall(box2, "POST", "/clerks/sign-in", {"clerk_id": ana["id"], "pin": "3691"})
            assert status == 200, body
        await with_box(box2, after_restart)

    asyncio.run(asyncio.wait_for(main(), 180))


def test_forged_or_misrouted_rosters_are_refused_with_the_reason(broker: Broker, world: World, tmp_path: Path) -> None:
    ana = api(world, "POST", "/staff/clerks", {"store": "st0001", "name": "Ana", "pin": "2580"})
    box = agent(broker, tmp_path, broker.add_node(NODE))
    good = roster_rows(world.engine)[-1].data["args"]
    assert good["version"] == 1

    def forge(args: dict[str, Any]) -> str:
        with write_transaction(world.engine) as conn:
            return str(downlink.send(conn, NODE, MessageType.COMMAND, CommandData(name=CLERK_ROSTER, args=args),
                                     engine="test"))

    def row(msg_id: str) -> DownlinkCommand:
        with Session(world.engine) as s:
            return s.scalars(select(DownlinkCommand).where(DownlinkCommand.msg_id == uuid.UUID(msg_id))).one()

    async def main() -> None:
        bus = CloudBus(await cloud_settings(broker, world.engine), world.engine)
        async with running(bus):
            async def body() -> None:
                await until(lambda: clerks_of(box).db.version == 1, what="the roster")
                pin_hash = good["clerks"][0]["pin_hash"]
                costly = pin_hash.replace("scrypt$14$", "scrypt$22$", 1)
                cases = [
                    ({**good, "version": 2, "clerks": [{**good["clerks"][0], "pin_hash": costly}]},
                     f"clerk_roster version 2, clerk {ana['id']}: PIN hash parameter log2 n = 22 is outside 12..16"),
                    ({**good, "version": 3, "clerks": [{**good["clerks"][0], "pin_hash": "md5$abc"}]},
                     "is not 'scrypt$<log2 n>$<r>$<p>$<salt>$<hash>'"),
                    ({**good, "version": 4, "store": "st0002"},
                     "clerk_roster is for store 'st0002', this box is in store 'st0001': refused"),
                    ({**good, "version": 5, "clerks": [good["clerks"][0], good["clerks"][0]]},
                     "clerk ids must be unique"),
                ]
                for args, why in cases:
                    msg_id = await asyncio.to_thread(forge, args)
                    def answered(_s: Session, m: str = msg_id) -> bool:
                        return row(m).status in ("delivered", "failed")
                    await until_db(world.engine, answered, what="the forged roster's ack")
                    r = row(msg_id)
                    assert r.status == "failed" and why in (r.detail or ""), (r.status, r.detail)
                # The version already held is acknowledged and ignored (a fence: it is
                # answered only after everything sent before it).
                msg_id = await asyncio.to_thread(forge, {**good, "version": 1, "clerks": []})
                await until_db(world.engine, lambda _s: row(msg_id).status == "delivered", what="the old roster's ack")
                assert "already held" in (row(msg_id).detail or "")
                assert clerks_of(box).db.version == 1 and len(clerks_of(box).db.clerks()) == 1
                assert clerks_of(box).counts["rosters_refused"] == 4
            await with_box(box, body)

    asyncio.run(asyncio.wait_for(main(), 120))
