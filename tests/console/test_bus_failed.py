"""The bus's failed messages in the console (/console/bus/failed: list, detail, replay and discard
with CSRF) and the REST API (/bus/failed…), and the commands per box on the box page: scoped to
the caller's regions and stores, every replay and discard audited. SQLite and PostgreSQL.

The failed messages are made as the seam makes them: the fake engine (tests/cloud/fake_engine.py)
raises for a scan whose code starts with "poison" until its `poison_fixed` flag is set."""

from __future__ import annotations

import html
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from broker import topics
from broker.envelope import Envelope, MessageType, encode
from broker.payloads import AckData, CommandData, ScanData
from cloud.access.models import AuditEntry
from cloud.bus import downlink
from cloud.bus.ledger import Incoming, store_batch
from cloud.bus.worker import registry_of
from cloud.db import write_transaction
from cloud.engines import EXTRA_ENV
from cloud.models import FailedMessage
from tests.access.conftest import World, sign_in
from tests.cloud import fake_engine, fake_engine_b

EAST, SOUTH = "st0001-k1", "st0003-k1"  # in region east (the regional user's) and south


@dataclass
class Poisoned:
    east: int
    """The failed message of EAST's scan 'poison-east'."""
    south: int
    east_msg: uuid.UUID


def _item(env: Envelope) -> Incoming:
    return Incoming(topics.up(env.node, env.type.value), encode(env), datetime.now(UTC))


def _scan(node: str, seq: int, code: str) -> Envelope:
    return Envelope(type=MessageType.SCAN, node=node, session=1, seq=seq, data=ScanData(code=code, station="s1"))


@pytest.fixture
def poisoned(world: World, monkeypatch: pytest.MonkeyPatch) -> Poisoned:
    fake_engine.create_tables(world.engine)
    monkeypatch.setenv(EXTRA_ENV, "tests.cloud.fake_engine,tests.cloud.fake_engine_b")  # replays find fake-a's handler
    east = _scan(EAST, 1, "poison-east")
    out = store_batch(world.engine, [_item(east), _item(_scan(SOUTH, 1, "poison-south")), _item(_scan(EAST, 2, "good"))],
                      registry_of([fake_engine.ENGINE, fake_engine_b.ENGINE]))
    assert (out.stored, out.handler_failures) == (3, 2)
    with Session(world.engine) as s:
        ids = {node: failed_id for node, failed_id in s.execute(select(FailedMessage.node, FailedMessage.id))}
    return Poisoned(east=ids[EAST], south=ids[SOUTH], east_msg=east.msg_id)


def _fix(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        conn.execute(insert(fake_engine.flags).values(name="poison_fixed", value=1))


def _state(engine: Engine, failed_id: int) -> tuple[str, int, str | None]:
    with Session(engine) as s:
        row = s.get(FailedMessage, failed_id)
        assert row is not None
        return row.status, row.attempts, row.resolved_by


def _fake_a_effects(engine: Engine, msg_id: uuid.UUID) -> int:
    with Session(engine) as s:
        rows = s.execute(select(fake_engine.effects.c.msg_id).where(fake_engine.effects.c.engine == "fake-a")).scalars()
        return Counter(rows)[str(msg_id)]


def _audit(engine: Engine) -> list[tuple[str, str, str, str, dict[str, object] | None]]:
    with Session(engine) as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.action.like("failed.%")).order_by(AuditEntry.id)).all()
        return [(r.action, r.actor, r.object_id, r.via, r.after) for r in rows]


def _text(page: str) -> str:
    """The page as a reader sees it: tags out, entities decoded, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _ids_listed(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/console/bus/failed/(\d+)"', page)]


def _results(page: str) -> str:
    found = re.search(r'<div class="saved" id="replay-results">(.*?)</div>', page, re.S)
    assert found, _text(page)[:2000]
    return html.unescape(found[1])


# -- console ---------------------------------------------------------------------------------------


def test_the_console_lists_shows_replays_and_discards_failed_messages_audited(
    world: World, poisoned: Poisoned, admin: tuple[TestClient, str]
) -> None:
    client, csrf = admin
    listed = client.get("/console/bus/failed")
    assert listed.status_code == 200
    assert sorted(_ids_listed(listed.text)) == sorted([poisoned.east, poisoned.south])
    assert "ValueError: fake-a cannot handle code 'poison-east'" in _text(listed.text)
    assert "Failed (2)" in _text(listed.text)
    assert "2 failed messages" in _text(client.get("/console/fleet").text)

    detail = client.get(f"/console/bus/failed/{poisoned.east}")
    shown = _text(detail.text)
    assert detail.status_code == 200
    assert f"scan {poisoned.east_msg} · session 1, seq 1" in shown and "tests.cloud.fake_engine.on_scan" in shown
    assert '"code": "poison-east"' in shown and "Traceback (most recent call last)" in shown
    assert client.get("/console/bus/failed/999999").status_code == 404

    # No CSRF token, or a forged one: refused before anything is replayed.
    for data in ({"action": "replay", "ids": [poisoned.east]}, {"action": "discard", "ids": [poisoned.east], "csrf_token": "x"}):
        assert client.post("/console/bus/failed", data=data).status_code == 403
    assert _state(world.engine, poisoned.east) == ("failed", 1, None) and _audit(world.engine) == []
    none = client.post("/console/bus/failed", data={"action": "replay", "csrf_token": csrf})
    assert none.status_code == 422 and "Tick at least one message." in none.text

    # Before the fix a replay fails again and says why; after it, it applies once; then it is done.
    again = client.post("/console/bus/failed", data={"action": "replay", "ids": [poisoned.east], "csrf_token": csrf})
    assert _results(again.text) == f"#{poisoned.east}: failed (ValueError: fake-a cannot handle code 'poison-east')"
    assert _state(world.engine, poisoned.east) == ("failed", 2, None)
    _fix(world.engine)
    done = client.post("/console/bus/failed", data={"action": "replay", "ids": [poisoned.east], "csrf_token": csrf})
    assert _results(done.text) == f"#{poisoned.east}: replayed"
    twice = client.post("/console/bus/failed", data={"action": "replay", "ids": [poisoned.east], "csrf_token": csrf})
    assert _results(twice.text).startswith(f"#{poisoned.east}: skipped")
    assert _state(world.engine, poisoned.east) == ("replayed", 2, "user:admin")
    assert _fake_a_effects(world.engine, poisoned.east_msg) == 1

    dropped = client.post("/console/bus/failed", data={"action": "discard", "ids": [poisoned.south], "csrf_token": csrf})
    assert _results(dropped.text) == f"#{poisoned.south}: discarded"
    assert _state(world.engine, poisoned.south) == ("discarded", 1, "user:admin")
    assert "No failed message." in client.get("/console/bus/failed").text
    assert sorted(_ids_listed(client.get("/console/bus/failed", params={"status": ""}).text)) == sorted(
        [poisoned.east, poisoned.south])

    east, south = str(poisoned.east), str(poisoned.south)
    assert _audit(world.engine) == [
        ("failed.replay", "user:admin", east, "console", {"outcome": "failed", "error": "ValueError: fake-a cannot handle code 'poison-east'"}),
        ("failed.replay", "user:admin", east, "console", {"outcome": "replayed", "error": None}),
        ("failed.replay", "user:admin", east, "console", {"outcome": "skipped", "error": f"#{east} is replayed, not failed"}),
        ("failed.discard", "user:admin", south, "console", None),
    ]


def test_a_regional_user_sees_and_touches_only_their_regions_failed_messages(world: World, poisoned: Poisoned) -> None:
    with world.app_client() as client:
        csrf = sign_in(client, "regional")
        listed = client.get("/console/bus/failed")
        assert _ids_listed(listed.text) == [poisoned.east] and "poison-south" not in listed.text
        assert "Failed (1)" in _text(listed.text) and "1 failed message " in _text(client.get("/console/fleet").text)
        other = client.get(f"/console/bus/failed/{poisoned.south}")
        assert other.status_code == 404 and "poison-south" not in other.text
        assert client.get("/console/bus/failed", params={"node": SOUTH}).status_code == 200
        assert _ids_listed(client.get("/console/bus/failed", params={"node": SOUTH}).text) == []

        _fix(world.engine)
        # Another region's id among the ticked ones: answered like an unknown id, the rest replayed.
        both = client.post("/console/bus/failed", data={"action": "replay", "ids": [poisoned.south, poisoned.east],
                                                          "csrf_token": csrf})
        assert both.status_code == 200
        assert _results(both.text) == (f"#{poisoned.south}: unknown (No failed message #{poisoned.south} (unknown, or of "
                                       f"a box outside your scope)) · #{poisoned.east}: replayed")
        gone = client.post("/console/bus/failed", data={"action": "discard", "ids": [poisoned.south], "csrf_token": csrf})
        assert _results(gone.text).startswith(f"#{poisoned.south}: unknown")
    assert _state(world.engine, poisoned.south) == ("failed", 1, None)
    assert _state(world.engine, poisoned.east) == ("replayed", 1, "user:regional")  # attempts count failures
    assert _audit(world.engine) == [
        ("failed.replay", "user:regional", str(poisoned.east), "console", {"outcome": "replayed", "error": None})]


def test_the_box_page_counts_commands_by_state_and_lists_its_failed_messages(world: World, poisoned: Poisoned,
                                                                                admin: tuple[TestClient, str]) -> None:
    with write_transaction(world.engine) as conn:
        sent = [downlink.send(conn, EAST, MessageType.COMMAND, CommandData(name=f"c{i}"), engine="test") for i in range(3)]
    acks = [Envelope(type=MessageType.ACK, node=EAST, session=1, seq=seq, corr=corr, data=data)
            for seq, corr, data in ((3, sent[0], AckData(ok=True)), (4, sent[1], AckData(ok=False, detail="no paper")))]
    assert store_batch(world.engine, [_item(a) for a in acks]).acks == 2

    client, _ = admin
    page = client.get(f"/console/nodes/{EAST}")
    assert page.status_code == 200
    summary = re.search(r'<p class="summary" id="command-summary">(.*?)</p>', page.text, re.S)
    assert summary and summary[1] == "1 delivered · 1 failed · 1 pending"
    rows = re.findall(r"<tr><td>\d+</td><td>command</td><td>test</td>\s*<td><span [^>]*>(\w+)</span>.*?<td>([^<]*)</td></tr>",
                      page.text, re.S)
    assert rows == [("pending", ""), ("failed", "no paper"), ("delivered", "")]
    assert f'href="/console/bus/failed/{poisoned.east}"' in page.text
    assert f'href="/console/bus/failed/{poisoned.south}"' not in page.text  # only this box's
    quiet = client.get(f"/console/nodes/{SOUTH}").text
    assert re.search(r'id="command-summary">none yet<', quiet)

    with world.app_client() as regional:
        sign_in(regional, "regional")
        assert regional.get(f"/console/nodes/{EAST}").status_code == 200
        assert regional.get(f"/console/nodes/{SOUTH}").status_code == 404
        api = {"Authorization": f"Bearer {world.keys['regional']}"}
        assert regional.get(f"/nodes/{EAST}", headers=api).json()["commands"] == {"delivered": 1, "failed": 1, "pending": 1}
        failed = regional.get(f"/nodes/{EAST}/commands", params={"status": "failed"}, headers=api).json()
        assert [(c["msg_id"], c["detail"]) for c in failed] == [(str(sent[1]), "no paper")]
        assert regional.get(f"/nodes/{SOUTH}/commands", headers=api).status_code == 404


# -- REST ------------------------------------------------------------------------------------------


def _key(world: World, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[role]}"}


def test_the_rest_api_lists_shows_replays_and_discards_in_scope_audited(world: World, poisoned: Poisoned) -> None:
    with world.app_client() as client:
        hq, regional, store = _key(world, "hq"), _key(world, "regional"), _key(world, "store")
        everything = client.get("/bus/failed", headers=hq).json()
        assert sorted(f["id"] for f in everything) == sorted([poisoned.east, poisoned.south])
        assert {f["engine"] for f in everything} == {"fake-a"}
        assert [f["id"] for f in client.get("/bus/failed", params={"node": SOUTH}, headers=hq).json()] == [poisoned.south]
        assert client.get("/bus/failed", params={"engine": "fake-b"}, headers=hq).json() == []
        assert client.get("/bus/failed", params={"status": "lost"}, headers=hq).status_code == 422
        detail = client.get(f"/bus/failed/{poisoned.east}", headers=hq).json()
        assert (detail["node"], detail["msg_id"], detail["error"]) == (
            EAST, str(poisoned.east_msg), "ValueError: fake-a cannot handle code 'poison-east'")
        assert detail["message"]["data"]["code"] == "poison-east" and (detail["message"]["session"], detail["message"]["seq"]) == (1, 1)
        assert "Traceback" in detail["detail"]
        missing = client.get("/bus/failed/999999", headers=hq)
        assert missing.status_code == 404 and missing.json()["detail"].startswith("No failed message #999999")

        # The regional user: their region's message only; another region's is unknown to them.
        assert [f["id"] for f in client.get("/bus/failed", headers=regional).json()] == [poisoned.east]
        assert client.get(f"/bus/failed/{poisoned.south}", headers=regional).status_code == 404
        assert client.post(f"/bus/failed/{poisoned.south}/discard", headers=regional).status_code == 404
        _fix(world.engine)
        outcomes = client.post("/bus/failed/replay", json={"ids": [poisoned.south, poisoned.east]}, headers=regional)
        assert outcomes.status_code == 200
        assert outcomes.json() == [
            {"id": poisoned.south, "outcome": "unknown",
             "error": f"No failed message #{poisoned.south} (unknown, or of a box outside your scope)"},
            {"id": poisoned.east, "outcome": "replayed", "error": None},
        ]
        assert _state(world.engine, poisoned.south) == ("failed", 1, None)
        assert client.post("/bus/failed/replay", json={"ids": [poisoned.east]}, headers=regional).json() == [
            {"id": poisoned.east, "outcome": "skipped", "error": f"#{poisoned.east} is replayed, not failed"}]
        assert _fake_a_effects(world.engine, poisoned.east_msg) == 1
        not_failed = client.post(f"/bus/failed/{poisoned.east}/discard", headers=regional)
        assert not_failed.status_code == 422
        assert not_failed.json()["detail"][0]["msg"] == f"#{poisoned.east} is not in the failed state (already replayed or discarded)"

        # A store user reads the fleet but changes nothing; bad bodies are refused by the schema.
        assert [f["id"] for f in client.get("/bus/failed", headers=store).json()] == [poisoned.south]
        assert client.post("/bus/failed/replay", json={"ids": [poisoned.south]}, headers=store).status_code == 403
        assert client.post(f"/bus/failed/{poisoned.south}/discard", headers=store).status_code == 403
        bodies: list[dict[str, object]] = [{"ids": []}, {"ids": [0]}, {"ids": [2**63]}, {"ids": [1], "all": True}]
        for body in bodies:
            assert client.post("/bus/failed/replay", json=body, headers=hq).status_code == 422, body
        assert client.post(f"/bus/failed/{poisoned.south}/discard", headers=hq).status_code == 204
        assert _state(world.engine, poisoned.south) == ("discarded", 1, "key:hq-key")

    east = str(poisoned.east)
    assert _audit(world.engine) == [
        ("failed.replay", "key:regional-key", east, "api", {"outcome": "replayed", "error": None}),
        ("failed.replay", "key:regional-key", east, "api", {"outcome": "skipped", "error": f"#{east} is replayed, not failed"}),
        ("failed.discard", "key:hq-key", str(poisoned.south), "api", None),
    ]
