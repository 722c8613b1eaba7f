"""The database side of ingest: one transaction per batch, plus the periodic gap check.

Runs in a worker thread (blocking SQLAlchemy Core). Everything is written to be correct with
several workers sharing the subscription: the ledger's unique msg_id decides who stores a message,
and node rows only move forward through conditional UPDATEs (`session <= :new`, `seq_high < :new`,
…), never read-modify-write of a value another worker may have advanced.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from broker import payloads as p
from broker.envelope import SEQUENCED, ContractError, Envelope, MessageType, RejectReason, decode
from cloud.db import write_transaction
from cloud.models import REJECTED_PAYLOAD_MAX, IngestedMessage, Node, RejectedMessage, UtcDateTime

__all__ = ["BatchOutcome", "Incoming", "RebirthDue", "check_gaps", "store_batch"]

log = logging.getLogger(__name__)


_LEDGER: Table = IngestedMessage.__table__  # type: ignore[assignment]
_REJECTS: Table = RejectedMessage.__table__  # type: ignore[assignment]
_NODES: Table = Node.__table__  # type: ignore[assignment]
_WALK_CHUNK = 512
# Births and deaths are in the ledger too, carrying the last seq assigned; they are not part of it.
_SEQUENCED_ROW = _LEDGER.c.type.in_(sorted(t.value for t in SEQUENCED))


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received from the bus."""

    topic: str
    payload: bytes
    received_at: datetime


@dataclass
class BatchOutcome:
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    births: int = 0
    stale_births: int = 0
    deaths: int = 0
    stale_deaths: int = 0
    lost_seqs: int = 0


@dataclass(frozen=True, slots=True)
class RebirthDue:
    node: str
    replay_from: int
    missing_since: datetime


def _insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {conn.dialect.name!r}")


def store_batch(engine: Engine, items: Sequence[Incoming]) -> BatchOutcome:
    """Decode, store and apply a batch in ONE transaction; raise on any database error."""
    out = BatchOutcome()
    rejects: list[dict[str, Any]] = []
    envelopes: dict[Any, tuple[Envelope, Incoming]] = {}
    for item in items:
        try:
            env = decode(item.payload, item.topic)
        except ContractError as exc:
            out.rejected[exc.reason] += 1
            log.warning("rejected message on %r: %s: %s", item.topic, exc.reason.value, exc.detail)
            rejects.append(
                {
                    "received_at": item.received_at,
                    "topic": item.topic[:1024],
                    "reason": exc.reason.value,
                    "detail": exc.detail,
                    "payload": item.payload[:REJECTED_PAYLOAD_MAX],
                }
            )
            continue
        if env.msg_id in envelopes:
            out.duplicates += 1
        else:
            envelopes[env.msg_id] = (env, item)

    with write_transaction(engine) as conn:
        if rejects:
            conn.execute(_REJECTS.insert(), rejects)
        if envelopes:
            rows = [
                {
                    "msg_id": env.msg_id,
                    "node": env.node,
                    "type": env.type.value,
                    "session": env.session,
                    "seq": env.seq,
                    "ts": env.ts,
                    "received_at": item.received_at,
                    "historical": env.historical,
                    "corr": env.corr,
                    "data": env.data.model_dump(mode="json"),
                }
                for env, item in envelopes.values()
            ]
            stmt = _insert(conn, _LEDGER).on_conflict_do_nothing(index_elements=["msg_id"]).returning(_LEDGER.c.msg_id)
            inserted = len(conn.execute(stmt, rows).all())
            out.stored = inserted
            out.duplicates += len(rows) - inserted
            _apply_node_state(conn, list(envelopes.values()), out)
    return out


def _apply_node_state(conn: Connection, messages: list[tuple[Envelope, Incoming]], out: BatchOutcome) -> None:
    seen: dict[str, datetime] = {}
    seq_high: dict[str, int] = {}
    seqs: dict[str, set[int]] = {}
    lifecycle: list[tuple[Envelope, Incoming]] = []
    for env, item in messages:
        if env.node not in seen or item.received_at > seen[env.node]:
            seen[env.node] = item.received_at
        if env.type in SEQUENCED:
            seqs.setdefault(env.node, set()).add(env.seq)
            if env.seq > seq_high.get(env.node, -1):
                seq_high[env.node] = env.seq
        else:
            lifecycle.append((env, item))

    _ensure_nodes(conn, seen)
    with_lifecycle = {env.node for env, _ in lifecycle}
    fast = {
        node
        for node, run in seqs.items()
        if node not in with_lifecycle and _fast_forward(conn, node, min(run), max(run), len(run), seen[node])
    }
    if fast:
        seen = {n: t for n, t in seen.items() if n not in fast}
        seq_high = {n: h for n, h in seq_high.items() if n not in fast}
        if not seen:
            return
    conn.execute(
        update(_NODES)
        .where(_NODES.c.id == bindparam("b_id"))
        .where(or_(_NODES.c.last_seen.is_(None), _NODES.c.last_seen < bindparam("b_seen")))
        .values(last_seen=bindparam("b_seen")),
        [{"b_id": node, "b_seen": when} for node, when in seen.items()],
    )

    # Applied in arrival order; the session conditions make the order of workers irrelevant.
    births: dict[str, p.BirthData] = {}
    for env, item in lifecycle:
        if env.type is MessageType.BIRTH:
            if _birth(conn, env, item):
                out.births += 1
                births[env.node] = env.data  # type: ignore[assignment]
            else:
                out.stale_births += 1
        elif _death(conn, env, item):
            out.deaths += 1
        else:
            out.stale_deaths += 1

    for node, birth in births.items():
        # The box has assigned up to last_seq; all but its `pending` ones reached the broker.
        announced = birth.last_seq - birth.pending
        if announced > seq_high.get(node, 0):
            seq_high[node] = announced
    if seq_high:
        _raise_seq_high(conn, seq_high)

    touched = set(seq_high) | set(births)
    contig = _advance(conn, touched)
    for node, birth in births.items():
        if birth.oldest_seq is not None and birth.oldest_seq - 1 > contig.get(node, 0):
            out.lost_seqs += _write_off(conn, node, contig[node], birth.oldest_seq)
            _advance(conn, {node})
    _mark_gaps(conn, touched, max(seen.values()))


def _ensure_nodes(conn: Connection, nodes: Iterable[str]) -> None:
    """Register unknown nodes and lock the batch's node rows (see `_lock_nodes`)."""
    wanted = set(nodes)
    known = set(_lock_nodes(conn, wanted))
    missing = sorted(wanted - known)
    if missing:
        # Rows this transaction inserts are locked by it until the commit.
        stmt = _insert(conn, _NODES).on_conflict_do_nothing(index_elements=["id"]).returning(_NODES.c.id)
        for node in conn.execute(stmt, [{"id": n} for n in missing]).scalars():
            log.info("first message from unknown node %r: registered it (no store assigned)", node)


# Built once: constructing SQLAlchemy statements per batch cost as much as executing them.
_FAST_FORWARD = (
    update(_NODES)
    .where(
        _NODES.c.id == bindparam("b_id"),
        _NODES.c.seq_contig == bindparam("b_prev"),
        _NODES.c.seq_high <= bindparam("b_last"),
    )
    .values(
        seq_contig=bindparam("b_last"),
        seq_high=bindparam("b_last"),
        gap_since=null(),
        last_seen=case(
            (
                or_(_NODES.c.last_seen.is_(None), _NODES.c.last_seen < bindparam("b_seen", type_=UtcDateTime())),
                bindparam("b_seen", type_=UtcDateTime()),
            ),
            else_=_NODES.c.last_seen,
        ),
    )
)


def _fast_forward(conn: Connection, node: str, first: int, last: int, count: int, seen: datetime) -> bool:
    """The common case in one statement: the batch holds a node's next seqs as one unbroken run
    and no gap is open, so its contiguous seq simply moves to the run's end. Returns False (nothing
    changed) when that does not hold; the general path then works it out."""
    if last - first + 1 != count:
        return False
    result = conn.execute(_FAST_FORWARD, {"b_id": node, "b_prev": first - 1, "b_last": last, "b_seen": seen})
    return bool(result.rowcount)


def _lock_nodes(conn: Connection, nodes: Iterable[str]) -> list[str]:
    """Lock node rows in one fixed order before updating them: two workers (or a batch and the gap
    check) that touch the same nodes then queue behind each other instead of deadlocking.
    PostgreSQL only; SQLite has a single writer and ignores FOR UPDATE. Returns the ids that exist."""
    stmt = select(_NODES.c.id).where(_NODES.c.id.in_(sorted(nodes))).order_by(_NODES.c.id).with_for_update()
    return list(conn.execute(stmt).scalars())


def _birth(conn: Connection, env: Envelope, item: Incoming) -> bool:
    data: p.BirthData = env.data  # type: ignore[assignment]
    result = conn.execute(
        update(_NODES)
        .where(_NODES.c.id == env.node)
        .where(or_(_NODES.c.session.is_(None), _NODES.c.session <= env.session))
        .values(
            online=True,
            session=env.session,
            software_version=data.software_version,
            config_hash=data.config_hash,
            devices=[d.model_dump(mode="json") for d in data.devices],
            last_birth_at=item.received_at,
        )
    )
    if result.rowcount:
        log.info("node %r born: session %d, software %s", env.node, env.session, data.software_version)
        return True
    log.info("node %r: ignored birth of older session %d", env.node, env.session)
    return False


def _death(conn: Connection, env: Envelope, item: Incoming) -> bool:
    result = conn.execute(
        update(_NODES)
        .where(_NODES.c.id == env.node, _NODES.c.session == env.session)
        .values(online=False, last_death_at=item.received_at)
    )
    if result.rowcount:
        log.info("node %r died: session %d", env.node, env.session)
        return True
    log.info("node %r: ignored stale death of session %d (not its current session)", env.node, env.session)
    return False


def _raise_seq_high(conn: Connection, seq_high: dict[str, int]) -> None:
    conn.execute(
        update(_NODES)
        .where(_NODES.c.id == bindparam("b_id"), _NODES.c.seq_high < bindparam("b_high"))
        .values(seq_high=bindparam("b_high")),
        [{"b_id": node, "b_high": high} for node, high in seq_high.items()],
    )


def _advance(conn: Connection, nodes: Iterable[str]) -> dict[str, int]:
    """Move each node's seq_contig over the seqs stored right above it; return the new values."""
    wanted = list(nodes)
    if not wanted:
        return {}
    state = conn.execute(
        select(_NODES.c.id, _NODES.c.seq_contig, _NODES.c.seq_high).where(_NODES.c.id.in_(wanted))
    ).all()
    result: dict[str, int] = {}
    for node, start, high in state:
        contig = start
        if high > contig:
            contig = _walk(conn, node, contig)
        if contig > start:
            conn.execute(
                update(_NODES)
                .where(_NODES.c.id == node, _NODES.c.seq_contig < contig)
                .values(seq_contig=contig, seq_high=_at_least(_NODES.c.seq_high, contig))
            )
        result[node] = contig
    return result


def _walk(conn: Connection, node: str, contig: int) -> int:
    # Index range scan on (node, seq); small first probe because an open gap stops at the first row.
    limit = 64
    while True:
        seqs = conn.execute(
            select(_LEDGER.c.seq)
            .where(_LEDGER.c.node == node, _LEDGER.c.seq > contig, _SEQUENCED_ROW)
            .order_by(_LEDGER.c.seq)
            .limit(limit)
        ).scalars()
        count = 0
        for seq in seqs:
            count += 1
            if seq == contig + 1:
                contig = seq
            elif seq > contig + 1:
                return contig
            # seq == contig: the same seq stored twice under two msg_ids; harmless.
        if count < limit:
            return contig
        limit = _WALK_CHUNK


def _write_off(conn: Connection, node: str, contig: int, oldest_seq: int) -> int:
    """Record seqs contig+1 .. oldest_seq-1 the box can no longer resend as lost; return how many."""
    last = oldest_seq - 1
    stored = conn.execute(
        select(func.count(func.distinct(_LEDGER.c.seq))).where(
            _LEDGER.c.node == node, _LEDGER.c.seq > contig, _LEDGER.c.seq <= last, _SEQUENCED_ROW
        )
    ).scalar_one()
    lost = last - contig - stored
    result = conn.execute(
        update(_NODES)
        .where(_NODES.c.id == node, _NODES.c.seq_contig == contig)
        .values(
            seq_contig=last,
            lost_seqs=_NODES.c.lost_seqs + lost,
            seq_high=_at_least(_NODES.c.seq_high, last),
        )
    )
    if not result.rowcount:
        return 0  # another worker moved seq_contig meanwhile; its view wins
    if lost:
        log.error(
            "node %r: %d message(s) between seq %d and %d are unrecoverable (the box now holds only "
            "seq >= %d); recorded as lost",
            node, lost, contig + 1, last, oldest_seq,
        )
    return lost


def _at_least(column: ColumnElement[int], value: int) -> ColumnElement[int]:
    # max(column, value) spelled portably (SQLite has max(), PostgreSQL greatest()).
    return case((column < value, value), else_=column)


def _mark_gaps(conn: Connection, nodes: Iterable[str], now: datetime) -> None:
    wanted = list(nodes)
    if not wanted:
        return
    conn.execute(
        update(_NODES)
        .where(_NODES.c.id.in_(wanted))
        .values(
            gap_since=case(
                (_NODES.c.seq_high > _NODES.c.seq_contig, func.coalesce(_NODES.c.gap_since, literal(now, UtcDateTime()))),
                else_=null(),
            )
        )
    )


def check_gaps(engine: Engine, grace: float, now: datetime) -> list[RebirthDue]:
    """Advance open gaps, and claim a rebirth for each gap open longer than `grace` seconds.

    A claim sets last_rebirth_at conditionally, so of several workers only one sends it, and at
    most once per grace period per node.
    """
    with engine.connect() as conn:
        open_nodes = list(conn.execute(select(_NODES.c.id).where(_NODES.c.seq_high > _NODES.c.seq_contig)).scalars())
    if not open_nodes:
        return []
    limit = now - timedelta(seconds=grace)
    due: list[RebirthDue] = []
    with write_transaction(engine) as conn:
        _lock_nodes(conn, open_nodes)
        _advance(conn, open_nodes)
        _mark_gaps(conn, open_nodes, now)
        overdue = conn.execute(
            select(_NODES.c.id, _NODES.c.seq_contig, _NODES.c.gap_since).where(
                _NODES.c.id.in_(open_nodes),
                _NODES.c.gap_since <= limit,
                or_(_NODES.c.last_rebirth_at.is_(None), _NODES.c.last_rebirth_at <= limit),
            )
        ).all()
        for node, contig, since in overdue:
            claimed = conn.execute(
                update(_NODES)
                .where(
                    _NODES.c.id == node,
                    _NODES.c.seq_contig == contig,
                    or_(_NODES.c.last_rebirth_at.is_(None), _NODES.c.last_rebirth_at <= limit),
                )
                .values(last_rebirth_at=now)
            )
            if claimed.rowcount:
                due.append(RebirthDue(node, contig + 1, since))
    return due
