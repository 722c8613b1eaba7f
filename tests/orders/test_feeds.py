"""Outbound feeds: the status feed retries until the channel answers 2xx, signed; the ATP feed is
batched per channel, takes the channel's buffer off and counts only the locations it sells from."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, select

from cloud.db import make_engine, write_transaction
from cloud.orders import channels, service, tasks
from tests.orders.conftest import NOW, order, seed, stock
from tests.system.harness import wait_for

SECRET = "s" * 20


class Post:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.calls.append((url, json.loads(body), headers))
        return self.answers.pop(0) if self.answers else 200


def ticks_until(engine: Engine, post: Post, calls: int, timeout: float = 60.0) -> None:
    """Tick until the channel got `calls` messages in all. On PostgreSQL a movement is read once
    every transaction older than it has ended, in any database of the server (other tests' and
    benchmarks' too, which on a shared machine can take tens of seconds)."""

    def ticked() -> bool:
        tasks.tick(engine, post)
        return len(post.calls) >= calls

    wait_for(ticked, timeout, f"ATP message {calls}: {post.calls}", interval=0.01)


def _items(post: Post) -> list[dict[str, object]]:
    return [item for _, body, _ in post.calls for item in body["items"]]


def test_status_feed_is_signed_and_retried_until_accepted(engine: Engine) -> None:
    seed(engine)
    stock(engine, "stb", {"TEA-1": 2})
    with write_transaction(engine) as conn:
        conn.execute(service.CHANNELS.insert().values(name="web", secret=SECRET, status_url="http://feed/status",
                                                      replay_window_s=300, atp_buffer=0))
        service.intake(conn, order("F1", [("TEA-1", 1)]), actor="test", now=NOW)
    post = Post([500, 200, 200])
    assert channels.deliver_due(engine, post, NOW) == 0  # received: 500; routed waits behind it
    assert channels.deliver_due(engine, post, NOW.replace(minute=0, second=1)) == 0  # still backing off: in order
    later = NOW.replace(hour=13)
    assert channels.deliver_due(engine, post, later) == 2  # received retried, then routed
    assert [(c[1]["state"], c[1]["from"]) for c in post.calls] == [("received", None), ("received", None),
                                                                    ("routed", "received")]
    _url, body, headers = post.calls[0]
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    channels.verify(SECRET, 10**9, headers["X-Omnishelf-Timestamp"], headers["X-Omnishelf-Signature"], raw)
    with engine.connect() as conn:
        assert [r.status for r in conn.execute(select(service.FEED).order_by(service.FEED.c.id))] == ["sent", "sent"]


def test_atp_feed_is_batched_buffered_and_limited_to_the_channels_locations(engine: Engine) -> None:
    seed(engine)
    with write_transaction(engine) as conn:
        conn.execute(service.CHANNELS.insert().values(name="mkt", atp_url="http://feed/atp", replay_window_s=300,
                                                      atp_buffer=2, atp_locations=["sta", "stb"]))

    post = Post([])
    tasks.tick(engine, post)  # starts the cursor: nothing pushed for history
    assert post.calls == []
    stock(engine, "sta", {"TEA-1": 4, "RICE-1": 1})
    stock(engine, "stb", {"TEA-1": 3})
    stock(engine, "stc", {"TEA-1": 50})
    ticks_until(engine, post, 1)
    [(url, body, _)] = post.calls
    assert url == "http://feed/atp"
    assert body["items"] == [{"sku": "RICE-1", "available": 0}, {"sku": "TEA-1", "available": 5}]


def test_atp_cursor_is_durable_neither_resending_nor_skipping(engine: Engine) -> None:
    """The cursor is a row: another worker (or this one after a restart) goes on where it stopped."""
    seed(engine)
    with write_transaction(engine) as conn:
        conn.execute(service.CHANNELS.insert().values(name="mkt", atp_url="http://feed/atp", replay_window_s=300,
                                                      atp_buffer=0))
    post = Post([])
    tasks.tick(engine, post)
    stock(engine, "sta", {"TEA-1": 4})
    ticks_until(engine, post, 1)
    # "Another worker" (a second engine on the same database: no state shared in memory).
    other = make_engine(engine.url)
    try:
        assert tasks.tick(other, post) == {"expired": 0, "queued": 0, "atp": 0, "sent": 0}
        stock(engine, "stb", {"RICE-1": 2})
        ticks_until(other, post, 2)
        stock(engine, "stc", {"SOY-1": 1})  # the fence: had either resent RICE-1, it would come before SOY-1
        ticks_until(engine, post, 3)
    finally:
        other.dispose()
    assert [[i["sku"] for i in c[1]["items"]] for c in post.calls] == [["TEA-1"], ["RICE-1"], ["SOY-1"]]
    with engine.connect() as conn:
        assert conn.execute(select(tasks._CURSORS.c.processed).where(
            tasks._CURSORS.c.name == tasks.ATP_CURSOR)).scalar_one() == 3


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_atp_cursor_waits_for_a_movement_committed_late_with_a_smaller_id(engine: Engine) -> None:
    """PostgreSQL hands out ids before commit: a movement of a transaction still running, with a
    smaller id than one committed after it, is pushed when it commits, not skipped."""
    seed(engine)
    with write_transaction(engine) as conn:
        conn.execute(service.CHANNELS.insert().values(name="mkt", atp_url="http://feed/atp", replay_window_s=300,
                                                      atp_buffer=0))
    post = Post([])
    tasks.tick(engine, post)
    slow = engine.connect()
    try:
        tx = slow.begin()
        loc = service.location_id(slow, "sta")
        service.apply_levels(slow, loc, [service.LevelIn("TEA-1", 7)], source="slow", now=NOW)  # the smaller id
        stock(engine, "stb", {"RICE-1": 2})  # a larger id, committed first
        assert tasks.tick(engine, post)["atp"] == 0  # RICE-1 waits: the slow transaction may still commit below it
        tx.commit()
    finally:
        slow.close()
    # Both once, in one message or two: a transaction of another test may end between the two
    # movements' transaction ids and let the smaller one through first.
    wait_for(lambda: tasks.tick(engine, post) is not None and len(_items(post)) >= 2, 60,
             f"both movements posted: {post.calls}", interval=0.01)
    assert sorted(_items(post), key=lambda i: str(i["sku"])) == [{"sku": "RICE-1", "available": 2},
                                                              {"sku": "TEA-1", "available": 7}]
