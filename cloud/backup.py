"""Backup and restore of a cloud installation: its database and its catalogue files, with a manifest.

The database is copied with the engine's own tools: SQLite's online backup API (in one step, from
one read transaction: a consistent snapshot while writers go on in WAL mode), PostgreSQL's `pg_dump
-Fc` inside an exported snapshot. The manifest's row counts and the list of files the database
names are read in that same snapshot, so the manifest describes exactly what was dumped.

Order, for files. The catalogue store, and signage's beside it (`signage/`), are content-addressed
and append-mostly: a file is written before the row naming it commits (import, sync-file build,
media upload), and the only files ever deleted are sync files, by the pruner, after it deleted
their rows (`cloud.catalogue.sync._prune`). So:

1. copy the catalogue directory (the bulk, no lock held);
2. hold off the pruner (PostgreSQL: `LOCK TABLE catalogue_artifacts IN SHARE MODE`, which stops
   only sync-file rows from being added or deleted; SQLite: `BEGIN IMMEDIATE`, every writer waits),
   fix the database snapshot, copy the sync files it names, let go: a few milliseconds;
3. dump the snapshot (`pg_dump --snapshot`, or SQLite's backup API from the open read transaction)
   while the cloud goes on writing;
4. copy the catalogue files that appeared meanwhile: every image or report the snapshot names was
   written before its row, and images are never deleted.

Every file the dumped database names is then in the backup; one that was already missing from the
catalogue directory is listed in the manifest (`missing`) and reported, never hidden.

Layout of a backup directory:

    manifest.json            written last: a directory without it is not a (finished) backup
    database.sqlite | database.pgdump
    catalogue/...            the catalogue directory's files, same relative paths
    broker/mosquitto.db      with `broker_dir` only: the broker's persistence (see below)

The broker's persistence (queued messages, sessions of clients that are away, retained messages)
is another program's file, on the broker's host: it is included only when asked (`broker_dir`, the
`--data-dir` of `omnishelf broker` on this host). Mosquitto cannot be asked for a snapshot at a
chosen moment, but it can be asked to save now (SIGUSR1), and each save is a complete file renamed
into place: the backup asks, waits for the new file and copies it (just before the database
snapshot). The two are then moments apart, not one snapshot: what reached the cloud in between is
in both (the ledger stores a message once), and what the broker had already handed over and the
database did not yet hold the cloud asks the boxes for again (gap repair).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from broker.mosquitto import PERSISTENCE_FILE, MosquittoError, running_mosquitto, save_persistence
from cloud.db import SQLITE_BUSY_TIMEOUT_MS
from cloud.schema_check import REVISIONS_TABLE, software_version
from cloud.signage.media import MEDIA_SUBDIR

__all__ = [
    "BackupError",
    "BackupProblem",
    "FileEntry",
    "Manifest",
    "RestoreResult",
    "backup",
    "read_manifest",
    "restore",
]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
FILES_DIR = "catalogue"
BROKER_FILE = f"broker/{PERSISTENCE_FILE}"
DUMP_NAME = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
# Tables whose rows a fresh migration creates by itself: a target holding only these is empty.
_BOOKKEEPING = {"alembic_version", REVISIONS_TABLE, "catalogue_epoch", "orders_versions"}


class BackupProblem(enum.Enum):
    MISSING_TOOL = "missing-tool"
    """pg_dump / pg_restore not installed."""
    TOOL_FAILED = "tool-failed"
    """pg_dump / pg_restore / SQLite returned an error."""
    UNREACHABLE = "unreachable"
    """The database does not answer or does not exist."""
    NOT_EMPTY = "not-empty"
    """The backup directory, or the restore target, already holds data."""
    NOT_A_BACKUP = "not-a-backup"
    """No manifest: not a backup, or one that never finished."""
    PARTIAL = "partial"
    """Files the manifest lists are missing."""
    CORRUPT = "corrupt"
    """A file's bytes differ from the manifest, or the manifest itself is unreadable."""
    WRONG_DATABASE = "wrong-database"
    """The backup is of another kind of database than the target (SQLite vs PostgreSQL), or of another schema."""
    MISMATCH = "mismatch"
    """The restored database does not hold what the manifest says."""
    NOT_IN_BACKUP = "not-in-backup"
    """A part the restore was asked for (the broker's persistence) is not in the backup."""
    BROKER_RUNNING = "broker-running"
    """The broker whose persistence is to be restored is running (it would overwrite the file)."""


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; `reason` says which kind, the message says what to do."""

    def __init__(self, reason: BackupProblem, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    """Relative to the catalogue directory (and to `catalogue/` in the backup), with '/'."""
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    format: int
    software_version: str
    started_at: str
    """When the backup started (UTC, ISO 8601)."""
    snapshot_at: str
    """When the database snapshot was taken: the backup holds the database as of then."""
    finished_at: str
    dialect: str
    """sqlite or postgresql."""
    source: str
    """The database URL it was taken from (without password)."""
    schema: str | None
    """PostgreSQL: the schema dumped (the restore target must use the same one)."""
    database_file: FileEntry
    schema_revision: str | None
    catalogue_epoch: str | None
    rows: tuple[tuple[str, int], ...]
    """(table, row count) for every table in the snapshot."""
    catalogue_dir: str
    files: tuple[FileEntry, ...]
    missing: tuple[str, ...] = ()
    """Files the database names that were not in the catalogue directory (see the module doc)."""
    damaged: tuple[str, ...] = ()
    """Content-addressed files whose bytes did not match their name in the source (copied as found)."""
    broker_file: FileEntry | None = None
    """The broker's persistence (path relative to the backup directory), when it was asked for."""
    broker_saved: str | None = None
    """How that file came to be: saved on request, or when the broker had last saved it."""

    @property
    def row_counts(self) -> dict[str, int]:
        return dict(self.rows)

    def to_json(self) -> str:
        data = asdict(self)
        data["rows"] = dict(self.rows)
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, raw: str) -> Manifest:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(
            format=int(data["format"]),
            software_version=str(data["software_version"]),
            started_at=str(data["started_at"]),
            snapshot_at=str(data["snapshot_at"]),
            finished_at=str(data["finished_at"]),
            dialect=str(data["dialect"]),
            source=str(data["source"]),
            schema=data.get("schema"),
            database_file=FileEntry(**data["database_file"]),
            schema_revision=data.get("schema_revision"),
            catalogue_epoch=data.get("catalogue_epoch"),
            rows=tuple((str(k), int(v)) for k, v in dict(data["rows"]).items()),
            catalogue_dir=str(data["catalogue_dir"]),
            files=tuple(FileEntry(**f) for f in data["files"]),
            missing=tuple(data.get("missing", ())),
            damaged=tuple(data.get("damaged", ())),
            broker_file=FileEntry(**data["broker_file"]) if data.get("broker_file") else None,
            broker_saved=data.get("broker_saved"),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- files ---------------------------------------------------------------------------------------


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy `src` to `dst` (written aside, then renamed) and return (sha256, size) of the bytes copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return digest.hexdigest(), size


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _content_name(rel: str) -> str | None:
    """The sha256 a content-addressed file must have (the catalogue's files/ab/abcd…, signage
    media's signage/files/ab/abcd…), else None."""
    parts = rel.split("/")
    if parts[0] == MEDIA_SUBDIR:
        parts = parts[1:]
    if len(parts) == 3 and parts[0] == "files" and _SHA.match(parts[2]) and parts[1] == parts[2][:2]:
        return parts[2]
    return None


@dataclass
class _Copied:
    entry: FileEntry
    mtime_ns: int


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith(".tmp-"):  # a file being written by FileStore.put (renamed when done)
                yield Path(dirpath) / name


def _copy_catalogue(src_root: Path, dst_root: Path, copied: dict[str, _Copied], damaged: set[str]) -> int:
    """Copy files new (or changed) since the last pass; return how many were copied."""
    n = 0
    for path in _walk(src_root):
        rel = path.relative_to(src_root).as_posix()
        try:
            st = path.stat()
        except FileNotFoundError:  # pruned since listed
            continue
        prev = copied.get(rel)
        if prev is not None and (prev.entry.size, prev.mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue
        try:
            sha, size = _copy_hashing(path, dst_root / rel)
        except FileNotFoundError:
            continue
        expected = _content_name(rel)
        if expected is not None and expected != sha:
            damaged.add(rel)
            log.warning("catalogue file %s does not match its name (its bytes hash to %s): copied as found", rel, sha)
        copied[rel] = _Copied(FileEntry(rel, sha, size), st.st_mtime_ns)
        n += 1
    return n


# -- database facts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    rows: tuple[tuple[str, int], ...]
    revision: str | None
    epoch: str | None
    referenced: frozenset[str]
    """Catalogue files (relative paths) the database names."""


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def table_rows(conn: Connection) -> dict[str, int]:
    """Row count of every table in the connection's schema (all of them, not only the models')."""
    names = sorted(inspect(conn).get_table_names())
    return {t: int(conn.execute(text(f"SELECT count(*) FROM {_quote(conn, t)}")).scalar_one()) for t in names}


def _facts(conn: Connection, catalogue_dir: Path) -> _Facts:
    tables = set(inspect(conn).get_table_names())
    rows = table_rows(conn)
    revision = None
    if "alembic_version" in tables:
        revision = ",".join(sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())) or None
    epoch = None
    if "catalogue_epoch" in tables:
        epoch = conn.execute(text("SELECT epoch FROM catalogue_epoch")).scalars().first()
    refs: set[str] = set()

    def add_sha(sha: Any, store: str = "") -> None:
        if isinstance(sha, str) and _SHA.match(sha):
            refs.add(f"{store}files/{sha[:2]}/{sha}")

    if "catalogue_images" in tables:
        for sha, thumb in conn.execute(text("SELECT sha256, thumb_sha256 FROM catalogue_images")):
            add_sha(sha)
            add_sha(thumb)
    if "catalogue_artifacts" in tables:
        for (sha,) in conn.execute(text("SELECT sha256 FROM catalogue_artifacts")):
            add_sha(sha)
    if "signage_media" in tables:
        # Media and their thumbnails, in their own store beside the catalogue's (cloud.signage.media).
        for sha, thumb in conn.execute(text("SELECT sha256, thumb_sha256 FROM signage_media")):
            add_sha(sha, f"{MEDIA_SUBDIR}/")
            add_sha(thumb, f"{MEDIA_SUBDIR}/")
    if "catalogue_imports" in tables:
        root = catalogue_dir.absolute()
        for (report,) in conn.execute(text("SELECT report_path FROM catalogue_imports WHERE report_path IS NOT NULL")):
            with contextlib.suppress(ValueError):  # a report outside the catalogue directory is not ours to copy
                refs.add(Path(report).absolute().relative_to(root).as_posix())
    return _Facts(tuple(rows.items()), revision, str(epoch) if epoch is not None else None, frozenset(refs))


# -- PostgreSQL tools ----------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            BackupProblem.MISSING_TOOL,
            f"{name} not found on PATH: install PostgreSQL's client tools of the server's major version or newer "
            f"(Debian: apt-get install postgresql-client-15)",
        )
    return path


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for `url` and the environment carrying its password (never on the
    command line, where `ps` shows it)."""
    plain = URL.create("postgresql", username=url.username, host=url.host, port=url.port, database=url.database,
                       query=url.query)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else f"exit code {proc.returncode}")
        raise BackupError(BackupProblem.TOOL_FAILED, f"{what} failed: {detail.strip()}")


# -- backup ---------------------------------------------------------------------------------------


@dataclass
class _Files:
    """The catalogue copy in progress."""

    src: Path
    dst: Path
    copied: dict[str, _Copied] = field(default_factory=dict)
    damaged: set[str] = field(default_factory=set)

    def copy_all(self) -> int:
        return _copy_catalogue(self.src, self.dst, self.copied, self.damaged)

    def copy_sync_files(self, shas: Iterable[Any]) -> None:
        """Copy these content-addressed files now (the sync files a snapshot names: they are the
        only files ever deleted, by the pruner, once newer versions exist)."""
        for sha in shas:
            if not (isinstance(sha, str) and _SHA.match(sha)):
                continue
            rel = f"files/{sha[:2]}/{sha}"
            if rel in self.copied:
                continue
            path = self.src / rel
            try:
                st = path.stat()
                digest, size = _copy_hashing(path, self.dst / rel)
            except FileNotFoundError:  # reported as missing by the caller's check
                continue
            if digest != sha:
                self.damaged.add(rel)
                log.warning("catalogue file %s does not match its name (its bytes hash to %s): copied as found", rel, digest)
            self.copied[rel] = _Copied(FileEntry(rel, digest, size), st.st_mtime_ns)


GUARD_TIMEOUT_S = 60.0
"""How long the backup waits for a running write transaction before it can hold off the pruner."""


def _snapshot_sqlite(engine: Engine, dump: Path, files: _Files) -> tuple[_Facts, None]:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(BackupProblem.UNREACHABLE, f"database {engine.url} is not a SQLite file this command can copy")
    if not Path(database).is_file():
        raise BackupError(BackupProblem.UNREACHABLE, f"database file {database} does not exist")
    try:
        src = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        guard = sqlite3.connect(database, timeout=GUARD_TIMEOUT_S, isolation_level=None)
        dst = sqlite3.connect(dump)
        try:
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # Hold every writer (the pruner among them) while the snapshot is fixed and the sync
            # files it names are copied: milliseconds, not the whole copy.
            guard.execute("BEGIN IMMEDIATE")
            try:
                src.execute("BEGIN")  # the snapshot starts with the first read below
                if "catalogue_artifacts" in tables:
                    files.copy_sync_files(r[0] for r in src.execute("SELECT sha256 FROM catalogue_artifacts"))
                else:
                    src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                guard.execute("ROLLBACK")
            # The whole database in one step, from `src`'s open read transaction: exactly the
            # snapshot above, while writers in WAL mode carry on.
            src.backup(dst, pages=-1)
            src.execute("COMMIT")
            # A self-contained file: no -wal or -shm beside it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            guard.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(BackupProblem.TOOL_FAILED, f"SQLite backup of {database} failed: {exc}") from None
    copy = create_engine(f"sqlite:///{dump}")
    try:
        with copy.connect() as conn:
            return _facts(conn, files.src), None
    finally:
        copy.dispose()


def _snapshot_postgres(engine: Engine, dump: Path, files: _Files) -> tuple[_Facts, str]:
    pg_dump = _tool("pg_dump")
    uri, env = _libpq(engine.url)
    with engine.connect() as guard, engine.connect() as conn:
        has_artifacts = inspect(guard).has_table("catalogue_artifacts")
        guard.rollback()
        if has_artifacts:
            # SHARE mode: no sync file row is added or pruned until released, while everything
            # else (ingest, imports) goes on. Taken before the snapshot, so that no prune is
            # half done in it.
            guard.execute(text(f"SET LOCAL lock_timeout = '{int(GUARD_TIMEOUT_S * 1000)}ms'"))
            guard.execute(text("LOCK TABLE catalogue_artifacts IN SHARE MODE"))
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            # pg_dump joins this transaction's snapshot: the dump, the row counts and the file list
            # below all see the same database.
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            schema = conn.execute(text("SELECT current_schema()")).scalar_one_or_none()
            if schema is None:
                raise BackupError(BackupProblem.UNREACHABLE, f"database {engine.url} has no schema on its search_path")
            if has_artifacts:
                files.copy_sync_files(conn.execute(text("SELECT sha256 FROM catalogue_artifacts")).scalars())
            guard.rollback()
            _run(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--schema={schema}", f"--file={dump}",
                 "--no-password", f"--dbname={uri}"],
                env,
                "pg_dump",
            )
            return _facts(conn, files.src), str(schema)


def _check_destination(dest: Path, catalogue_dir: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(
            BackupProblem.NOT_EMPTY, f"backup directory {dest} is not empty: give a new directory for each backup"
        )
    cat = catalogue_dir.absolute()
    if dest.absolute() == cat or cat in dest.absolute().parents:
        raise BackupError(
            BackupProblem.NOT_EMPTY,
            f"backup directory {dest} is inside the catalogue directory {catalogue_dir}: put backups elsewhere",
        )


def backup(engine: Engine, catalogue_dir: Path, dest: Path, *, broker_dir: Path | None = None,
           say: Callable[[str], None] = log.info) -> Manifest:
    """Back up the database of `engine` and the files of `catalogue_dir` into `dest` (new or empty),
    and with `broker_dir` (the data directory of `omnishelf broker` on this host) the broker's
    persistence file."""
    dialect = engine.dialect.name
    if dialect not in DUMP_NAME:
        raise BackupError(BackupProblem.WRONG_DATABASE, f"cannot back up a {dialect} database")
    _check_destination(dest, catalogue_dir)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _backup(engine, catalogue_dir, dest, broker_dir, say)
    except BaseException:
        # Leave no half backup behind (it would look like one to a hurried reader of the directory).
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _copy_broker(broker_dir: Path, dest: Path, say: Callable[[str], None]) -> tuple[FileEntry, str]:
    try:
        saved = save_persistence(broker_dir)
    except MosquittoError as exc:
        raise BackupError(BackupProblem.TOOL_FAILED, f"broker persistence: {exc}") from None
    # A later save renames a new file over this one: the copy goes on reading the complete old one.
    sha, size = _copy_hashing(saved.path, dest / BROKER_FILE)
    say(f"broker persistence: {PERSISTENCE_FILE}, {size / 1e3:.1f} kB, {saved.detail}")
    return FileEntry(BROKER_FILE, sha, size), saved.detail


def _backup(engine: Engine, catalogue_dir: Path, dest: Path, broker_dir: Path | None,
            say: Callable[[str], None]) -> Manifest:
    dialect = engine.dialect.name
    started = _now()
    files = _Files(catalogue_dir, dest / FILES_DIR)
    # First the bulk, with no lock held; the snapshot's sync files under the guard; the rest after.
    n = files.copy_all()
    say(f"catalogue files, first pass: {n} copied")
    # Just before the database's snapshot, so that the two are as close as they can be (module doc).
    broker_file, broker_saved = _copy_broker(broker_dir, dest, say) if broker_dir is not None else (None, None)
    dump = dest / DUMP_NAME[dialect]
    snapshot_at = _now()
    try:
        if dialect == "sqlite":
            facts, schema = _snapshot_sqlite(engine, dump, files)
        else:
            facts, schema = _snapshot_postgres(engine, dump, files)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BackupError(BackupProblem.UNREACHABLE, f"reading database {engine.url} failed: {reason}") from None
    sha, size = _hash_file(dump)
    say(f"database: {sum(c for _, c in facts.rows)} rows in {len(facts.rows)} tables, {size / 1e6:.1f} MB dump")
    n = files.copy_all()
    say(f"catalogue files, second pass: {n} copied ({len(files.copied)} in all)")
    missing = sorted(facts.referenced - files.copied.keys())
    for rel in missing:
        log.warning("catalogue file %s is named by the database but was not in %s", rel, catalogue_dir)
    manifest = Manifest(
        format=FORMAT,
        software_version=software_version(),
        started_at=started,
        snapshot_at=snapshot_at,
        finished_at=_now(),
        dialect=dialect,
        source=engine.url.render_as_string(hide_password=True),
        schema=schema,
        database_file=FileEntry(dump.name, sha, size),
        schema_revision=facts.revision,
        catalogue_epoch=facts.epoch,
        rows=facts.rows,
        catalogue_dir=str(catalogue_dir.absolute()),
        files=tuple(c.entry for _, c in sorted(files.copied.items())),
        missing=tuple(missing),
        damaged=tuple(sorted(files.damaged)),
        broker_file=broker_file,
        broker_saved=broker_saved,
    )
    # Written last, aside then renamed: its presence means the backup finished.
    tmp = dest / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest / MANIFEST)
    return manifest


# -- restore --------------------------------------------------------------------------------------


def read_manifest(source: Path) -> Manifest:
    path = source / MANIFEST
    if not source.is_dir():
        raise BackupError(BackupProblem.NOT_A_BACKUP, f"{source} is not a directory")
    if not path.is_file():
        raise BackupError(
            BackupProblem.NOT_A_BACKUP,
            f"{source} holds no {MANIFEST}: not a backup, or a backup that did not finish",
        )
    try:
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(BackupProblem.CORRUPT, f"{path} is not a readable manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise BackupError(
            BackupProblem.CORRUPT, f"{path} is backup format {manifest.format}; this software reads format {FORMAT}"
        )
    if manifest.dialect not in DUMP_NAME or manifest.database_file.path != DUMP_NAME[manifest.dialect]:
        raise BackupError(BackupProblem.CORRUPT, f"{path} names an unexpected database file or kind")
    return manifest


def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return not p.is_absolute() and ".." not in p.parts and rel == p.as_posix()


def verify(source: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists is there with its size and sha256."""
    entries = [(source / manifest.database_file.path, manifest.database_file)]
    if manifest.broker_file is not None:
        if manifest.broker_file.path != BROKER_FILE:
            raise BackupError(BackupProblem.CORRUPT, f"{source / MANIFEST} names an unexpected broker file")
        entries.append((source / BROKER_FILE, manifest.broker_file))
    for entry in manifest.files:
        if not _safe_rel(entry.path):
            raise BackupError(BackupProblem.CORRUPT, f"{source / MANIFEST} names a file outside the backup: {entry.path!r}")
        entries.append((source / FILES_DIR / entry.path, entry))
    absent = [str(path) for path, _ in entries if not path.is_file()]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise BackupError(
            BackupProblem.PARTIAL,
            f"backup {source} is partial: {len(absent)} of {len(entries)} files are missing ({absent[0]}{more})",
        )
    for path, entry in entries:
        sha, size = _hash_file(path)
        if (sha, size) != (entry.sha256, entry.size):
            raise BackupError(
                BackupProblem.CORRUPT,
                f"backup file {path} is corrupt: expected sha256 {entry.sha256[:16]}… ({entry.size} bytes), "
                f"found {sha[:16]}… ({size} bytes)",
            )


@dataclass(frozen=True, slots=True)
class RestoreResult:
    manifest: Manifest
    rows: int
    files: int
    bytes: int
    moved_aside: Path | None = None
    """--force: where the catalogue directory's previous files went."""
    notes: tuple[str, ...] = field(default=())
    broker_file: Path | None = None
    """Where the broker's persistence was restored to (with `broker_dir`)."""
    broker_moved_aside: Path | None = None
    """--force: where the broker's previous persistence file went."""


def _data_tables(conn: Connection) -> list[str]:
    """Tables of the target that hold rows a migration did not create by itself."""
    full = []
    for t in inspect(conn).get_table_names():
        if t in _BOOKKEEPING:
            continue
        if conn.execute(text(f"SELECT 1 FROM {_quote(conn, t)} LIMIT 1")).first() is not None:
            full.append(t)
    return full


def _has_files(root: Path) -> bool:
    return any(True for _ in _walk(root))


def _clear_postgres(conn: Connection) -> None:
    """Drop what pg_restore would collide with: every table, view and sequence of the schema, and its
    own functions (the orders stock log's trigger function, migration 0018; not an extension's)."""
    insp = inspect(conn)
    prep = conn.dialect.identifier_preparer
    for kind, names in (("VIEW", insp.get_view_names()), ("TABLE", insp.get_table_names()),
                        ("SEQUENCE", insp.get_sequence_names())):
        if names:
            conn.execute(text(f"DROP {kind} IF EXISTS {', '.join(prep.quote(n) for n in names)} CASCADE"))
    functions = conn.execute(text(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND p.prokind = 'f' AND NOT EXISTS "
        "(SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
    )).scalars().all()
    if functions:
        conn.execute(text(f"DROP FUNCTION IF EXISTS {', '.join(functions)} CASCADE"))


def _restore_sqlite(engine: Engine, dump: Path) -> None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(BackupProblem.WRONG_DATABASE, f"database {engine.url} is not a SQLite file to restore into")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine.dispose()
    try:
        src = sqlite3.connect(f"{dump.absolute().as_uri()}?mode=ro", uri=True)
        dst = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            # Through SQLite itself (not a file copy): the target's WAL and locks are respected, and
            # every page of the target is replaced.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(BackupProblem.TOOL_FAILED, f"SQLite restore into {database} failed: {exc}") from None


def _restore_postgres(engine: Engine, dump: Path, manifest: Manifest, work: Path) -> None:
    pg_restore = _tool("pg_restore")
    uri, env = _libpq(engine.url)
    with engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one_or_none()
        if schema != manifest.schema:
            raise BackupError(
                BackupProblem.WRONG_DATABASE,
                f"the backup holds PostgreSQL schema {manifest.schema!r}, the target database {engine.url} uses "
                f"{schema!r}: restore into a database whose search_path starts with {manifest.schema!r}",
            )
        _clear_postgres(conn)
    # The schema itself already exists in the target (it is where we are restoring to): restore
    # everything but its CREATE SCHEMA (and its comment), which would fail.
    listing = subprocess.run([pg_restore, "--list", str(dump)], env=env, capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        raise BackupError(BackupProblem.CORRUPT, f"pg_restore cannot read {dump}: {listing.stderr.strip()[:300]}")
    own_schema = re.compile(rf"^\d+; \d+ \d+ (SCHEMA - |COMMENT - SCHEMA ){re.escape(str(manifest.schema))} ")
    entries = [ln for ln in listing.stdout.splitlines() if not own_schema.match(ln)]
    list_file = work / "restore.list"
    list_file.write_text("\n".join(entries) + "\n")
    engine.dispose()
    _run(
        [pg_restore, "--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges", "--no-password",
         f"--use-list={list_file}", f"--dbname={uri}", str(dump)],
        env,
        "pg_restore",
    )
    shift = _rebase_txids(engine)
    if shift:
        log.info("ledger transaction ids shifted down by %d to sit below this server's", shift)


def _rebase_txids(engine: Engine) -> int:
    """Keep followers reading after a restore into another PostgreSQL server.

    Ledger rows record the id of the transaction that stored them, and followers read them in
    (txid, id) order up to the oldest running transaction (cloud.bus.followers). Restored into a
    server whose transaction counter is behind the old one's, the restored ids would look newer
    than everything the new server writes: followers would skip new rows. Shifting every restored
    txid, and every follower's cursor, down by the same amount keeps their order and puts them
    below the new server's counter. A no-op when restoring into the server the backup came from.
    The orders engine's stock movements carry txids too (its ATP feed reads them by a cursor row of
    `follower_cursors`), and so does its log of changed stock rows (the routing workers' holders
    caches read it by (txid, id); left above the counter, its rows would be read again by every
    batch): they are shifted with the rest.
    """
    with engine.begin() as conn:
        present = set(inspect(conn).get_table_names())
        if not {"ingested_messages", "follower_cursors"} <= present:
            return 0
        now = int(conn.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
        orders = [t for t in ("orders_movements", "orders_stock_changes") if t in present]
        top = max(
            int(conn.execute(text("SELECT coalesce(max(txid), 0) FROM ingested_messages")).scalar_one()),
            int(conn.execute(text("SELECT coalesce(max(txid), 0) FROM follower_cursors")).scalar_one()),
            *(int(conn.execute(text(f"SELECT coalesce(max(txid), 0) FROM {t}")).scalar_one()) for t in orders),
        )
        if top < now:
            return 0
        shift = top - now + 1
        conn.execute(text("UPDATE ingested_messages SET txid = txid - :d WHERE txid IS NOT NULL"), {"d": shift})
        conn.execute(text("UPDATE follower_cursors SET txid = txid - :d"), {"d": shift})
        for t in orders:
            conn.execute(text(f"UPDATE {t} SET txid = txid - :d WHERE txid IS NOT NULL"), {"d": shift})
        return shift


def _move_aside(root: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = root.with_name(f"{root.name}.before-restore-{stamp}")
    try:
        root.rename(aside)
    except OSError as exc:
        raise BackupError(
            BackupProblem.NOT_EMPTY,
            f"cannot move the catalogue directory {root} aside to {aside} ({exc.strerror}): empty it yourself",
        ) from None
    return aside


def _check_broker_target(source: Path, manifest: Manifest, broker_dir: Path) -> Path | None:
    """Refuse a broker target the restore must not write into; return its persistence file if it has one."""
    if manifest.broker_file is None:
        raise BackupError(
            BackupProblem.NOT_IN_BACKUP,
            f"backup {source} holds no broker persistence (it was taken without --broker-data): "
            f"restore without --broker-data",
        )
    pid = running_mosquitto(broker_dir)
    if pid is not None:
        raise BackupError(
            BackupProblem.BROKER_RUNNING,
            f"Mosquitto (pid {pid}) is running with {broker_dir}: stop the broker first (systemctl stop "
            f"omnishelf-broker), or it writes its own {PERSISTENCE_FILE} over the restored one",
        )
    current = broker_dir / PERSISTENCE_FILE
    return current if current.exists() else None


def restore(source: Path, engine: Engine, catalogue_dir: Path, *, force: bool = False,
            broker_dir: Path | None = None, say: Callable[[str], None] = log.info) -> RestoreResult:
    """Restore the backup in `source` into the database of `engine` and `catalogue_dir`, and with
    `broker_dir` the broker's persistence into that (stopped) broker's data directory."""
    manifest = read_manifest(source)
    if manifest.dialect != engine.dialect.name:
        hint = (" (restore it into SQLite, then 'omnishelf cloud move-to' PostgreSQL)"
                if manifest.dialect == "sqlite" else "")
        raise BackupError(
            BackupProblem.WRONG_DATABASE,
            f"backup {source} is of a {manifest.dialect} database; the target {engine.url} is "
            f"{engine.dialect.name}{hint}",
        )
    verify(source, manifest)
    say(f"backup verified: database and {len(manifest.files)} catalogue files match the manifest")
    try:
        with engine.connect() as conn:
            full = _data_tables(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BackupError(BackupProblem.UNREACHABLE, f"database {engine.url} cannot be read: {reason}") from None
    has_files = _has_files(catalogue_dir)
    old_broker_file = _check_broker_target(source, manifest, broker_dir) if broker_dir is not None else None
    if (full or has_files or old_broker_file) and not force:
        what = []
        if full:
            what.append(f"database {engine.url} holds data ({', '.join(full[:3])}{'…' if len(full) > 3 else ''})")
        if has_files:
            what.append(f"catalogue directory {catalogue_dir} holds files")
        if old_broker_file:
            what.append(f"broker data directory {broker_dir} holds {PERSISTENCE_FILE}")
        raise BackupError(BackupProblem.NOT_EMPTY, f"{' and '.join(what)}: restore into an empty target, or pass --force to replace it")
    moved = _move_aside(catalogue_dir) if has_files else None
    dump = source / manifest.database_file.path
    try:
        if manifest.dialect == "sqlite":
            _restore_sqlite(engine, dump)
        else:
            with tempfile.TemporaryDirectory() as work:
                _restore_postgres(engine, dump, manifest, Path(work))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BackupError(BackupProblem.UNREACHABLE, f"restoring into {engine.url} failed: {reason}") from None
    say(f"database restored into {engine.url}")
    total = 0
    for entry in manifest.files:
        sha, size = _copy_hashing(source / FILES_DIR / entry.path, catalogue_dir / entry.path)
        if (sha, size) != (entry.sha256, entry.size):  # changed since verify(): the backup is being altered
            raise BackupError(BackupProblem.CORRUPT, f"backup file {entry.path} changed while it was being restored")
        total += size
    say(f"{len(manifest.files)} catalogue files restored into {catalogue_dir} ({total / 1e6:.1f} MB)")
    broker_file = broker_aside = None
    if broker_dir is not None and manifest.broker_file is not None:
        broker_file, broker_aside = _restore_broker(source, manifest.broker_file, broker_dir, old_broker_file)
        say(f"broker persistence restored into {broker_file} (in the backup: {manifest.broker_saved})")
    with engine.connect() as conn:
        counts = table_rows(conn)
        epoch = conn.execute(text("SELECT epoch FROM catalogue_epoch")).scalars().first() if "catalogue_epoch" in counts else None
    _compare(manifest, counts, engine)
    if manifest.catalogue_epoch is not None and epoch != manifest.catalogue_epoch:
        raise BackupError(
            BackupProblem.MISMATCH,
            f"restored catalogue epoch {epoch!r} differs from the backup's {manifest.catalogue_epoch!r}",
        )
    notes = []
    if manifest.missing:
        notes.append(
            f"{len(manifest.missing)} catalogue file(s) the database names were not in the source when the backup "
            f"was taken (listed in the manifest's 'missing'); sync files of the newest version are rebuilt on start, "
            f"a missing image or signage media file must be uploaded again"
        )
    return RestoreResult(manifest, sum(counts.values()), len(manifest.files), total, moved, tuple(notes),
                         broker_file, broker_aside)


def _restore_broker(source: Path, entry: FileEntry, broker_dir: Path, old: Path | None) -> tuple[Path, Path | None]:
    """Put the backup's persistence file into `broker_dir` (the broker stopped: checked before);
    a file already there is kept aside."""
    broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    aside = None
    if old is not None:
        aside = old.with_name(f"{old.name}.before-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
        old.rename(aside)
    target = broker_dir / PERSISTENCE_FILE
    # Written aside and renamed (mode 0600, as Mosquitto writes it): a broker started meanwhile
    # never reads half a file.
    sha, size = _copy_hashing(source / entry.path, target)
    if (sha, size) != (entry.sha256, entry.size):
        raise BackupError(BackupProblem.CORRUPT, f"backup file {entry.path} changed while it was being restored")
    return target, aside


def _compare(manifest: Manifest, counts: dict[str, int], engine: Engine) -> None:
    wrong = [
        f"{table}: {counts.get(table, 'no table')} rows, the backup has {expected}"
        for table, expected in manifest.rows
        if counts.get(table) != expected
    ]
    extra = sorted(set(counts) - set(manifest.row_counts))
    wrong += [f"{table}: not in the backup" for table in extra]
    if wrong:
        raise BackupError(
            BackupProblem.MISMATCH,
            f"restored database {engine.url} differs from the backup: {'; '.join(_first(wrong, 3))}",
        )


def _first(items: Iterable[str], n: int) -> list[str]:
    out = list(items)
    return out[:n] + ([f"and {len(out) - n} more"] if len(out) > n else [])
