"""The order desk's own SQLite file: the assignments this store holds and where each stands.

Written from the bus (an `assign` command, on the event loop) and from the local API (staff
steps, on worker threads): one connection behind a lock, WAL so a reader never waits long.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DeskDb"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY,          -- the cloud's assignment id
    order_id TEXT NOT NULL,
    state TEXT NOT NULL,             -- assigned, accepted, picking, packed, shipped, ready, picked_up, delivered,
                                     -- rejected, withdrawn
    data TEXT NOT NULL,              -- the AssignData as JSON
    carrier TEXT, tracking TEXT,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_assignments_order ON assignments(order_id);
"""


class DeskDb:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat()

    def store(self, assignment: int, order_id: str, data: dict[str, Any]) -> bool:
        """Keep a new assignment; False if it is already held (a resent command)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO assignments (id, order_id, state, data, received_at, updated_at)"
                " VALUES (?, ?, 'assigned', ?, ?, ?)",
                (assignment, order_id, json.dumps(data, ensure_ascii=False), self._now(), self._now()),
            )
            return cur.rowcount == 1

    def withdraw(self, assignment: int, order_id: str, data: dict[str, Any]) -> str | None:
        """Mark it withdrawn (kept for the record, even if the assign never arrived); the state it had."""
        with self._lock:
            row = self._db.execute("SELECT state FROM assignments WHERE id = ?", (assignment,)).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO assignments (id, order_id, state, data, received_at, updated_at)"
                    " VALUES (?, ?, 'withdrawn', ?, ?, ?)",
                    (assignment, order_id, json.dumps(data, ensure_ascii=False), self._now(), self._now()))
                return None
            self._db.execute("UPDATE assignments SET state = 'withdrawn', updated_at = ? WHERE id = ?",
                             (self._now(), assignment))
            return str(row[0])

    def set_state(self, assignment: int, expect: str, state: str, carrier: str | None = None,
                  tracking: str | None = None) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE assignments SET state = ?, carrier = coalesce(?, carrier), tracking = coalesce(?, tracking),"
                " updated_at = ? WHERE id = ? AND state = ?",
                (state, carrier, tracking, self._now(), assignment, expect))
            return cur.rowcount == 1

    def get(self, assignment: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, order_id, state, data, carrier, tracking, received_at, updated_at FROM assignments"
                " WHERE id = ?", (assignment,)).fetchone()
        return None if row is None else self._out(row)

    def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT id, order_id, state, data, carrier, tracking, received_at, updated_at FROM assignments"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state = ?"
            args = (state,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._out(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {s: n for s, n in self._db.execute("SELECT state, count(*) FROM assignments GROUP BY state")}

    @staticmethod
    def _out(row: Any) -> dict[str, Any]:
        data = json.loads(row[3])
        data.pop("pickup_code_sha256", None)  # the hash stays on the box: the API never shows it
        return {"assignment": row[0], "order_id": row[1], "state": row[2], "carrier": row[4], "tracking": row[5],
                "received_at": row[6], "updated_at": row[7], "lines": data.get("lines", []),
                "fulfilment": data.get("fulfilment"), "accept_by": data.get("accept_by"),
                "customer": data.get("customer"), "contact": data.get("contact"), "address": data.get("address"),
                "channel": data.get("channel")}

    def pickup_hash(self, assignment: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM assignments WHERE id = ?", (assignment,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0]).get("pickup_code_sha256")
        return str(value) if value else None
