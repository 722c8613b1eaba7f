"""The ledger: one transaction per batch that stores messages, applies them, and runs the engines.

Runs in a worker thread (blocking SQLAlchemy). Everything is written to be correct with several
workers sharing the subscription: the ledger's unique msg_id decides who stores a message (and so
who runs its handlers), and node rows only move forward through conditional UPDATEs (`session <=
:new`, `seq_high < :new`, …), never read-modify-write of a value another worker may have advanced.

One message can never stop the others: whatever cannot be decoded is rejected with its reason; a
message the database refuses for its content (not for being unavailable) is isolated in a
savepoint and rejected; a handler that raises is rolled back alone and goes to the failed list.
Only a database that does not answer makes a batch fail, and then it is redelivered whole.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    TextClause,
    bindparam,
    case,
    func,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from broker import payloads as p
from broker import topics
from broker.envelope import SEQUENCED, ContractError, Envelope, MessageType, decode
from cloud.bus import downlink
from cloud.bus.dispatch import Registry, calls_for, is_database_fault, isolated, run_calls
from cloud.bus.message import Message, NodeFacts
from cloud.db import insert_for, write_transaction
from cloud.models import REJECTED_PAYLOAD_MAX, IngestedMessage, Node, RejectedMessage, UtcDateTime

__all__ = ["BatchOutcome", "GapPolicy", "Incoming", "IngestReject", "RebirthDue", "check_gaps", "store_batch",
           "store_one_by_one"]

log = logging.getLogger(__name__)


_LEDGER: Table = IngestedMessage.__table__  # type: ignore[assignment]
_REJECTS: Table = RejectedMessage.__table__  # type: ignore[assignment]
_NODES: Table = Node.__table__  # type: ignore[assignment]
_WALK_CHUNK = 512
# Births and deaths are in the ledger too, carrying the last seq assigned; they are not part of it.
_SEQUENCED_ROW = _LEDGER.c.type.in_(sorted(t.value for t in SEQUENCED))


class IngestReject(enum.StrEnum):
    """Why the cloud kept a message aside, beyond the contract's `RejectReason`s."""

    UNEXPECTED = "unexpected"
    """Decoding raised something other than a contract error (a bug on our side): kept, not lost."""
    STORE_FAILED = "store_failed"
    """The database refused this one message for its content; the rest of its batch was stored."""
    CONFLICT = "conflict"
    """A msg_id already stored with different content: a bug on a box, or a forgery. The stored
    one stands; this copy is kept for inspection."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received from the bus."""

    topic: str
    payload: bytes
    received_at: datetime


@dataclass
class BatchOutcome:
    publish: list[downlink.Claimed] = field(default_factory=list)
    """Commands this batch's transaction wrote (and committed) for its worker to publish now."""
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    """By reason: the contract's `RejectReason` values and `IngestReject`'s."""
    births: int = 0
    stale_births: int = 0
    deaths: int = 0
    stale_deaths: int = 0
    lost_seqs: int = 0
    conflicts: int = 0
    handler_failures: int = 0
    acks: int = 0
    """Box acknowledgements that matched a command in the downlink."""
    wake_relay: bool = False
    """Commands were written, or a box came online: the relay should look now."""
    node_state_errors: int = 0


@dataclass(frozen=True, slots=True)
class RebirthDue:
    node: str
    replay_from: int
    missing_since: datetime
    attempt: int


def _topic_node(topic: str) -> str | None:
    try:
        return topics.parse(topic).node
    except topics.TopicError:
        return None


def _reject_row(item: Incoming, reason: str, detail: str) -> dict[str, Any]:
    return {
        "received_at": item.received_at,
        "topic": item.topic[:1024],
        "node": _topic_node(item.topic),
        "reason": reason,
        "detail": detail[:10_000],
        "payload": item.payload[:REJECTED_PAYLOAD_MAX],
    }


def _decode_all(items: Sequence[Incoming], out: BatchOutcome) -> tuple[list[dict[str, Any]], dict[Any, tuple[Envelope, Incoming]]]:
    rejects: list[dict[str, Any]] = []
    envelopes: dict[Any, tuple[Envelope, Incoming]] = {}
    for item in items:
        try:
            env = decode(item.payload, item.topic)
        except ContractError as exc:
            out.rejected[exc.reason.value] += 1
            log.warning("rejected message on %r: %s: %s", item.topic, exc.reason.value, exc.detail[:300])
            rejects.append(_reject_row(item, exc.reason.value, exc.detail))
            continue
        except Exception as exc:  # decode promises ContractError only; a bug must not wedge ingest
            out.rejected[IngestReject.UNEXPECTED.value] += 1
            log.exception("decoding a message on %r raised %s; kept aside", item.topic, type(exc).__name__)
            rejects.append(_reject_row(item, IngestReject.UNEXPECTED.value, f"{type(exc).__name__}: {exc}"))
            continue
        if env.msg_id in envelopes:
            out.duplicates += 1
        else:
            envelopes[env.msg_id] = (env, item)
    return rejects, envelopes


def _ledger_row(env: Envelope, item: Incoming) -> dict[str, Any]:
    return {
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


def _insert_ledger(
    conn: Connection, envelopes: dict[Any, tuple[Envelope, Incoming]], out: BatchOutcome, careful: bool,
    done: _Done,
) -> set[Any]:
    """Insert what is new; return the msg_ids this transaction inserted. Carefully, a row the
    database refuses for its content is retried alone and rejected, so it cannot take its batch
    down with it; on the first try, it makes the batch start over carefully. What the same
    statement did for a batch of one goes into `done`."""
    stmt = _INSERT_LEDGER[conn.dialect.name]
    pairs = [(_ledger_row(env, item), item) for env, item in envelopes.values()]
    inserted: set[Any] = set()
    if not careful:
        rows = [row for row, _ in pairs]
        if conn.dialect.name == "postgresql":
            if (run := _one_run(envelopes)) is not None:
                node, last, count, seen = run
                forward = {"ff_node": node, "ff_last": last, "ff_count": count, "ff_seen": _utc(seen)}
                env = next(iter(envelopes.values()))[0]
                ack = env.data if len(rows) == 1 and isinstance(env.data, p.AckData) else None
                if len(rows) > 1:
                    found = conn.execute(_PG_INSERT_RUN_FORWARD, {**_pg_columns(rows), **forward}).one()
                elif ack is None or env.corr is None:
                    found = conn.execute(_PG_INSERT_ONE_FORWARD, {**_pg_row(rows[0]), **forward}).one()
                else:
                    found = conn.execute(_PG_INSERT_ONE_FORWARD_ACK, {
                        **_pg_row(rows[0]), **forward,
                        **downlink.ack_one_params(env.node, env.corr, ack, pairs[0][1].received_at)}).one()
                inserted.update(found.inserted)
                if inserted:
                    done.nodes[node] = NodeFacts.of(found.store_id, found.commands) if found.hit else None
                    if ack is not None and env.corr is not None and found.acked:
                        done.acked[(env.node, env.corr)] = found.engine
            elif len(rows) == 1:
                inserted.update(conn.execute(_PG_INSERT_ONE, _pg_row(rows[0])).scalars())
            else:
                inserted.update(conn.execute(_PG_INSERT_LEDGER, _pg_columns(rows)).scalars())
        else:
            inserted.update(conn.execute(stmt, rows).scalars())
        return inserted

    def one(pair: tuple[dict[str, Any], Incoming]) -> None:
        inserted.update(conn.execute(stmt, [pair[0]]).scalars())

    def refused(pair: tuple[dict[str, Any], Incoming], exc: Exception) -> None:
        row, item = pair
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:1000]
        out.rejected[IngestReject.STORE_FAILED.value] += 1
        log.error("node %r: message %s refused by the database (%s); kept aside", row["node"], row["msg_id"], detail)
        conn.execute(_REJECTS.insert(), [_reject_row(item, IngestReject.STORE_FAILED.value, detail)])

    def whole() -> None:
        inserted.update(conn.execute(stmt, [row for row, _ in pairs]).scalars())

    if isolated(conn, whole, pairs, one, refused):
        log.warning("the database refused %d of a batch of %d messages; the rest is stored",
                    out.rejected[IngestReject.STORE_FAILED.value], len(pairs))
    return inserted


_CONTENT = ("type", "node", "session", "seq", "ts", "corr", "data")
"""What makes a message the same message (not `historical`, which a resend sets, nor the receive time)."""


def _check_conflicts(conn: Connection, duplicates: list[tuple[Envelope, Incoming]], out: BatchOutcome) -> None:
    """A redelivery repeats a message; a different message under a stored msg_id is a conflict."""
    stored = {
        row.msg_id: row
        for row in conn.execute(
            select(*(_LEDGER.c[c] for c in ("msg_id", *_CONTENT))).where(
                _LEDGER.c.msg_id.in_([env.msg_id for env, _ in duplicates])
            )
        )
    }
    rejects = []
    for env, item in duplicates:
        row = stored.get(env.msg_id)
        if row is None:
            continue  # stored by a concurrent transaction of another worker and not visible yet
        new = _ledger_row(env, item)
        diff = [c for c in _CONTENT if row._mapping[c] != new[c]]
        if diff:
            out.conflicts += 1
            out.rejected[IngestReject.CONFLICT.value] += 1
            log.warning("node %r: msg_id %s arrived again with different %s; the stored message stands",
                        env.node, env.msg_id, ", ".join(diff))
            rejects.append(_reject_row(item, IngestReject.CONFLICT.value,
                                       f"msg_id {env.msg_id} is already stored with different {', '.join(diff)}"))
    if rejects:
        conn.execute(_REJECTS.insert(), rejects)


def store_batch(engine: Engine, items: Sequence[Incoming], registry: Registry | None = None) -> BatchOutcome:
    """Decode, store and apply a batch, run the engines' handlers, in ONE transaction.

    First without savepoints: nearly every batch goes through whole, and its savepoints were as
    many statements (round trips, on PostgreSQL) as its work. If anything but the database's
    availability fails, that transaction is rolled back whole (nothing of it happened: no ledger
    row, no effect, no command) and the batch runs again with a savepoint around each step that
    may fail, which isolates the failure as before.

    Raises only when the database is unavailable (or on a bug outside the isolated steps: the
    caller then retries message by message with `store_one_by_one`)."""
    decoded = BatchOutcome()
    rejects, envelopes = _decode_all(items, decoded)
    try:
        return _store(engine, rejects, envelopes, registry, _copy(decoded), careful=False)
    except Exception as exc:
        if is_database_fault(exc):
            raise
        log.debug("a batch of %d failed whole (%s: %s); storing it again step by step", len(items),
                  type(exc).__name__, exc)
    return _store(engine, rejects, envelopes, registry, decoded, careful=True)


def _copy(outcome: BatchOutcome) -> BatchOutcome:
    return BatchOutcome(rejected=Counter(outcome.rejected), duplicates=outcome.duplicates)


def _store(
    engine: Engine,
    rejects: list[dict[str, Any]],
    envelopes: dict[Any, tuple[Envelope, Incoming]],
    registry: Registry | None,
    out: BatchOutcome,
    *,
    careful: bool,
) -> BatchOutcome:
    with write_transaction(engine) as conn:
        if rejects:
            conn.execute(_REJECTS.insert(), rejects)
        if envelopes:
            done = _Done()
            inserted = _insert_ledger(conn, envelopes, out, careful, done)
            out.stored = len(inserted)
            new = [(env, item) for msg_id, (env, item) in envelopes.items() if msg_id in inserted]
            dups = [(env, item) for msg_id, (env, item) in envelopes.items() if msg_id not in inserted]
            out.duplicates += len(dups)
            if dups:
                _check_conflicts(conn, dups, out)
            if new:
                # The batch's boxes are connected: what the handlers send them goes out right
                # after this commit, from this worker, with no claim of its own.
                with downlink.publish_after_commit(conn, {env.node for env, _ in new}) as hand:
                    _apply(conn, new, registry, out, careful, done)
                out.publish = hand.claimed
    # Other commands written by handlers wake the relay by themselves (after this commit); a box
    # that came online may have commands waiting for it.
    out.wake_relay = out.births > 0
    return out


def _apply(conn: Connection, new: list[tuple[Envelope, Incoming]], registry: Registry | None, out: BatchOutcome,
           careful: bool, done: _Done | None = None) -> None:
    now = max(item.received_at for _, item in new)
    nodes: dict[str, NodeFacts] = {}
    if not careful:
        nodes = _apply_node_state(conn, new, out, done.nodes if done else None)
    else:
        try:
            with conn.begin_nested():
                nodes = _apply_node_state(conn, new, out)
        except Exception as exc:
            if is_database_fault(exc):
                raise
            # The ledger rows stay: a later batch or the gap check walks the ledger and catches up.
            out.node_state_errors += 1
            log.exception("applying node state for a batch of %d failed; the messages are stored", len(new))
    messages = [Message.from_envelope(env, item.received_at) for env, item in new]
    acks = [(msg.node, msg.corr, msg.data) for msg in messages if isinstance(msg.data, p.AckData)]
    engines: dict[tuple[str, Any], str] = {}
    if acks:
        if done is not None and done.acked:
            applied = downlink.AcksApplied(len(done.acked), done.acked)  # closed by the ledger's statement
        else:
            applied = downlink.apply_acks(conn, acks, now)
        out.acks += applied.matched
        engines = applied.engines
    if registry:
        calls = calls_for(registry, messages)
        if acks:
            # An ack concerns the engine that sent the command it answers, and no other.
            calls = [(call, msg) for call, msg in calls
                     if msg.type is not MessageType.ACK or engines.get((msg.node, msg.corr)) == call.engine]
        out.handler_failures += run_calls(conn, calls, now, careful=careful, nodes=nodes)


def store_one_by_one(engine: Engine, items: Sequence[Incoming], registry: Registry | None = None) -> BatchOutcome:
    """The last resort after `store_batch` raised something that is not the database's fault: each
    message in its own transaction; one that still fails is kept aside as `store_failed`."""
    total = BatchOutcome()
    for item in items:
        try:
            one = store_batch(engine, [item], registry)
        except Exception as exc:
            if is_database_fault(exc):
                raise
            log.exception("message on %r could not be stored; kept aside", item.topic)
            with write_transaction(engine) as conn:
                conn.execute(_REJECTS.insert(), [_reject_row(item, IngestReject.STORE_FAILED.value,
                                                             f"{type(exc).__name__}: {exc}")])
            total.rejected[IngestReject.STORE_FAILED.value] += 1
            continue
        _add(total, one)
    return total


def _add(total: BatchOutcome, one: BatchOutcome) -> None:
    for name in ("stored", "duplicates", "births", "stale_births", "deaths", "stale_deaths", "lost_seqs", "conflicts",
                 "handler_failures", "acks", "node_state_errors"):
        setattr(total, name, getattr(total, name) + getattr(one, name))
    total.rejected.update(one.rejected)
    total.publish.extend(one.publish)
    total.wake_relay = total.wake_relay or one.wake_relay


def _apply_node_state(conn: Connection, messages: list[tuple[Envelope, Incoming]],
                      out: BatchOutcome, forwarded: dict[str, NodeFacts | None] | None = None) -> dict[str, NodeFacts]:
    """Apply the batch to its nodes' rows (seen, sessions, seqs, gaps), each locked until the
    commit; return what the handlers need of each node (its store, its commands), as read under
    that lock. `forwarded`: nodes whose fast-forward the ledger's insert already tried."""
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

    # The common case first, node by node in id order: the fast-forward's UPDATE locks the row
    # as `_lock_nodes` would, and stopping at the first node it does not fit keeps every lock of
    # this transaction in id order (the rest are locked by `_ensure_nodes`, all after it).
    with_lifecycle = {env.node for env, _ in lifecycle}
    facts: dict[str, NodeFacts] = {}
    for node in sorted(seen):
        run = seqs.get(node)
        if run is None or node in with_lifecycle:
            break
        if forwarded is not None and node in forwarded:
            found = forwarded[node]
        else:
            found = _fast_forward(conn, node, min(run), max(run), len(run), seen[node])
        if found is None:
            break
        facts[node] = found
    if facts:
        seen = {n: t for n, t in seen.items() if n not in facts}
        seq_high = {n: h for n, h in seq_high.items() if n not in facts}
        if not seen:
            return facts
    facts.update(_ensure_nodes(conn, seen))
    conn.execute(_LAST_SEEN, [{"b_id": node, "b_seen": when} for node, when in seen.items()])

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
    return facts


# Built once: constructing SQLAlchemy statements per batch cost as much as executing them.
_INSERT_LEDGER = {
    name: dialect_insert(_LEDGER).on_conflict_do_nothing(index_elements=["msg_id"]).returning(_LEDGER.c.msg_id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_PG_COLUMNS = ("msg_id", "node", "type", "session", "seq", "ts", "received_at", "historical", "corr", "data")
# PostgreSQL: the batch as one array per column, so the statement's text is the same for every
# batch. A multi-row VALUES (SQLAlchemy's insertmanyvalues) has ten placeholders a row, and
# psycopg parsed that text again for each batch: a third of a 500-message batch's CPU (cProfile).
_PG_ROWS = (
    "SELECT * FROM unnest("
    "CAST(:msg_id AS uuid[]), CAST(:node AS varchar[]), CAST(:type AS varchar[]), CAST(:session AS bigint[]), "
    "CAST(:seq AS bigint[]), CAST(:ts AS timestamptz[]), CAST(:received_at AS timestamptz[]), "
    "CAST(:historical AS boolean[]), CAST(:corr AS uuid[]), CAST(:data AS json[]))"
)
_PG_INSERT_LEDGER = text(
    f"INSERT INTO ingested_messages ({', '.join(_PG_COLUMNS)}) {_PG_ROWS} ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id"
)


# A batch of one message (most of them while the bus is quiet, when each one's latency shows): its
# row as plain values. psycopg dumps each array above in Python, element type looked up per array;
# for one row that cost twice the statement's own CPU (measured: 0.5 → 0.25 ms a batch).
_PG_INSERT_ONE = text(
    f"INSERT INTO ingested_messages ({', '.join(_PG_COLUMNS)}) VALUES ({', '.join(':' + c for c in _PG_COLUMNS)}) "
    "ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id"
)


# A batch of one box's sequenced messages whose seqs run on without a hole (a quiet bus's batch of
# one, a busy box's run): their ledger rows and the node's fast-forward (`_FAST_FORWARD`, the same
# conditions and values) in one statement, and for an ack alone the closing of its command too
# (`downlink.PG_ACK_ONE`): one or two round trips fewer a batch. The node moves only if every row
# was new, and the command closes only if the ack was; node, then command, as the main query reads
# `ff`, then `ack` (the order of a batch that takes them one statement at a time). `hit` is null
# when the fast-forward did not apply (a gap, an old seq, a redelivery): the general path works the
# node out; `acked` is null when the ack closed nothing (`apply_acks` then looks up its engine).
def _pg_insert_forward(rows: str, *, ack: bool) -> TextClause:
    acks = (f", ack AS ({downlink.PG_ACK_ONE} AND EXISTS (SELECT FROM ins) RETURNING engine, true AS acked) "
            if ack else " ")
    return text(
        f"WITH ins AS (INSERT INTO ingested_messages ({', '.join(_PG_COLUMNS)}) {rows} "
        "ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id), "
        "ff AS (UPDATE nodes SET seq_contig = :ff_last, seq_high = :ff_last, gap_since = NULL, rebirths = 0, "
        "gap_abandoned_at = NULL, last_seen = CASE WHEN nodes.last_seen IS NULL OR nodes.last_seen < :ff_seen "
        "THEN :ff_seen ELSE nodes.last_seen END "
        "WHERE nodes.id = :ff_node AND nodes.seq_contig = :ff_last - :ff_count AND nodes.seq_high <= :ff_last "
        "AND (SELECT count(*) FROM ins) = :ff_count "
        f"RETURNING nodes.store_id, nodes.commands, true AS hit){acks}"
        "SELECT ARRAY(SELECT msg_id FROM ins) AS inserted, ff.store_id, ff.commands, ff.hit"
        f"{', ack.engine, ack.acked' if ack else ''} FROM (SELECT 1) AS one LEFT JOIN ff ON true"
        f"{' LEFT JOIN ack ON true' if ack else ''}"
    )


_PG_ONE_ROW = f"VALUES ({', '.join(':' + c for c in _PG_COLUMNS)})"
_PG_INSERT_ONE_FORWARD = _pg_insert_forward(_PG_ONE_ROW, ack=False)
_PG_INSERT_ONE_FORWARD_ACK = _pg_insert_forward(_PG_ONE_ROW, ack=True)
_PG_INSERT_RUN_FORWARD = _pg_insert_forward(_PG_ROWS, ack=False)


def _one_run(envelopes: dict[Any, tuple[Envelope, Incoming]]) -> tuple[str, int, int, datetime] | None:
    """(node, last seq, count, latest receive time) when the batch is one node's sequenced messages
    with seqs that run on without a hole or a repeat; else None."""
    nodes = {env.node for env, _ in envelopes.values()}
    if len(nodes) != 1 or any(env.type not in SEQUENCED for env, _ in envelopes.values()):
        return None
    seqs = {env.seq for env, _ in envelopes.values()}
    if len(seqs) != len(envelopes) or max(seqs) - min(seqs) + 1 != len(seqs):
        return None
    return nodes.pop(), max(seqs), len(seqs), max(item.received_at for _, item in envelopes.values())


@dataclass
class _Done:
    """What the ledger's statement of a one-message batch did beyond the row (PostgreSQL)."""

    nodes: dict[str, NodeFacts | None] = field(default_factory=dict)
    """Nodes whose fast-forward was tried: their facts, or None when it did not apply."""
    acked: dict[tuple[str, Any], str] = field(default_factory=dict)
    """(node, corr) → the engine that sent the command the batch's ack closed."""


def _pg_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    from psycopg.types.json import Json

    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in _PG_COLUMNS}
    # What the columns' types do to a bound value (UtcDateTime, JSON), done here for the arrays.
    for name in ("ts", "received_at"):
        columns[name] = [_utc(when) for when in columns[name]]
    columns["data"] = [Json(d) for d in columns["data"]]
    return columns


def _pg_row(row: dict[str, Any]) -> dict[str, Any]:
    """`_pg_columns` for `_PG_INSERT_ONE`."""
    from psycopg.types.json import Json

    return {**row, "ts": _utc(row["ts"]), "received_at": _utc(row["received_at"]), "data": Json(row["data"])}


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()} given; omnishelf stores only aware times")
    return when.astimezone(UTC)


_LOCK_NODES = (select(_NODES.c.id, _NODES.c.store_id, _NODES.c.commands).where(_NODES.c.id.in_(bindparam("b_ids", expanding=True)))
               .order_by(_NODES.c.id).with_for_update())
_LAST_SEEN = (
    update(_NODES)
    .where(_NODES.c.id == bindparam("b_id"))
    .where(or_(_NODES.c.last_seen.is_(None), _NODES.c.last_seen < bindparam("b_seen")))
    .values(last_seen=bindparam("b_seen"))
)
_RAISE_SEQ_HIGH = (
    update(_NODES)
    .where(_NODES.c.id == bindparam("b_id"), _NODES.c.seq_high < bindparam("b_high"))
    .values(seq_high=bindparam("b_high"))
)
_NODE_SEQS = select(_NODES.c.id, _NODES.c.seq_contig, _NODES.c.seq_high).where(
    _NODES.c.id.in_(bindparam("b_ids", expanding=True)))
_OPEN = _NODES.c.seq_high > _NODES.c.seq_contig
_MARK_GAPS = (
    update(_NODES)
    .where(_NODES.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(
        gap_since=case((_OPEN, func.coalesce(_NODES.c.gap_since, bindparam("b_now", type_=UtcDateTime()))),
                       else_=null()),
        # A closed gap forgets how hard it was chased.
        rebirths=case((_OPEN, _NODES.c.rebirths), else_=0),
        gap_abandoned_at=case((_OPEN, _NODES.c.gap_abandoned_at), else_=null()),
    )
)


def _ensure_nodes(conn: Connection, nodes: Iterable[str]) -> dict[str, NodeFacts]:
    """Register unknown nodes and lock the batch's node rows (see `_lock_nodes`); return their facts."""
    wanted = set(nodes)
    known = _lock_nodes(conn, wanted)
    missing = sorted(wanted - set(known))
    if missing:
        # Rows this transaction inserts are locked by it until the commit.
        stmt = insert_for(conn, _NODES).on_conflict_do_nothing(index_elements=["id"]).returning(_NODES.c.id)
        for node in conn.execute(stmt, [{"id": n} for n in missing]).scalars():
            log.info("first message from unknown node %r: registered it (no store assigned)", node)
    return {**dict.fromkeys(missing, NodeFacts(None, None)), **known}


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
        rebirths=0,
        gap_abandoned_at=null(),
        last_seen=case(
            (
                or_(_NODES.c.last_seen.is_(None), _NODES.c.last_seen < bindparam("b_seen", type_=UtcDateTime())),
                bindparam("b_seen", type_=UtcDateTime()),
            ),
            else_=_NODES.c.last_seen,
        ),
    )
    .returning(_NODES.c.store_id, _NODES.c.commands)
)


def _fast_forward(conn: Connection, node: str, first: int, last: int, count: int,
                  seen: datetime) -> NodeFacts | None:
    """The common case in one statement: the batch holds a node's next seqs as one unbroken run
    and no gap is open, so its contiguous seq simply moves to the run's end. Returns the node's
    facts, or None when that does not hold (nothing changed); the general path then works it out."""
    if last - first + 1 != count:
        return None
    row = conn.execute(_FAST_FORWARD, {"b_id": node, "b_prev": first - 1, "b_last": last, "b_seen": seen}).first()
    return None if row is None else NodeFacts.of(row.store_id, row.commands)


def _lock_nodes(conn: Connection, nodes: Iterable[str]) -> dict[str, NodeFacts]:
    """Lock node rows in one fixed order before updating them: two workers (or a batch and the gap
    check) that touch the same nodes then queue behind each other instead of deadlocking.
    PostgreSQL only; SQLite has a single writer and ignores FOR UPDATE. Returns the facts of each
    node that exists."""
    return {row.id: NodeFacts.of(row.store_id, row.commands) for row in conn.execute(_LOCK_NODES, {"b_ids": sorted(nodes)})}


def _birth(conn: Connection, env: Envelope, item: Incoming) -> bool:
    data: p.BirthData = env.data  # type: ignore[assignment]
    result = conn.execute(
        update(_NODES)
        .where(_NODES.c.id == env.node)
        .where(or_(_NODES.c.session.is_(None), _NODES.c.session <= env.session))
        .values(online=True, session=env.session, last_birth_at=item.received_at)
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
    conn.execute(_RAISE_SEQ_HIGH, [{"b_id": node, "b_high": high} for node, high in seq_high.items()])


def _advance(conn: Connection, nodes: Iterable[str]) -> dict[str, int]:
    """Move each node's seq_contig over the seqs stored right above it; return the new values."""
    wanted = list(nodes)
    if not wanted:
        return {}
    state = conn.execute(_NODE_SEQS, {"b_ids": wanted}).all()
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
    conn.execute(_MARK_GAPS, {"b_ids": wanted, "b_now": now})


@dataclass(frozen=True, slots=True)
class GapPolicy:
    """How the cloud chases a gap in a box's sequence."""

    grace_s: float = 5.0
    """A gap younger than this is normal (workers deliver out of order): no rebirth yet."""
    max_rebirths: int = 8
    """After this many unanswered rebirths the cloud stops asking and raises an alert."""
    backoff_cap_s: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after rebirth number `attempt` (1-based) before the next one."""
        return float(min(self.backoff_cap_s, self.grace_s * 2 ** max(0, attempt - 1)))


def check_gaps(engine: Engine, policy: GapPolicy, now: datetime) -> list[RebirthDue]:
    """Advance open gaps; for each gap open longer than the grace period, on a box that is online,
    send a rebirth (replay from the first missing seq) through the downlink, backing off
    exponentially per gap; after `max_rebirths` unanswered ones, give up and flag the node.

    A claim sets `last_rebirth_at` conditionally, so of several workers only one sends each rebirth.
    """
    with engine.connect() as conn:
        open_nodes = list(
            conn.execute(
                select(_NODES.c.id).where(
                    _NODES.c.seq_high > _NODES.c.seq_contig, _NODES.c.gap_abandoned_at.is_(None)
                )
            ).scalars()
        )
    if not open_nodes:
        return []
    limit = now - timedelta(seconds=policy.grace_s)
    due: list[RebirthDue] = []
    with write_transaction(engine) as conn:
        _lock_nodes(conn, open_nodes)
        _advance(conn, open_nodes)
        _mark_gaps(conn, open_nodes, now)
        candidates = conn.execute(
            select(
                _NODES.c.id, _NODES.c.seq_contig, _NODES.c.gap_since, _NODES.c.last_rebirth_at, _NODES.c.rebirths,
                _NODES.c.online,
            ).where(
                _NODES.c.id.in_(open_nodes),
                _NODES.c.gap_since <= limit,
                _NODES.c.gap_abandoned_at.is_(None),
            )
        ).all()
        for node, contig, since, last, count, online in candidates:
            if last is not None and last > since and (now - last).total_seconds() < policy.delay(count):
                continue
            if count >= policy.max_rebirths:
                conn.execute(update(_NODES).where(_NODES.c.id == node).values(gap_abandoned_at=now))
                log.error(
                    "node %r: seq %d has been missing since %s and %d rebirths got no answer; no more rebirths "
                    "until the gap closes or an operator resets it (ALERT)",
                    node, contig + 1, since.isoformat(timespec="seconds"), count,
                )
                continue
            if not online:
                continue  # asked again when it is back (its birth resets nothing: the gap stays open)
            claimed = conn.execute(
                update(_NODES)
                .where(
                    _NODES.c.id == node,
                    _NODES.c.seq_contig == contig,
                    _NODES.c.rebirths == count,
                )
                .values(last_rebirth_at=now, rebirths=count + 1)
            )
            if not claimed.rowcount:
                continue
            wait = timedelta(seconds=policy.delay(count + 1))
            downlink.send(
                conn, node, MessageType.REBIRTH,
                p.RebirthData(reason=f"seq {contig + 1} missing", replay_from=contig + 1),
                engine="bus", expires_in=wait, now=now,
            )
            due.append(RebirthDue(node, contig + 1, since, count + 1))
    return due


def reset_gap(conn: Connection, node: str) -> bool:
    """An operator's reset of an abandoned gap: the cloud starts asking again."""
    result = conn.execute(
        update(_NODES).where(_NODES.c.id == node).values(gap_abandoned_at=None, rebirths=0, last_rebirth_at=None)
    )
    return bool(result.rowcount)
