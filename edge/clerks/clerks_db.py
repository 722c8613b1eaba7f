"""The box's clerks database: the store's roster as last received, each clerk's failed PIN tries
and lockouts, and the sign-in sessions (only a hash of each token).

One SQLite file, written with `synchronous=FULL`: a lockout survives a power cut, and a roster is
swapped in whole in one transaction (a sign-in sees the old roster or the new one, never half).
Thread-safe: the local API's worker threads and the agent's loop share one connection under a lock.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.payloads import ClerkRosterArgs

__all__ = ["Attempts", "ClerksDb", "RosterClerkRow", "SessionRow", "token_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roster (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, staff_number TEXT, pin_hash TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    clerk_id INTEGER PRIMARY KEY, failures INTEGER NOT NULL, lockouts INTEGER NOT NULL, locked_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, clerk_id INTEGER NOT NULL, started_at REAL NOT NULL, expires_at REAL NOT NULL);
"""


def token_hash(token: str) -> str:
    """Tokens are 32 random bytes: a plain SHA-256 is enough to keep them off the disk."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RosterClerkRow:
    id: int
    name: str
    staff_number: str | None
    pin_hash: str
    active: bool


@dataclass(frozen=True, slots=True)
class Attempts:
    failures: int
    """Wrong PINs in a row since the last success or the last lockout."""
    lockouts: int
    """Lockouts in a row since the last success (each doubles the next one)."""
    locked_until: float
    """Epoch seconds; 0 when never locked."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    clerk: RosterClerkRow
    started_at: float
    expires_at: float


class ClerksDb:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def version(self) -> int:
        """The roster version held (0: none yet)."""
        return int(self._meta("version") or 0)

    @property
    def store(self) -> str | None:
        return self._meta("store")

    # -- the roster --------------------------------------------------------------------------------

    def swap(self, roster: ClerkRosterArgs) -> tuple[int, int] | int:
        """Replace the roster with `roster` in one transaction, if it is newer than the one held
        (checked in that transaction: two rosters handled at once cannot swap an older one in last).
        A clerk whose PIN hash changed (a manager reset it) starts with no failed tries and no
        lockout; sessions of clerks no longer active are ended. Returns (clerks whose lockout was
        cleared, sessions ended), or the version held when `roster` is not newer."""
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            held = int(row[0]) if row else 0
            if roster.version <= held:
                return held
            old = dict(conn.execute("SELECT id, pin_hash FROM roster").fetchall())
            conn.execute("DELETE FROM roster")
            conn.executemany("INSERT INTO roster (id, name, staff_number, pin_hash, active) VALUES (?, ?, ?, ?, ?)",
                             [(c.id, c.name, c.staff_number, c.pin_hash, int(c.active)) for c in roster.clerks])
            reset = [(c.id,) for c in roster.clerks if c.id in old and old[c.id] != c.pin_hash]
            conn.executemany("DELETE FROM attempts WHERE clerk_id = ?", reset)
            conn.execute("DELETE FROM attempts WHERE clerk_id NOT IN (SELECT id FROM roster)")
            ended = conn.execute("DELETE FROM sessions WHERE clerk_id NOT IN (SELECT id FROM roster WHERE active = 1)"
                                 ).rowcount
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [("version", str(roster.version)), ("store", roster.store)])
        return len(reset), ended

    def clerk(self, clerk_id: int) -> RosterClerkRow | None:
        with self._lock:
            row = self._conn.execute("SELECT id, name, staff_number, pin_hash, active FROM roster WHERE id = ?",
                                     (clerk_id,)).fetchone()
        return None if row is None else RosterClerkRow(row[0], row[1], row[2], row[3], bool(row[4]))

    def clerks(self, *, active_only: bool = True) -> list[RosterClerkRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, staff_number, pin_hash, active FROM roster"
                + (" WHERE active = 1" if active_only else "") + " ORDER BY name COLLATE NOCASE, id").fetchall()
        return [RosterClerkRow(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    # -- tries and lockouts -------------------------------------------------------------------------

    def attempts(self, clerk_id: int) -> Attempts:
        with self._lock:
            row = self._conn.execute("SELECT failures, lockouts, locked_until FROM attempts WHERE clerk_id = ?",
                                     (clerk_id,)).fetchone()
        return Attempts(0, 0, 0.0) if row is None else Attempts(int(row[0]), int(row[1]), float(row[2]))

    def set_attempts(self, clerk_id: int, state: Attempts) -> None:
        with self._tx() as conn:
            if state == Attempts(0, 0, 0.0):
                conn.execute("DELETE FROM attempts WHERE clerk_id = ?", (clerk_id,))
            else:
                conn.execute("INSERT OR REPLACE INTO attempts (clerk_id, failures, lockouts, locked_until) "
                             "VALUES (?, ?, ?, ?)", (clerk_id, state.failures, state.lockouts, state.locked_until))

    def locked_count(self, now: float) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM attempts WHERE locked_until > ?", (now,)).fetchone()[0])

    # -- sessions ----------------------------------------------------------------------------------

    def add_session(self, token: str, clerk_id: int, now: float, expires_at: float) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute("INSERT INTO sessions (token_hash, clerk_id, started_at, expires_at) VALUES (?, ?, ?, ?)",
                         (token_hash(token), clerk_id, now, expires_at))

    def session(self, token: str, now: float) -> SessionRow | None:
        """The session of `token` if it has not expired and its clerk is still active on the roster."""
        with self._lock:
            row = self._conn.execute(
                "SELECT r.id, r.name, r.staff_number, r.pin_hash, r.active, s.started_at, s.expires_at "
                "FROM sessions s JOIN roster r ON r.id = s.clerk_id "
                "WHERE s.token_hash = ? AND s.expires_at > ? AND r.active = 1", (token_hash(token), now)).fetchone()
        if row is None:
            return None
        return SessionRow(RosterClerkRow(row[0], row[1], row[2], row[3], bool(row[4])), float(row[5]), float(row[6]))

    def end_session(self, token: str) -> bool:
        with self._tx() as conn:
            return conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),)).rowcount > 0

    def session_count(self, now: float) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM sessions WHERE expires_at > ?", (now,)).fetchone()[0])
