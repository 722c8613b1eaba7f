"""Is this database's schema one this software can run against? And the record that answers it.

The code knows its own migrations (`cloud/migrations/versions`), hence its head revision. The
database knows where it is (`alembic_version`). When the database is *newer* than the code, the
code cannot read the newer migration scripts it does not have, so the database itself must say
whether they are safe for older software: every `omnishelf cloud migrate` records each revision of
the chain it knows, with its `compatible` flag, in `schema_revisions` (bookkeeping like
`alembic_version`, kept out of the models and of autogenerate).

A migration declares `compatible = True` at module level when software of the revision before it
runs unchanged against it (an "expand" step: a new table, a new nullable column, a new index).
Compatibility is transitive by this definition, so older software may start against a newer
database when every revision between its head and the database's is compatible. A migration
without the flag, or with `compatible = False` (a "contract" step: dropping or renaming what older
code still uses), stops older software from starting.
"""

from __future__ import annotations

import enum
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Column, Connection, Engine, MetaData, String, Table, inspect, select, update

from cloud.models import UtcDateTime

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

__all__ = [
    "REVISIONS_TABLE",
    "SchemaMismatch",
    "SchemaState",
    "SchemaStatus",
    "include_name",
    "read_status",
    "record_revisions",
    "software_version",
]

log = logging.getLogger(__name__)

REVISIONS_TABLE = "schema_revisions"

_revisions = Table(
    REVISIONS_TABLE,
    MetaData(),
    Column("revision", String(64), primary_key=True),
    # The revision before it (comma-separated for a merge); null for the first.
    Column("down_revision", String(200), nullable=True),
    # Software of the revision before runs unchanged against this one (an expand step).
    Column("compatible", Boolean, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    # The omnishelf version that recorded the row.
    Column("software_version", String(64), nullable=True),
)


def software_version() -> str:
    try:
        return importlib.metadata.version("omnishelf")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that was not installed
        return "unknown"


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """Alembic filter: the revision record is bookkeeping, not part of the models."""
    return not (type_ == "table" and name == REVISIONS_TABLE)


def _compatible_flag(script: Any) -> bool:
    value = getattr(script.module, "compatible", False)
    if not isinstance(value, bool):
        raise ValueError(
            f"migration {script.revision}: 'compatible' must be True or False, got {value!r}"
        )
    return value


def _down(script: Any) -> str | None:
    down = script.down_revision
    if down is None:
        return None
    return down if isinstance(down, str) else ",".join(down)


def record_revisions(conn: Connection, script_dir: ScriptDirectory) -> None:
    """Record every revision from the database's head(s) down to the first, as this code knows
    them (called by the Alembic environment after each upgrade, in its transaction)."""
    from alembic.util import CommandError

    _revisions.create(conn, checkfirst=True)
    heads = _database_heads(conn)
    known: dict[str, Any] = {}
    for head in heads:
        try:
            scripts = list(script_dir.iterate_revisions(head, "base"))
        except CommandError:  # a head this code does not know: recorded by the newer software that made it
            continue
        for s in scripts:
            known[s.revision] = s
    if not known:
        return
    have = {row.revision: row for row in conn.execute(select(_revisions))}
    now = datetime.now(UTC)
    version = software_version()
    for rev, s in known.items():
        compatible, down = _compatible_flag(s), _down(s)
        row = have.get(rev)
        if row is None:
            conn.execute(
                _revisions.insert().values(
                    revision=rev, down_revision=down, compatible=compatible, recorded_at=now, software_version=version
                )
            )
        elif (row.compatible, row.down_revision) != (compatible, down):
            # The scripts this code holds are the truth about themselves.
            conn.execute(
                update(_revisions).where(_revisions.c.revision == rev).values(compatible=compatible, down_revision=down)
            )


def _database_heads(conn: Connection) -> tuple[str, ...]:
    from alembic.migration import MigrationContext

    return tuple(MigrationContext.configure(conn).get_current_heads())


class SchemaState(enum.Enum):
    CURRENT = "current"
    """At this software's head."""
    OLDER = "older"
    """Behind this software: `omnishelf cloud migrate` brings it up."""
    EMPTY = "empty"
    """No omnishelf schema yet."""
    NEWER_COMPATIBLE = "newer-compatible"
    """Ahead of this software, and every newer revision is an expand step: this software may run."""
    NEWER_INCOMPATIBLE = "newer-incompatible"
    """Ahead of this software through a revision older software cannot run against."""
    UNKNOWN = "unknown"
    """A revision neither this software nor the database's record can place (another lineage,
    several heads, or a database migrated by software that kept no record)."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    state: SchemaState
    database: str | None
    """The database's revision (None when empty; several heads comma-joined)."""
    code: str
    """This software's head revision."""
    pending: tuple[str, ...] = ()
    """OLDER: the revisions `migrate` would apply, oldest first."""
    newer: tuple[str, ...] = ()
    """NEWER_*: the database's revisions this software does not have, oldest first."""
    incompatible: tuple[str, ...] = ()
    """NEWER_INCOMPATIBLE: those of `newer` that are not backward compatible."""

    @property
    def runnable(self) -> bool:
        """Software at `code` may run against this database without migrating."""
        return self.state in (SchemaState.CURRENT, SchemaState.NEWER_COMPATIBLE)

    def describe(self, what: str) -> str:
        """One line about `what` (e.g. 'database sqlite:///…') for a person."""
        s = SchemaState
        if self.state is s.CURRENT:
            return f"{what} is at revision {self.code}, the newest this software knows"
        if self.state is s.OLDER:
            return f"{what} is at revision {self.database}, this software needs {self.code}: run 'omnishelf cloud migrate'"
        if self.state is s.EMPTY:
            return f"{what} has no omnishelf schema yet (empty), this software needs {self.code}: run 'omnishelf cloud migrate'"
        if self.state is s.NEWER_COMPATIBLE:
            return (
                f"{what} is at revision {self.database}, newer than this software ({self.code}); "
                f"{_join(self.newer)} {'is' if len(self.newer) == 1 else 'are'} backward compatible, so this "
                f"software runs against it: upgrade omnishelf on this host when you can"
            )
        if self.state is s.NEWER_INCOMPATIBLE:
            return (
                f"{what} revision {self.database} is newer than this software ({self.code}) and "
                f"{_join(self.incompatible)} {'is' if len(self.incompatible) == 1 else 'are'} not backward "
                f"compatible: upgrade omnishelf on this host"
            )
        return (
            f"{what} is at revision {self.database}, which this software ({self.code}) cannot place: not an "
            f"ancestor of its head, and the database records no path to it; upgrade omnishelf on this host or "
            f"check OMNISHELF_DATABASE_URL"
        )


def _join(revs: Iterable[str]) -> str:
    return ", ".join(revs)


class SchemaMismatch(RuntimeError):
    """The database's schema is not one this software may run against; `status` says why."""

    def __init__(self, status: SchemaStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_status(target: Engine | Connection) -> SchemaStatus:
    """Compare the database's revision with this software's head (reads only)."""
    if isinstance(target, Engine):
        with target.connect() as conn:
            return read_status(conn)
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from cloud.db import alembic_config

    script_dir = ScriptDirectory.from_config(alembic_config())
    code = script_dir.get_current_head()
    assert code is not None, "the migrations have one head"
    heads = _database_heads(target)
    if not heads:
        return SchemaStatus(SchemaState.EMPTY, None, code)
    if len(heads) > 1:
        return SchemaStatus(SchemaState.UNKNOWN, ",".join(sorted(heads)), code)
    (head,) = heads
    if head == code:
        return SchemaStatus(SchemaState.CURRENT, head, code)
    try:
        script_dir.get_revision(head)
        known = True
    except CommandError:
        known = False
    if known:
        try:
            between = [s.revision for s in script_dir.iterate_revisions(code, head)]
        except CommandError:  # known, but on another branch
            return SchemaStatus(SchemaState.UNKNOWN, head, code)
        # Newest first, from the code's head down to (not including) the database's: what migrate applies.
        return SchemaStatus(SchemaState.OLDER, head, code, pending=tuple(reversed(between)))
    return _newer(target, head, code)


def _newer(conn: Connection, head: str, code: str) -> SchemaStatus:
    if not inspect(conn).has_table(REVISIONS_TABLE):
        return SchemaStatus(SchemaState.UNKNOWN, head, code)
    record = {row.revision: row for row in conn.execute(select(_revisions))}
    chain: list[Any] = []
    rev: str | None = head
    seen: set[str] = set()
    while rev != code:
        row = record.get(rev) if rev is not None else None
        if row is None or rev in seen or (row.down_revision and "," in row.down_revision):
            # No record, a loop, or a merge: nothing this software can vouch for.
            return SchemaStatus(SchemaState.UNKNOWN, head, code)
        seen.add(row.revision)
        chain.append(row)
        rev = row.down_revision
    newer = tuple(r.revision for r in reversed(chain))
    incompatible = tuple(r.revision for r in reversed(chain) if not r.compatible)
    state = SchemaState.NEWER_INCOMPATIBLE if incompatible else SchemaState.NEWER_COMPATIBLE
    return SchemaStatus(state, head, code, newer=newer, incompatible=incompatible)
