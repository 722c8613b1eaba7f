"""Sales channels: signed webhooks in (HMAC over the raw body, per-channel secret, replay window),
a declarative JSON mapping from the channel's order to ours, and signed feeds out (order status,
available to promise), delivered from `orders_feed` with retries.

Signature: `X-Omnishelf-Timestamp: <unix seconds>` and
`X-Omnishelf-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`, the same
scheme both ways. A request older (or newer) than the channel's replay window is refused.

Mapping (JSON): `{"channel_order_id": "/id", "fulfilment": {"path": "/shipping/type", "map": {…}},
"lines": {"path": "/items", "sku": "/sku", "qty": "/quantity", "price": "/unit_price"}, …}` — each
value is a JSON pointer into the channel's body, or `{"path", "map", "default"}`, or
`{"const": value}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, func, select, update

from cloud.db import write_transaction
from cloud.orders import service
from cloud.orders.service import CHANNELS, FEED, OrderInput, Refusal, Refused
from cloud.orders.stock import STOCK

__all__ = ["EXAMPLES", "deliver_due", "map_order", "queue_atp", "sign", "verify"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, window_s: int, timestamp: str | None, signature: str | None, body: bytes,
           now: float | None = None) -> None:
    """Raise `Refused` (bad_signature or stale) unless the request is signed with `secret` and fresh."""
    if not timestamp or not signature:
        raise Refused(Refusal.BAD_SIGNATURE, "X-Omnishelf-Timestamp and X-Omnishelf-Signature headers are required")
    try:
        ts = int(timestamp)
    except ValueError:
        raise Refused(Refusal.BAD_SIGNATURE, f"X-Omnishelf-Timestamp {timestamp[:40]!r} is not unix seconds") from None
    if not hmac.compare_digest(sign(secret, ts, body), signature.strip()):
        raise Refused(Refusal.BAD_SIGNATURE, "signature does not match the body and the channel's secret")
    age = (now if now is not None else time.time()) - ts
    if abs(age) > window_s:
        raise Refused(Refusal.STALE, f"timestamp is {age:.0f} s off: outside the channel's {window_s} s replay window")


_MISSING = object()


def _pointer(doc: Any, path: str) -> Any:
    if path in ("", "/"):
        return doc
    cur = doc
    for raw in path.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _value(doc: Any, spec: Any, field: str) -> Any:
    if isinstance(spec, str):
        return _pointer(doc, spec)
    if isinstance(spec, Mapping):
        if "const" in spec:
            return spec["const"]
        got = _pointer(doc, spec.get("path", ""))
        if got is _MISSING:
            return spec.get("default", _MISSING)
        if "map" in spec:
            table = spec["map"]
            if str(got) not in table:
                raise Refused(Refusal.INVALID, f"{field}: {got!r} at {spec.get('path')} is not one of {sorted(table)}")
            return table[str(got)]
        if spec.get("scale"):
            return float(got) * float(spec["scale"])
        return got
    raise Refused(Refusal.INVALID, f"mapping of {field} is not a pointer or an object")


def map_order(channel: str, mapping: Mapping[str, Any], body: Any) -> OrderInput:
    """The channel's order as ours; raise `Refused` naming the missing or wrong field."""
    out: dict[str, Any] = {"channel": channel}
    for field, spec in mapping.items():
        if field == "lines":
            continue
        v = _value(body, spec, field)
        if v is not _MISSING and v is not None:
            out[field] = v
    lines_spec = mapping.get("lines")
    if not isinstance(lines_spec, Mapping):
        raise Refused(Refusal.INVALID, f"channel {channel}: its mapping has no 'lines'")
    items = _pointer(body, lines_spec.get("path", "/lines"))
    if items is _MISSING or not isinstance(items, list):
        raise Refused(Refusal.MISSING_FIELD, f"lines: nothing at {lines_spec.get('path')} (expected a list)")
    lines = []
    for i, item in enumerate(items, start=1):
        line: dict[str, Any] = {}
        for field, spec in lines_spec.items():
            if field == "path":
                continue
            v = _value(item, spec, f"line {i} {field}")
            if v is not _MISSING and v is not None:
                line[field] = v
        lines.append(line)
    out["lines"] = lines
    if "channel_order_id" in out:
        out["channel_order_id"] = str(out["channel_order_id"])
    try:
        return OrderInput.model_validate(out)
    except ValidationError as exc:
        raise service.refusal_from_validation(exc) from None


def _load_examples() -> dict[str, dict[str, Any]]:
    folder = resources.files("cloud.orders") / "channels"
    out = {}
    for item in folder.iterdir():
        if item.name.endswith(".mapping.json"):
            out[item.name.removesuffix(".mapping.json")] = json.loads(item.read_text())
    return out


EXAMPLES = _load_examples()
"""The example channel mappings shipped in `cloud/orders/channels/` (name → mapping)."""


# -- outbound --------------------------------------------------------------------------------------


def queue_atp(conn: Connection, skus: list[str], now: datetime) -> int:
    """One batched ATP message per channel with an ATP feed, for `skus` (the channel's buffer
    taken off, only from the locations it may sell from)."""
    if not skus:
        return 0
    n = 0
    for ch in conn.execute(select(CHANNELS).where(CHANNELS.c.atp_url.is_not(None))).all():
        stmt = select(STOCK.c.sku, STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.safety).where(STOCK.c.sku.in_(skus))
        if ch.atp_locations:
            stmt = stmt.join(service.LOCS, service.LOCS.c.id == STOCK.c.location_id).where(
                service.LOCS.c.code.in_(ch.atp_locations))
        atp: dict[str, int] = dict.fromkeys(skus, 0)
        for sku, v in conn.execute(stmt):
            atp[sku] += max(0, int(v))
        body = {"at": now.isoformat(), "items": [{"sku": s, "available": max(0, a - ch.atp_buffer)}
                                                  for s, a in sorted(atp.items())]}
        conn.execute(FEED.insert().values(channel=ch.name, kind="atp", body=body, status="pending", attempts=0,
                                          next_attempt_at=now, created_at=now))
        n += 1
    return n


def deliver_due(engine: Engine, post: Any, now: datetime | None = None, limit: int = 50) -> int:
    """Post due feed items (signed) with `post(url, body, headers) -> status code`; retry failures
    with backoff, give up after MAX_ATTEMPTS. Returns items delivered."""
    now = now or datetime.now(UTC)
    with write_transaction(engine) as conn:
        stmt = select(FEED, CHANNELS.c.secret, CHANNELS.c.status_url, CHANNELS.c.atp_url).join(
            CHANNELS, CHANNELS.c.name == FEED.c.channel).where(FEED.c.status == "pending", FEED.c.next_attempt_at <= now
                                                               ).order_by(FEED.c.id).limit(limit)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(of=FEED, skip_locked=True)
        due = conn.execute(stmt).all()
        # A channel sees its messages in order: nothing is posted behind an older one still waiting
        # (backing off after a failure, or being posted by another host).
        waiting = dict(conn.execute(select(FEED.c.channel, func.min(FEED.c.id)).where(
            FEED.c.status == "pending", FEED.c.next_attempt_at > now).group_by(FEED.c.channel)).all())
        due = [d for d in due if d.id < waiting.get(d.channel, d.id + 1)]
        # Claimed for a while: another host does not post them at the same time.
        if due:
            conn.execute(update(FEED).where(FEED.c.id.in_([d.id for d in due]))
                         .values(next_attempt_at=now + timedelta(seconds=30)))
    sent = 0
    failed: set[str] = set()
    for d in due:
        if d.channel in failed:
            continue  # behind a failed one: it waits for it (claimed, then held back by the rule above)
        url = d.status_url if d.kind == "status" else d.atp_url
        raw = json.dumps(d.body, separators=(",", ":"), ensure_ascii=False).encode()
        ts = int(time.time())
        headers = {"Content-Type": "application/json", "X-Omnishelf-Timestamp": str(ts),
                   "X-Omnishelf-Event": d.kind, "X-Omnishelf-Delivery": str(d.id)}
        if d.secret:
            headers["X-Omnishelf-Signature"] = sign(d.secret, ts, raw)
        error = None
        try:
            code = post(url, raw, headers) if url else 0
            if not 200 <= code < 300:
                error = f"HTTP {code} from {url}" if url else "the channel has no URL for this feed"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        with write_transaction(engine) as conn:
            if error is None:
                conn.execute(update(FEED).where(FEED.c.id == d.id).values(status="sent", attempts=d.attempts + 1,
                                                                          last_error=None))
                sent += 1
            else:
                failed.add(d.channel)
                attempts = d.attempts + 1
                delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** attempts)
                conn.execute(update(FEED).where(FEED.c.id == d.id).values(
                    attempts=attempts, last_error=error, status="failed" if attempts >= MAX_ATTEMPTS else "pending",
                    next_attempt_at=now + timedelta(seconds=delay)))
    return sent
