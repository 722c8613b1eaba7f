"""Outbound feeds: the status feed retries until the channel answers 2xx, signed; the ATP feed is
batched per channel, takes the channel's buffer off and counts only the locations it sells from."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select

from cloud.db import write_transaction
from cloud.orders import channels, service, tasks
from tests.orders.conftest import NOW, order, seed, stock

SECRET = "s" * 20


class Post:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.calls.append((url, json.loads(body), headers))
        return self.answers.pop(0) if self.answers else 200


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

    class Cursor(tasks._Cursor):
        last = None

    post = Post([])
    tasks.tick(engine, Cursor, post)  # starts the cursor: nothing pushed for history
    assert post.calls == []
    stock(engine, "sta", {"TEA-1": 4, "RICE-1": 1})
    stock(engine, "stb", {"TEA-1": 3})
    stock(engine, "stc", {"TEA-1": 50})
    done = tasks.tick(engine, Cursor, post)
    assert (done["atp"], done["sent"]) == (1, 1)
    [(url, body, _)] = post.calls
    assert url == "http://feed/atp"
    assert body["items"] == [{"sku": "RICE-1", "available": 0}, {"sku": "TEA-1", "available": 5}]
