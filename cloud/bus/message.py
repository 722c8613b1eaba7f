"""What an engine's bus handler receives (`Message`) and may use (`Context`).

A handler runs inside the ledger transaction that stored the message, only when that transaction
inserted it, so its effects commit with the ledger row or not at all: exactly once, however often
the broker redelivers. It must only touch the database through `ctx` (no network, no files): a
failed handler's effects are rolled back alone, and a batch may run a handler again after a
neighbour failed.

Ordering rule: several workers share the subscription, so two messages of one box may be handled
out of order on different hosts. State derived from a box's stream records the `position` of the
message it came from and changes only for a newer one (`newer_clause`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, or_, select
from sqlalchemy.orm import Session

from broker.envelope import PAYLOADS, Envelope, MessageType
from broker.payloads import Payload
from cloud.models import Node

__all__ = ["BatchHandlerFn", "Context", "HandlerFn", "Message", "NodeFacts", "Position", "newer_clause"]

Position = tuple[int, int]
"""(session, seq): the order of a box's messages (never its clock)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One stored bus message, as handlers and followers see it."""

    msg_id: uuid.UUID
    node: str
    type: MessageType
    session: int
    seq: int
    ts: datetime
    """The box's clock when the message was created (`clock_synced` says whether to trust it)."""
    received_at: datetime
    """The cloud's clock when a worker received it."""
    historical: bool
    corr: uuid.UUID | None
    data: Payload
    """The typed payload (`PAYLOADS[type]`)."""

    @property
    def position(self) -> Position:
        return (self.session, self.seq)

    @classmethod
    def from_envelope(cls, env: Envelope, received_at: datetime) -> Message:
        return cls(env.msg_id, env.node, env.type, env.session, env.seq, env.ts, received_at, env.historical,
                   env.corr, env.data)

    @classmethod
    def from_row(cls, row: Any) -> Message:
        """From a ledger row (`ingested_messages`), e.g. for a replay or a follower."""
        kind = MessageType(row.type)
        return cls(row.msg_id, row.node, kind, row.session, row.seq, row.ts, row.received_at, row.historical,
                   row.corr, PAYLOADS[kind].model_validate(row.data))


def newer_clause(session_col: ColumnElement[Any], seq_col: ColumnElement[Any], msg: Message) -> ColumnElement[bool]:
    """SQL: the stored position (`session_col`, `seq_col`) is older than `msg`'s, or there is none.

    Use it in the WHERE of the UPDATE that applies `msg`, so that a message handled late never
    overwrites what a newer one wrote (`UPDATE … SET …, session=:s, seq=:q WHERE … AND newer_clause`).
    """
    return or_(
        session_col.is_(None),
        session_col < msg.session,
        and_(session_col == msg.session, seq_col < msg.seq),
    )


SendFn = Callable[..., uuid.UUID]


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """A node's row as a batch's handlers need it: its store and the commands its birth said it runs."""

    store_id: int | None
    commands: frozenset[str] | None
    """None: its birth did not say (it runs everything)."""

    @classmethod
    def of(cls, store_id: int | None, commands: Sequence[str] | None) -> NodeFacts:
        return cls(store_id, None if commands is None else frozenset(commands))

    def runs(self, command: str) -> bool:
        """Whether the node runs the `CommandData` named `command`, as its last birth said (a box
        that did not say is taken to run everything: older software refuses what it cannot do)."""
        return self.commands is None or command in self.commands


@dataclass(eq=False)
class Context:
    """A handler's access to the transaction it runs in."""

    conn: Connection
    """The ledger transaction: on the batch's first try the transaction itself (if a handler
    raises, it is rolled back whole and the batch runs again), then inside a savepoint."""
    engine: str
    """The name of the engine whose handler runs (commands it sends are recorded as from it)."""
    now: datetime
    nodes: dict[str, NodeFacts] = field(default_factory=dict, repr=False)
    """What is known of the nodes this handler deals with (see `store_of`, `runs`)."""
    _orm: Session | None = field(default=None, repr=False)

    def _facts(self, node: str) -> NodeFacts:
        facts = self.nodes.get(node)
        if facts is None:
            row = self.conn.execute(select(Node.store_id, Node.commands).where(Node.id == node)).first()
            facts = self.nodes[node] = NodeFacts(None, None) if row is None else NodeFacts.of(row.store_id, row.commands)
        return facts

    def store_of(self, node: str) -> int | None:
        """The store `node` is assigned to (None: none, or an unknown node). For the batch's own
        nodes the ledger read it already, under the lock it holds on their rows until the commit,
        so this costs no query; another node's is read once."""
        return self._facts(node).store_id

    def runs(self, node: str, command: str) -> bool:
        """Whether `node` runs the `CommandData` named `command`, as its last birth said (one that
        did not say runs everything); read like `store_of`. An engine asks before queuing a command
        that only some boxes have a component for."""
        return self._facts(node).runs(command)

    @property
    def orm(self) -> Session:
        """An ORM session on the same transaction (flushed when the handler returns)."""
        if self._orm is None:
            # "rollback_only": the session writes into the handler's savepoint and closing it
            # leaves that alone. The default would open a savepoint of the session's own when the
            # connection is in one, and roll it back on close: every change silently lost.
            self._orm = Session(bind=self.conn, autoflush=True, expire_on_commit=False,
                                join_transaction_mode="rollback_only")
        return self._orm

    def send(
        self,
        node: str,
        type: MessageType | str,
        data: Payload | dict[str, Any],
        *,
        retain: bool = False,
        expires_in: timedelta | None = timedelta(hours=24),
        key: str | None = None,
        corr: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Queue a command to `node` in this transaction (see `cloud.bus.downlink.send`); `corr`
        names the message it answers (e.g. `msg.msg_id` for a verdict)."""
        from cloud.bus import downlink

        return downlink.send(self.conn, node, type, data, engine=self.engine, retain=retain,
                             expires_in=expires_in, key=key, now=self.now, corr=corr)

    def send_many(
        self,
        commands: Sequence[tuple[str, MessageType | str, Payload | dict[str, Any], uuid.UUID | None]],
        *,
        expires_in: timedelta | None = timedelta(hours=24),
    ) -> list[uuid.UUID]:
        """`send` for many commands (node, type, data, corr) at once, in one statement (neither
        keyed nor retained): what a batch handler answers with (see `cloud.bus.downlink.send_many`)."""
        from cloud.bus import downlink

        return downlink.send_many(self.conn, commands, engine=self.engine, expires_in=expires_in, now=self.now)

    def finish(self) -> None:
        """Flush what the handler left in the ORM session (raises like the handler would)."""
        if self._orm is not None:
            try:
                self._orm.flush()
            finally:
                self._orm.close()
                self._orm = None

    def discard(self) -> None:
        if self._orm is not None:
            self._orm.close()
            self._orm = None


HandlerFn = Callable[[Context, Message], None]
"""`handler(ctx, msg)`: apply one message; raise to have it recorded as failed (its effects roll back)."""

BatchHandlerFn = Callable[[Context, Sequence[Message]], None]
"""`handler(ctx, [msg, …])`: apply several messages at once, as `HandlerFn` would in that order."""
