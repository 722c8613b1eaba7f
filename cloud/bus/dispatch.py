"""Engine handlers inside the ledger transaction: isolation of failures, the failed list, replays.

The happy path costs no savepoint: an ingest batch first runs whole, every handler of every new
message in its transaction (a handler with a set-based form gets all its messages of the batch in
one call). If one raises, that transaction is rolled back and the batch runs again with the
handlers in one savepoint; if one raises again, that savepoint is rolled back and the calls run
again one by one, each in its own savepoint, so the failing call's effects roll back alone and it
goes to `failed_messages` (engine, handler, error, traceback) while the rest of the batch commits.
A database that does not answer is not a handler's fault: those errors propagate and the whole
batch is retried.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select, update
from sqlalchemy import exc as sa_exc

from broker.envelope import MessageType
from cloud.bus.message import Context, HandlerFn, Message, NodeFacts
from cloud.db import insert_for
from cloud.models import FailedMessage, IngestedMessage

__all__ = ["Call", "Registry", "ReplayResult", "is_database_fault", "isolated", "record_failure", "replay", "run_calls"]

log = logging.getLogger(__name__)

_FAILED: Table = FailedMessage.__table__  # type: ignore[assignment]
_LEDGER: Table = IngestedMessage.__table__  # type: ignore[assignment]


def is_database_fault(exc: BaseException) -> bool:
    """True for errors that say the database (or the link to it) is unavailable, not that this
    message or this handler is wrong: retrying the batch later is then the right answer."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError)


@dataclass(frozen=True, slots=True)
class Call:
    """One handler of one engine, registered for a message type."""

    engine: str
    name: str
    """The handler's qualified name (what the failed list records)."""
    fn: Callable[[Context, Any], None]
    """`fn(ctx, msg)` for a handler, `fn(ctx, [msg, …])` for a follower (see `batched`)."""
    batched: bool = False
    many: Callable[[Context, Sequence[Message]], None] | None = None
    """A handler's set-based form (`cloud.engine.Handler.batch`): `run_calls` gives it all the
    batch's messages of this call at once, and falls back to `fn` one by one if it raises."""


class Registry:
    """Handlers by message type, in the order of the engine list (several engines may handle a type)."""

    def __init__(self, calls: Iterable[tuple[MessageType, Call]] = ()) -> None:
        self._by_type: dict[MessageType, list[Call]] = {}
        self._by_name: dict[tuple[str, str], Call] = {}
        for kind, call in calls:
            self.add(kind, call)

    def add(self, kind: MessageType, call: Call) -> None:
        self._by_type.setdefault(kind, []).append(call)
        self._by_name[(call.engine, call.name)] = call

    def add_named(self, call: Call) -> None:
        """A call that is not bound to a type (a follower): found by name for replays only."""
        self._by_name[(call.engine, call.name)] = call

    def for_type(self, kind: MessageType) -> list[Call]:
        return self._by_type.get(kind, [])

    def find(self, engine: str, name: str) -> Call | None:
        return self._by_name.get((engine, name))

    def __bool__(self) -> bool:
        return bool(self._by_type)


def _invoke(conn: Connection, call: Call, msg: Message, now: datetime, nodes: dict[str, NodeFacts] | None = None) -> None:
    ctx = Context(conn, call.engine, now, {} if nodes is None else nodes)
    try:
        if call.batched:
            call.fn(ctx, [msg])
        else:
            call.fn(ctx, msg)
        ctx.finish()
    except BaseException:
        ctx.discard()
        raise


def _invoke_many(conn: Connection, call: Call, msgs: Sequence[Message], now: datetime,
                 nodes: dict[str, NodeFacts]) -> None:
    assert call.many is not None
    ctx = Context(conn, call.engine, now, nodes)
    try:
        call.many(ctx, msgs)
        ctx.finish()
    except BaseException:
        ctx.discard()
        raise


T = TypeVar("T")


def isolated(
    conn: Connection,
    whole: Callable[[], None],
    parts: Sequence[T],
    one: Callable[[T], None],
    failed: Callable[[T, Exception], None],
) -> int:
    """Run `whole()` in one savepoint; if it raises something that is not the database's fault,
    roll it back and run `one(part)` for each part in a savepoint of its own, handing each failure
    to `failed(part, exc)`. Return how many parts failed. The cheap path for the common case, and
    the guarantee that one bad part takes nothing else with it."""
    try:
        with conn.begin_nested():
            whole()
        return 0
    except Exception as exc:
        if is_database_fault(exc):
            raise
    failures = 0
    for part in parts:
        try:
            with conn.begin_nested():
                one(part)
        except Exception as exc:
            if is_database_fault(exc):
                raise
            failed(part, exc)
            failures += 1
    return failures


def run_calls(conn: Connection, calls: Sequence[tuple[Call, Message]], now: datetime, *, careful: bool = True,
              nodes: dict[str, NodeFacts] | None = None) -> int:
    """Run `calls` in `conn`'s transaction; return how many failed (each recorded in the failed list).

    `careful=False` is the ingest batch's first try (see `cloud.bus.ledger.store_batch`): no
    savepoint, and a call that raises makes the caller roll back the whole transaction. `nodes`:
    what the ledger read of each node of the batch (`Context.store_of`, `Context.runs`)."""
    if not calls:
        return 0
    nodes = {} if nodes is None else nodes

    def whole() -> None:
        grouped: dict[Call, list[Message]] = {}
        for call, msg in calls:
            if call.many is not None:
                grouped.setdefault(call, []).append(msg)
        for call, msg in calls:
            if call.many is None:
                _invoke(conn, call, msg, now, nodes)
                continue
            msgs = grouped.pop(call, None)
            if msgs is not None:  # once, where the first of its messages comes
                _invoke_many(conn, call, msgs, now, nodes)

    if not careful:
        whole()
        return 0
    return isolated(
        conn, whole, calls, lambda c: _invoke(conn, c[0], c[1], now, nodes),
        lambda c, exc: record_failure(conn, c[0], c[1], exc, now),
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def record_failure(conn: Connection, call: Call, msg: Message, exc: BaseException, now: datetime) -> None:
    error = _one_line(exc)
    detail = "".join(traceback.format_exception(exc))[-20_000:]
    log.error("node %r: %s %s failed in %s/%s: %s (kept in the failed list; replay after a fix)",
              msg.node, msg.type.value, msg.msg_id, call.engine, call.name, error)
    stmt = insert_for(conn, _FAILED).values(
        msg_id=msg.msg_id, node=msg.node, type=msg.type.value, engine=call.engine, handler=call.name, error=error,
        detail=detail, first_failed_at=now, last_failed_at=now, attempts=1, status="failed",
    )
    # The same message failing again (a replay, or a follower re-reading it) updates the one entry.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["msg_id", "engine", "handler"],
            set_={"error": error, "detail": detail, "last_failed_at": now, "attempts": _FAILED.c.attempts + 1,
                  "status": "failed", "resolved_at": None, "resolved_by": None},
        )
    )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    id: int
    outcome: str
    """replayed, failed (again: `error`), skipped (not in the failed state any more), or unknown
    (the engine or handler no longer exists)."""
    error: str | None = None


def replay(conn: Connection, failed_id: int, registry: Registry, actor: str, now: datetime | None = None) -> ReplayResult:
    """Run one failed call again in `conn`'s transaction. Exactly once: the entry is claimed by a
    conditional update, so of two concurrent replays only one applies the effects."""
    now = now or datetime.now(UTC)
    row = conn.execute(select(_FAILED).where(_FAILED.c.id == failed_id)).first()
    if row is None:
        return ReplayResult(failed_id, "unknown", f"no failed message #{failed_id}")
    claimed = conn.execute(
        update(_FAILED).where(_FAILED.c.id == failed_id, _FAILED.c.status == "failed").values(status="replaying")
    ).rowcount
    if not claimed:
        return ReplayResult(failed_id, "skipped", f"#{failed_id} is {row.status}, not failed")
    call = registry.find(row.engine, row.handler)
    ledger = conn.execute(select(_LEDGER).where(_LEDGER.c.msg_id == row.msg_id)).first()
    if call is None or ledger is None:
        conn.execute(update(_FAILED).where(_FAILED.c.id == failed_id).values(status="failed"))
        what = f"handler {row.engine}/{row.handler} is not in this version" if call is None else "ledger row is gone"
        return ReplayResult(failed_id, "unknown", what)
    msg = Message.from_row(ledger)
    try:
        with conn.begin_nested():
            _invoke(conn, call, msg, now)
    except Exception as exc:
        if is_database_fault(exc):
            raise
        record_failure(conn, call, msg, exc, now)
        return ReplayResult(failed_id, "failed", _one_line(exc))
    conn.execute(
        update(_FAILED).where(_FAILED.c.id == failed_id)
        .values(status="replayed", resolved_at=now, resolved_by=actor[:108])
    )
    log.info("failed message #%d (%s/%s, %s) replayed by %s", failed_id, row.engine, row.handler, row.msg_id, actor)
    return ReplayResult(failed_id, "replayed")


def discard(conn: Connection, failed_id: int, actor: str, now: datetime | None = None) -> bool:
    """Mark a failed entry as dropped on purpose (it stays listed, with who and when)."""
    result = conn.execute(
        update(_FAILED).where(_FAILED.c.id == failed_id, _FAILED.c.status == "failed")
        .values(status="discarded", resolved_at=now or datetime.now(UTC), resolved_by=actor[:108])
    )
    return bool(result.rowcount)


def calls_for(registry: Registry, messages: Iterable[Message]) -> list[tuple[Call, Message]]:
    return [(call, msg) for msg in messages for call in registry.for_type(msg.type)]


def as_handler_call(engine: str, name: str, fn: HandlerFn) -> Call:
    return Call(engine, name, fn)
