"""The outbox's SQLite file: schema and blocking queries, used from one thread at a time.

One row per message, keyed by the node's `seq`, so "resend everything unacknowledged in order" is
an index range scan. `meta` holds the connection `session` and the last assigned `seq` separately
from the rows, because rows are pruned and a seq must never be handed out twice.

`commands` remembers the commands the box has handled (by `msg_id`), so a redelivered or retained
command is neither run nor acknowledged twice, across restarts too. A command's record is written
in the same transaction as its ack row: either both exist or neither does.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CommandRecord", "NewRow", "OutboxDb", "OutboxStats", "Row", "StoreFull"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    type TEXT NOT NULL,
    session INTEGER NOT NULL,
    ts TEXT NOT NULL,
    clock_synced INTEGER NOT NULL,
    corr TEXT,
    data TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'acked', 'refused')),
    reason TEXT,
    created REAL NOT NULL,
    done REAL
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_state_seq ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS commands (
    msg_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    handled REAL NOT NULL,
    ack_seq INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS commands_handled ON commands (handled);
INSERT OR IGNORE INTO meta VALUES ('session', 0), ('last_seq', 0), ('schema', 2);
UPDATE meta SET value = 2 WHERE key = 'schema' AND value < 2;
"""
SCHEMA = 2
"""The outbox layout this version writes. An older layout is upgraded in place (tables are only
ever added); a newer one, written by a later release, is refused rather than misread."""

T = TypeVar("T")

_COLUMNS = "seq, msg_id, type, session, ts, clock_synced, corr, data"


class StoreFull(Exception):
    """SQLite could not grow the file (disk full, or the configured size cap reached)."""


class OutboxTooNew(Exception):
    """The outbox was written by a later release whose layout this one does not know."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A handled command, remembered with the ack that answers it."""

    msg_id: uuid.UUID
    type: str


@dataclass(frozen=True, slots=True)
class NewRow:
    """A message about to be stored; the store gives it its seq and session."""

    msg_id: uuid.UUID
    type: str
    ts: datetime
    clock_synced: bool
    corr: uuid.UUID | None
    data: str
    """The payload as JSON, already validated."""
    command: CommandRecord | None = None
    """For an ack: the command it answers, recorded in the same transaction."""


@dataclass(frozen=True, slots=True)
class Row:
    """A stored message: everything needed to rebuild its envelope."""

    seq: int
    msg_id: uuid.UUID
    type: str
    session: int
    ts: datetime
    clock_synced: bool
    corr: uuid.UUID | None
    data: str

    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    acked: int
    """Acknowledged rows still kept for replay."""
    refused: int
    last_seq: int
    oldest_seq: int | None
    """Lowest seq still held (pending or kept for replay)."""
    session: int
    size_bytes: int
    commands_remembered: int
    """Handled commands in the de-duplication window."""


def _row(r: tuple[Any, ...]) -> Row:
    return Row(
        seq=r[0],
        msg_id=uuid.UUID(r[1]),
        type=r[2],
        session=r[3],
        ts=datetime.fromisoformat(r[4]),
        clock_synced=bool(r[5]),
        corr=uuid.UUID(r[6]) if r[6] else None,
        data=r[7],
    )


class OutboxDb:
    """Blocking access to one outbox file. Not thread-safe: the async `Outbox` confines it to one
    worker thread; the command line uses it directly.

    The command window keeps a handled command's record while it is among the newest
    `command_window` and younger than `command_window_s`, and always the newest of each type: that
    one may be a retained command (catalog, schedule) the broker hands over again on every connect,
    however old it is."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        max_bytes: int | None = None,
        readonly: bool = False,
        command_window: int = 10_000,
        command_window_s: float = 7 * 24 * 3600,
    ) -> None:
        self.path = path
        self._synchronous = "FULL" if synchronous == "FULL" else "NORMAL"
        self.command_window = command_window
        self.command_window_s = command_window_s
        self._since_prune = 0
        if readonly:
            if not path.exists():
                raise FileNotFoundError(f"no outbox at {path}")
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA query_only = ON")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit, so one BEGIN … COMMIT is one fsync.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {self._synchronous}")
            if max_bytes is not None:
                page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
                self._db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
            self._refuse_newer()
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self.session = self._meta("session")
        self.last_seq = self._meta("last_seq")
        self.pending = self._count("pending")
        self.acked = self._count("acked")
        self.refused = self._count("refused")
        self._handled: set[str] | None = None
        """The command window's msg_ids, in memory: a command's check costs no query (see
        `command_seen`). None read-only: an older outbox may have no window."""
        if not readonly:
            self.prune_commands()

    def _refuse_newer(self) -> None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        found = self._meta("schema") if has_meta else 0
        if found > SCHEMA:
            self._db.close()
            raise OutboxTooNew(
                f"outbox {self.path} has layout {found}, written by a later omnishelf; this version reads layout "
                f"{SCHEMA} and older: install the later version again (its pending messages are safe in the file)"
            )

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _count(self, state: str) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0])

    def _write(self, fn: Callable[[], T], *, durable: bool = True) -> T:
        """Run `fn` in one transaction; a full disk becomes `StoreFull`, with nothing half-written.

        `durable=False` commits without an fsync of its own, for bookkeeping whose loss costs
        only repeats (a row marked acknowledged, pruned): in WAL mode the next durable commit's
        fsync makes it durable too, and a power cut before that leaves rows pending that the broker
        had already taken, which go again and which the cloud's ledger drops by msg_id. Rows and
        command records are always committed durably."""
        if not durable and self._synchronous == "FULL":
            self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                return self._write(fn)
            finally:
                self._db.execute("PRAGMA synchronous = FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn()
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (SQLITE_FULL among them).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                raise StoreFull(f"outbox {self.path} is full: {exc}") from None
            raise
        return result

    # -- writes ------------------------------------------------------------------------------------

    def insert(self, rows: Sequence[NewRow]) -> list[int]:
        """Store rows under consecutive new seqs in one transaction (one fsync); return the seqs.
        An ack row's command record commits with it."""
        first = self.last_seq + 1
        seqs = list(range(first, first + len(rows)))
        now = time.time()
        commands = [(str(r.command.msg_id), r.command.type, now, s) for s, r in zip(seqs, rows, strict=True) if r.command]

        def tx() -> None:
            self._db.executemany(
                "INSERT INTO outbox (seq, msg_id, type, session, ts, clock_synced, corr, data, state, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                [
                    (
                        s,
                        str(r.msg_id),
                        r.type,
                        self.session,
                        r.ts.isoformat(),
                        int(r.clock_synced),
                        str(r.corr) if r.corr else None,
                        r.data,
                        now,
                    )
                    for s, r in zip(seqs, rows, strict=True)
                ],
            )
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seqs[-1],))
            if commands:
                # OR IGNORE: one bad row must not fail the other callers' rows sharing this commit.
                self._db.executemany(
                    "INSERT OR IGNORE INTO commands (msg_id, type, handled, ack_seq) VALUES (?, ?, ?, ?)", commands
                )

        if rows:
            self._write(tx)
            if commands and self._handled is not None:
                self._handled.update(c[0] for c in commands)
            self.last_seq = seqs[-1]
            self.pending += len(rows)
            self._since_prune += len(commands)
            if self._since_prune >= max(100, self.command_window // 10):
                self.prune_commands()
        return seqs

    def command_seen(self, msg_id: uuid.UUID) -> bool:
        """Whether this command was handled (within the window). Without a query, so the event
        loop may ask it directly: the set only grows under the writer thread once a record
        committed, and is replaced whole after a prune; a command being handled meanwhile is in the
        bus client's own in-progress set until its record committed."""
        handled = self._handled
        if handled is not None:
            return str(msg_id) in handled
        row = self._db.execute("SELECT 1 FROM commands WHERE msg_id = ?", (str(msg_id),)).fetchone()
        return row is not None

    def prune_commands(self, now: float | None = None) -> int:
        """Forget handled commands beyond the window (see the class); return how many went."""
        self._since_prune = 0
        cutoff = (now if now is not None else time.time()) - self.command_window_s

        def tx() -> int:
            return int(
                self._db.execute(
                    "DELETE FROM commands WHERE (handled < ? OR rowid <= (SELECT max(rowid) FROM commands) - ?)"
                    " AND rowid NOT IN (SELECT max(rowid) FROM commands GROUP BY type)",
                    (cutoff, self.command_window),
                ).rowcount
            )

        # Not durable: a prune lost in a power cut only leaves records that the next one removes.
        deleted = self._write(tx, durable=False)
        if deleted or self._handled is None:
            self._handled = {str(m) for (m,) in self._db.execute("SELECT msg_id FROM commands")}
        return deleted

    def next_session(self) -> int:
        session = self.session + 1
        self._write(lambda: self._db.execute("UPDATE meta SET value = ? WHERE key = 'session'", (session,)).rowcount)
        self.session = session
        return session

    def mark_acked(self, seqs: Iterable[int]) -> int:
        now = time.time()
        params = [(now, s) for s in seqs]

        def tx() -> int:
            cur = self._db.executemany(
                "UPDATE outbox SET state = 'acked', done = ? WHERE seq = ? AND state = 'pending'", params
            )
            return int(cur.rowcount)

        # Half of a steady stream's commits, and each waited for the disk ahead of the next put.
        changed = self._write(tx, durable=False) if params else 0
        self.pending -= changed
        self.acked += changed
        return changed

    def mark_refused(self, seq: int, reason: str) -> bool:
        def tx() -> int:
            return int(
                self._db.execute(
                    "UPDATE outbox SET state = 'refused', reason = ?, done = ? WHERE seq = ? AND state = 'pending'",
                    (reason, time.time(), seq),
                ).rowcount
            )

        changed = self._write(tx) == 1
        if changed:
            self.pending -= 1
            self.refused += 1
        return changed

    def requeue_refused(self) -> int:
        """Make refused rows pending again (after a restart, which is when credentials change)."""

        def tx() -> int:
            return int(
                self._db.execute(
                    "UPDATE outbox SET state = 'pending', reason = NULL, done = NULL WHERE state = 'refused'"
                ).rowcount
            )

        changed = self._write(tx)
        self.refused -= changed
        self.pending += changed
        return changed

    def prune(self, retain_acked: int) -> int:
        """Delete the oldest acknowledged rows beyond `retain_acked`; return how many went."""
        excess = self.acked - retain_acked
        if excess <= 0:
            return 0

        def tx() -> int:
            return int(
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN"
                    " (SELECT seq FROM outbox WHERE state = 'acked' ORDER BY seq LIMIT ?)",
                    (excess,),
                ).rowcount
            )

        deleted = self._write(tx, durable=False)
        self.acked -= deleted
        return deleted

    # -- reads -------------------------------------------------------------------------------------

    def pending_after(self, seq: int, limit: int) -> list[Row]:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [_row(r) for r in cur.fetchall()]

    def replayable(self, from_seq: int, limit: int) -> list[Row]:
        """Acknowledged rows still kept, from `from_seq` on, in seq order."""
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = 'acked' AND seq >= ? ORDER BY seq LIMIT ?",
            (from_seq, limit),
        )
        return [_row(r) for r in cur.fetchall()]

    def refused_rows(self) -> list[tuple[int, str]]:
        return [
            (int(s), str(r))
            for s, r in self._db.execute("SELECT seq, reason FROM outbox WHERE state = 'refused' ORDER BY seq")
        ]

    def oldest_seq(self) -> int | None:
        lows = [
            self._db.execute("SELECT min(seq) FROM outbox WHERE state = ?", (state,)).fetchone()[0]
            for state in ("pending", "acked")
        ]
        held = [int(x) for x in lows if x is not None]
        return min(held) if held else None

    def stats(self) -> OutboxStats:
        size = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())
        return OutboxStats(
            pending=self.pending,
            acked=self.acked,
            refused=self.refused,
            last_seq=self.last_seq,
            oldest_seq=self.oldest_seq(),
            session=self.session,
            size_bytes=size,
            commands_remembered=self._commands_count(),
        )

    def _commands_count(self) -> int:
        try:
            return int(self._db.execute("SELECT count(*) FROM commands").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # an outbox of an older version, opened read-only: no window yet
