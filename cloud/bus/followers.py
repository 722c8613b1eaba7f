"""Followers: engines that read the ledger by cursor instead of running in the hot transaction.

Each step reads the next messages after the follower's checkpoint and hands them to it in ONE
transaction that also moves the checkpoint, so its effects happen exactly once. A follower that
raises on a batch gets its messages again one by one; a message that still fails goes to the
failed list and the follower moves on (a poison message stops nobody).

Commit order. Rows must be read in the order their transactions committed, or a row committed
late with a smaller id would be skipped. SQLite has one writer at a time, so `id` order is commit
order. On PostgreSQL, ids are handed out before commit by concurrent transactions; each row also
records its transaction id (`txid`, a column default), and a follower only reads rows whose
transaction is older than every transaction still running (`pg_snapshot_xmin`): those can no
longer change, and anything committed later has a larger txid. Cursor = (txid, id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select, text, tuple_, update

from cloud.bus.dispatch import Call, isolated, record_failure
from cloud.bus.message import Context, Message
from cloud.db import insert_for, write_transaction
from cloud.models import FollowerCursor, IngestedMessage

__all__ = ["FollowerStep", "lag", "step"]

log = logging.getLogger(__name__)

_LEDGER: Table = IngestedMessage.__table__  # type: ignore[assignment]
_CURSORS: Table = FollowerCursor.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class FollowerStep:
    processed: int
    failed: int
    more: bool
    """True when a full batch was read: call again at once."""


def _cursor(conn: Connection, name: str) -> tuple[int, int, int]:
    conn.execute(insert_for(conn, _CURSORS).values(name=name, txid=0, last_id=0, processed=0).on_conflict_do_nothing(index_elements=["name"]))
    stmt = select(_CURSORS.c.txid, _CURSORS.c.last_id, _CURSORS.c.processed).where(_CURSORS.c.name == name)
    if conn.dialect.name == "postgresql":
        # One worker at a time per follower; the others skip this round instead of queueing.
        stmt = stmt.with_for_update(skip_locked=True)
    row = conn.execute(stmt).first()
    if row is None:
        raise _Busy()
    return int(row.txid), int(row.last_id), int(row.processed)


class _Busy(Exception):
    pass


def _next_rows(conn: Connection, txid: int, last_id: int, limit: int) -> Sequence[Any]:
    stmt = select(_LEDGER)
    if conn.dialect.name == "postgresql":
        horizon = text("(pg_snapshot_xmin(pg_current_snapshot())::text::bigint)")
        stmt = stmt.where(tuple_(_LEDGER.c.txid, _LEDGER.c.id) > tuple_(txid, last_id), _LEDGER.c.txid < horizon)
        stmt = stmt.order_by(_LEDGER.c.txid, _LEDGER.c.id)
    else:
        stmt = stmt.where(_LEDGER.c.id > last_id).order_by(_LEDGER.c.id)
    return conn.execute(stmt.limit(limit)).all()


def step(engine: Engine, call: Call, types: frozenset[str] | None, batch: int) -> FollowerStep:
    """Feed the follower its next batch; return what happened."""
    now = datetime.now(UTC)
    if not _new_rows(engine, call.name):
        return FollowerStep(0, 0, False)  # an idle follower must not take the write lock every poll
    try:
        with write_transaction(engine) as conn:
            txid, last_id, processed = _cursor(conn, call.name)
            rows = _next_rows(conn, txid, last_id, batch)
            if not rows:
                return FollowerStep(0, 0, False)
            # Filtered here, not in SQL, so that the cursor moves over rows of other types too.
            messages = [Message.from_row(r) for r in rows if types is None or r.type in types]
            failed = _feed(conn, call, messages, now)
            last = rows[-1]
            conn.execute(
                update(_CURSORS)
                .where(_CURSORS.c.name == call.name)
                .values(txid=last.txid or 0, last_id=last.id, processed=processed + len(messages), updated_at=now)
            )
            return FollowerStep(len(messages), failed, len(rows) == batch)
    except _Busy:
        return FollowerStep(0, 0, False)


def _feed(conn: Connection, call: Call, messages: list[Message], now: datetime) -> int:
    if not messages:
        return 0

    def feed(batch: Sequence[Message]) -> None:
        ctx = Context(conn, call.engine, now)
        try:
            call.fn(ctx, batch)
            ctx.finish()
        except BaseException:
            ctx.discard()
            raise

    return isolated(conn, lambda: feed(messages), messages, lambda m: feed([m]),
                    lambda m, exc: record_failure(conn, call, m, exc, now))


def _unread(conn: Connection, name: str, what: Any) -> Any:
    """`SELECT what FROM ledger` restricted to the rows after follower `name`'s cursor."""
    row = conn.execute(select(_CURSORS.c.txid, _CURSORS.c.last_id).where(_CURSORS.c.name == name)).first()
    txid, last_id = (int(row.txid), int(row.last_id)) if row else (0, 0)
    stmt = select(what).select_from(_LEDGER)
    if conn.dialect.name == "postgresql":
        return stmt.where(tuple_(_LEDGER.c.txid, _LEDGER.c.id) > tuple_(txid, last_id))
    return stmt.where(_LEDGER.c.id > last_id)


def _new_rows(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(_unread(conn, name, _LEDGER.c.id).limit(1)).first() is not None


def lag(engine: Engine, name: str) -> int:
    """Ledger rows not yet read by follower `name` (all rows, whatever types it wants)."""
    with engine.connect() as conn:
        return int(conn.execute(_unread(conn, name, func.count())).scalar_one())
