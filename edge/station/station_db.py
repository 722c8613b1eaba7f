"""The station's SQLite file: scans and their verdicts, alerts, the event feed, the offline lists
pushed by the cloud, and the print queue.

One connection shared by the event loop and the local API's worker threads, serialised by a lock
(every statement is a few rows by key). WAL with `synchronous=FULL`: a verdict shown to the clerk, a
print job accepted, is on disk. `changed` (a condition) wakes long-polling readers of the feed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.payloads import ALARM_CLASSES, VerdictData

__all__ = ["ALARMS", "PrintJob", "StationDb", "UnitFacts"]

ALARMS = ALARM_CLASSES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id TEXT NOT NULL UNIQUE,
    code TEXT NOT NULL,
    symbology TEXT,
    station TEXT NOT NULL,
    purpose TEXT NOT NULL,
    source TEXT NOT NULL,
    scanned_at TEXT NOT NULL,
    verdict TEXT,
    provisional INTEGER,
    body TEXT,
    decided_at TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id TEXT NOT NULL,
    was TEXT NOT NULL,
    now TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    acked_at TEXT,
    note TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS adjustments (request_id TEXT PRIMARY KEY, answer TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS list_parts (
    version INTEGER NOT NULL, part INTEGER NOT NULL, parts INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (version, part)
);
CREATE TABLE IF NOT EXISTS units (
    gtin TEXT NOT NULL, serial TEXT NOT NULL,
    batch TEXT, expiry TEXT,
    list TEXT NOT NULL,       -- received | recalled | bad | sold
    verdict TEXT, reason TEXT,
    PRIMARY KEY (gtin, serial, list)
);
CREATE TABLE IF NOT EXISTS recalled_batches (
    gtin TEXT NOT NULL, batch TEXT NOT NULL, reason TEXT,
    PRIMARY KEY (gtin, batch)
);
CREATE TABLE IF NOT EXISTS print_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT UNIQUE,
    printer TEXT NOT NULL,
    kind TEXT NOT NULL,
    scan_id TEXT,
    data BLOB NOT NULL,
    state TEXT NOT NULL,      -- queued | sending | printed | uncertain
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at TEXT NOT NULL,
    printed_at TEXT
);
CREATE INDEX IF NOT EXISTS print_jobs_queued ON print_jobs (printer, state, id);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class UnitFacts:
    """What the offline lists say about one unit."""

    received: tuple[str | None, str | None] | None
    """(batch, expiry ISO date) as received at this store, or None if not in the received list."""
    sold: bool
    recalled_unit: str | None
    """The recall's reason (None: not recalled as a single unit)."""
    recalled_batch: str | None
    bad: tuple[str, str | None] | None
    """(verdict class, reason) of a known-bad unit."""
    list_version: int


@dataclass(frozen=True, slots=True)
class PrintJob:
    id: int
    printer: str
    kind: str
    scan_id: str | None
    data: bytes
    state: str
    attempts: int
    last_error: str | None
    created_at: str
    printed_at: str | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "printer": self.printer, "kind": self.kind, "scan_id": self.scan_id,
                "bytes": len(self.data), "state": self.state, "attempts": self.attempts,
                "last_error": self.last_error, "created_at": self.created_at, "printed_at": self.printed_at}


class StationDb:
    def __init__(self, path: Path, *, keep_scans: int = 100_000, keep_jobs: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep_scans = keep_scans
        self.keep_jobs = keep_jobs
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        """Notified after every new event (long-polling readers wait on it)."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if "clerk" not in {r[1] for r in self._db.execute("PRAGMA table_info(scans)")}:
            # Files from before clerks signed in at the station: their scans say no clerk.
            self._db.execute("ALTER TABLE scans ADD COLUMN clerk TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, kind: str, body: dict[str, Any]) -> None:
        db.execute("INSERT INTO events (kind, body) VALUES (?, ?)", (kind, json.dumps(body, ensure_ascii=False)))
        self.changed.notify_all()

    # -- scans and verdicts ----------------------------------------------------------------------

    def add_scan(self, scan_id: str, code: str, symbology: str | None, station: str, purpose: str, source: str,
                 clerk: dict[str, str] | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO scans (scan_id, code, symbology, station, purpose, source, scanned_at, clerk) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (scan_id, code, symbology, station, purpose, source, _now(), json.dumps(clerk) if clerk else None),
            )
            self._event(db, "scan", {"scan_id": scan_id, "code": code, "station": station, "purpose": purpose,
                                     "clerk": clerk})
            n = db.execute("SELECT max(n) FROM scans").fetchone()[0] or 0
            if n % 1000 == 0 and n > self.keep_scans:
                db.execute("DELETE FROM scans WHERE n <= ?", (n - self.keep_scans,))
                db.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (self.keep_scans * 3,))

    def set_verdict(self, v: VerdictData) -> tuple[str, VerdictData | None]:
        """Store a verdict for its scan. A provisional one never replaces a final one; a final one
        replaces a provisional one or an older final one. Returns (what happened, the verdict replaced)."""
        with self._tx() as db:
            row = db.execute("SELECT body, provisional FROM scans WHERE scan_id = ?", (str(v.scan_id),)).fetchone()
            before = VerdictData.model_validate_json(row[0]) if row is not None and row[0] else None
            if row is None:
                # A verdict for a scan this file does not hold (it was pruned, or the file is new):
                # kept all the same, so the clerk's API shows it.
                db.execute(
                    "INSERT INTO scans (scan_id, code, station, purpose, source, scanned_at) VALUES (?, ?, '', 'verify', 'cloud', ?)",
                    (str(v.scan_id), v.code, _now()),
                )
            if before is not None:
                if v.provisional and not before.provisional:
                    return "kept final", before
                if not v.provisional and not before.provisional and v.decided_at <= before.decided_at:
                    return "kept newer", before
            db.execute(
                "UPDATE scans SET verdict = ?, provisional = ?, body = ?, decided_at = ? WHERE scan_id = ?",
                (v.verdict.value, int(v.provisional), v.model_dump_json(), v.decided_at.isoformat(), str(v.scan_id)),
            )
            self._event(db, "verdict", v.model_dump(mode="json"))
            if before is not None and before.provisional and not v.provisional and before.verdict not in ALARMS and v.verdict in ALARMS:
                message = (f"this unit was let through as {before.verdict.value} while the cloud was unreachable; "
                           f"the cloud says {v.verdict.value}: {v.message}").strip().rstrip(":")
                cur = db.execute(
                    "INSERT INTO alerts (scan_id, was, now, message, raised_at) VALUES (?, ?, ?, ?, ?)",
                    (str(v.scan_id), before.verdict.value, v.verdict.value, message[:500], _now()),
                )
                self._event(db, "alert", {"id": cur.lastrowid, "scan_id": str(v.scan_id), "was": before.verdict.value,
                                          "now": v.verdict.value, "message": message[:500]})
            return ("replaced" if before is not None else "stored"), before

    def verdict(self, scan_id: str) -> VerdictData | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM scans WHERE scan_id = ?", (scan_id,)).fetchone()
        return VerdictData.model_validate_json(row[0]) if row is not None and row[0] else None

    def scan(self, scan_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(_SCAN_COLS + " WHERE scan_id = ?", (scan_id,)).fetchone()
        return None if row is None else _scan_row(row)

    def latest(self, limit: int, *, pending: bool = False) -> list[dict[str, Any]]:
        where = " WHERE body IS NULL" if pending else ""
        with self._lock:
            rows = self._db.execute(_SCAN_COLS + where + " ORDER BY n DESC LIMIT ?", (limit,)).fetchall()
        return [_scan_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            scans, pending, provisional = self._db.execute(
                "SELECT count(*), count(*) FILTER (WHERE body IS NULL), count(*) FILTER (WHERE provisional = 1) FROM scans"
            ).fetchone()
            alerts = self._db.execute("SELECT count(*) FROM alerts WHERE acked_at IS NULL").fetchone()[0]
        return {"scans": scans, "awaiting_verdict": pending, "provisional": provisional, "open_alerts": alerts}

    # -- the feed and alerts ---------------------------------------------------------------------

    def events(self, after: int, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, kind, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        return [{"id": i, "kind": k, "data": json.loads(b)} for i, k, b in rows]

    def last_event(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

    def wait_events(self, after: int, timeout: float, limit: int = 100) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = self.events(after, limit)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self.changed.wait(left)

    def alerts(self, *, open_only: bool) -> list[dict[str, Any]]:
        where = " WHERE acked_at IS NULL" if open_only else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, scan_id, was, now, message, raised_at, acked_at, note FROM alerts" + where + " ORDER BY id DESC LIMIT 500"
            ).fetchall()
        keys = ("id", "scan_id", "was", "now", "message", "raised_at", "acked_at", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def ack_alert(self, alert_id: int, note: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE alerts SET acked_at = ?, note = ? WHERE id = ? AND acked_at IS NULL", (_now(), note, alert_id))
            if cur.rowcount:
                self._event(db, "alert_acked", {"id": alert_id, "note": note})
            return cur.rowcount == 1

    def alert_exists(self, alert_id: int) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM alerts WHERE id = ?", (alert_id,)).fetchone() is not None

    def adjustment(self, request_id: str) -> dict[str, Any] | None:
        """The answer given to a stock adjustment sent with `request_id`, if one was."""
        with self._lock:
            row = self._db.execute("SELECT answer FROM adjustments WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def adjusted(self, request_id: str, answer: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO adjustments (request_id, answer, at) VALUES (?, ?, ?)",
                       (request_id, json.dumps(answer), _now()))
            self._event(db, "stock_adjusted", answer)

    def emit(self, kind: str, body: dict[str, Any]) -> None:
        with self._tx() as db:
            self._event(db, kind, body)

    # -- offline lists ---------------------------------------------------------------------------

    @property
    def list_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'list_version'").fetchone()
        return int(row[0]) if row else 0

    def put_list_part(self, version: int, part: int, parts: int, body: dict[str, Any]) -> int | None:
        """Stage one part of a list version; when all its parts are here, swap them in at once and
        return how many units the lists now hold. Parts of older versions are dropped."""
        with self._tx() as db:
            db.execute("DELETE FROM list_parts WHERE version < ?", (version,))
            db.execute("INSERT OR REPLACE INTO list_parts VALUES (?, ?, ?, ?)", (version, part, parts, json.dumps(body)))
            have = db.execute("SELECT count(*) FROM list_parts WHERE version = ? AND parts = ?", (version, parts)).fetchone()[0]
            if have < parts:
                return None
            bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM list_parts WHERE version = ? ORDER BY part", (version,))]
            db.execute("DELETE FROM units WHERE list != 'sold'")
            db.execute("DELETE FROM recalled_batches")
            for b in bodies:
                db.executemany("INSERT OR REPLACE INTO units (gtin, serial, batch, expiry, list) VALUES (?, ?, ?, ?, 'received')",
                               ((u["gtin"], u["serial"], u.get("batch"), u.get("expiry")) for u in b["received"]))
                db.executemany("INSERT OR REPLACE INTO units (gtin, serial, list, reason) VALUES (?, ?, 'recalled', ?)",
                               ((u["gtin"], u["serial"], u.get("reason")) for u in b["recalled_units"]))
                db.executemany("INSERT OR REPLACE INTO units (gtin, serial, list, verdict, reason) VALUES (?, ?, 'bad', ?, ?)",
                               ((u["gtin"], u["serial"], u["verdict"], u.get("reason")) for u in b["known_bad"]))
                db.executemany("INSERT OR REPLACE INTO recalled_batches VALUES (?, ?, ?)",
                               ((u["gtin"], u["batch"], u.get("reason")) for u in b["recalled_batches"]))
            # A local sale mark matters while the cloud's list still holds the unit as received (the
            # sale may not have reached it yet); for a unit no longer listed it says nothing more.
            db.execute("DELETE FROM units WHERE list = 'sold' AND (gtin, serial) NOT IN "
                       "(SELECT gtin, serial FROM units WHERE list = 'received')")
            db.execute("DELETE FROM list_parts WHERE version <= ?", (version,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('list_version', ?)", (str(version),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('list_applied_at', ?)", (_now(),))
            held = db.execute("SELECT count(*) FROM units WHERE list != 'sold'").fetchone()[0]
            self._event(db, "lists", {"version": version, "units": held})
            return int(held)

    def list_counts(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._db.execute("SELECT list, count(*) FROM units GROUP BY list").fetchall())
            batches = self._db.execute("SELECT count(*) FROM recalled_batches").fetchone()[0]
            applied = self._db.execute("SELECT value FROM meta WHERE key = 'list_applied_at'").fetchone()
        return {"version": self.list_version, "applied_at": applied[0] if applied else None,
                "received": counts.get("received", 0), "recalled_units": counts.get("recalled", 0),
                "recalled_batches": batches, "known_bad": counts.get("bad", 0), "sold_here_since": counts.get("sold", 0)}

    def unit(self, gtin: str, serial: str | None, batch: str | None) -> UnitFacts:
        with self._lock:
            rows = self._db.execute(
                "SELECT list, batch, expiry, verdict, reason FROM units WHERE gtin = ? AND serial = ?", (gtin, serial or "")
            ).fetchall() if serial else []
            recalled_batch = self._db.execute(
                "SELECT coalesce(reason, '') FROM recalled_batches WHERE gtin = ? AND batch = ?", (gtin, batch)
            ).fetchone() if batch else None
        lists = {r[0]: r for r in rows}
        rec = lists.get("received")
        bad = lists.get("bad")
        recalled = lists.get("recalled")
        return UnitFacts(
            received=(rec[1], rec[2]) if rec else None,
            sold="sold" in lists,
            recalled_unit=(recalled[4] or "") if recalled else None,
            recalled_batch=recalled_batch[0] if recalled_batch else None,
            bad=(bad[3], bad[4]) if bad else None,
            list_version=self.list_version,
        )

    def mark_sold(self, gtin: str, serial: str, sold: bool = True) -> None:
        """Record (or, for a return, forget) a sale made at this station, for offline answers."""
        with self._tx() as db:
            if sold:
                db.execute("INSERT OR IGNORE INTO units (gtin, serial, list) VALUES (?, ?, 'sold')", (gtin, serial))
            else:
                db.execute("DELETE FROM units WHERE gtin = ? AND serial = ? AND list = 'sold'", (gtin, serial))

    # -- print queue -----------------------------------------------------------------------------

    def enqueue(self, printer: str, kind: str, data: bytes, *, scan_id: str | None, request_id: str | None) -> tuple[PrintJob, bool]:
        """Queue a job; a `request_id` seen before returns that job instead (a client's retry)."""
        with self._tx() as db:
            if request_id is not None:
                row = db.execute(_JOB_COLS + " WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return PrintJob(*row), False
            cur = db.execute(
                "INSERT INTO print_jobs (request_id, printer, kind, scan_id, data, state, created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (request_id, printer, kind, scan_id, data, _now()),
            )
            job = PrintJob(*db.execute(_JOB_COLS + " WHERE id = ?", (cur.lastrowid,)).fetchone())
            self._event(db, "print_queued", job.public())
            return job, True

    def next_job(self, printer: str) -> PrintJob | None:
        with self._lock:
            row = self._db.execute(_JOB_COLS + " WHERE printer = ? AND state = 'queued' ORDER BY id LIMIT 1", (printer,)).fetchone()
        return None if row is None else PrintJob(*row)

    def job(self, job_id: int) -> PrintJob | None:
        with self._lock:
            row = self._db.execute(_JOB_COLS + " WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else PrintJob(*row)

    def jobs(self, limit: int) -> list[PrintJob]:
        with self._lock:
            rows = self._db.execute(_JOB_COLS + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [PrintJob(*r) for r in rows]

    def jobs_waiting(self) -> dict[str, int]:
        """Per printer, the jobs not printed yet (queued, or being sent)."""
        with self._lock:
            return dict(self._db.execute("SELECT printer, count(*) FROM print_jobs WHERE state IN ('queued', 'sending') "
                                         "GROUP BY printer").fetchall())

    def job_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, count(*) FROM print_jobs GROUP BY state").fetchall())

    def job_failed(self, job_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE print_jobs SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:500], job_id))

    def job_sending(self, job_id: int) -> None:
        """Committed before the first byte goes to the printer: the exactly-once boundary."""
        with self._tx() as db:
            db.execute("UPDATE print_jobs SET state = 'sending', attempts = attempts + 1 WHERE id = ? AND state = 'queued'", (job_id,))

    def job_printed(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE print_jobs SET state = 'printed', printed_at = ?, last_error = NULL WHERE id = ?", (_now(), job_id))
            self._event(db, "printed", {"id": job_id})
            n = db.execute("SELECT count(*) FROM print_jobs WHERE state = 'printed'").fetchone()[0]
            if n > self.keep_jobs:
                db.execute("DELETE FROM print_jobs WHERE id IN (SELECT id FROM print_jobs WHERE state = 'printed' ORDER BY id LIMIT ?)",
                           (n - self.keep_jobs,))

    def job_back_to_queue(self, job_id: int, error: str) -> None:
        """The bytes did not leave (the connection failed before or while sending them): try again."""
        with self._tx() as db:
            db.execute("UPDATE print_jobs SET state = 'queued', last_error = ? WHERE id = ? AND state = 'sending'", (error[:500], job_id))

    def jobs_uncertain_after_restart(self) -> list[int]:
        """Jobs found `sending` at start: the process stopped between committing `sending` and
        `printed`, so the printer may or may not have printed them. They are not sent again by
        themselves (that could print twice); the clerk reprints them with one request."""
        with self._tx() as db:
            ids = [i for (i,) in db.execute("SELECT id FROM print_jobs WHERE state = 'sending'")]
            for i in ids:
                db.execute("UPDATE print_jobs SET state = 'uncertain', last_error = ? WHERE id = ?",
                           ("the box restarted while sending this job: it may have printed; reprint it if it did not", i))
                self._event(db, "print_uncertain", {"id": i})
            return ids

    def requeue(self, job_id: int) -> PrintJob | None:
        """Reprint: a printed or uncertain job goes back to the queue (a new attempt, same bytes)."""
        with self._tx() as db:
            db.execute("UPDATE print_jobs SET state = 'queued', printed_at = NULL WHERE id = ? AND state IN ('printed', 'uncertain')",
                       (job_id,))
            row = db.execute(_JOB_COLS + " WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                self._event(db, "print_queued", PrintJob(*row).public())
        return None if row is None else PrintJob(*row)


_SCAN_COLS = "SELECT scan_id, code, symbology, station, purpose, source, scanned_at, body, clerk FROM scans"
_JOB_COLS = ("SELECT id, printer, kind, scan_id, data, state, attempts, last_error, created_at, printed_at FROM print_jobs")


def _scan_row(row: Sequence[Any]) -> dict[str, Any]:
    keys: Iterable[str] = ("scan_id", "code", "symbology", "station", "purpose", "source", "scanned_at")
    out = dict(zip(keys, row[:7], strict=True))
    out["verdict"] = json.loads(row[7]) if row[7] else None
    out["clerk"] = json.loads(row[8]) if row[8] else None
    return out
