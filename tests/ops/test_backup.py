"""`omnishelf backup` / `omnishelf restore`: a consistent copy while the cloud runs, and every way a
restore can be refused (non-empty target, corrupt or partial backup, wrong database, no tools)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from broker import topics
from broker.client import BrokerAddress, MqttConnection
from broker.envelope import encode
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from cloud.backup import MANIFEST, BackupError, BackupProblem, backup, read_manifest, restore
from cloud.bus import followers
from cloud.bus.dispatch import Call
from cloud.bus.ledger import Incoming, store_batch
from cloud.bus.worker import CloudBus
from cloud.db import make_engine, migrate
from cloud.models import IngestedMessage, Node
from cloud.schema_check import read_status
from omnishelf.cli import main
from tests.cloud.conftest import box, cloud_settings, running, until, until_db
from tests.conftest import Broker
from tests.ops.conftest import Databases, cloud_env, named_files, omnishelf, serving, sha256_of, table_rows
from tests.ops.data import catalogue_import, populate, scan_envelope
from tests.ops.test_schema_check import HEAD

# Rows of these tables are never updated or deleted while the cloud runs (in these tests): a
# backup must hold every row that existed when it started, and nothing that did not exist when
# it finished. Other tables change in place (nodes, commands, imports, cursors) or are pruned
# (sync files): their keys are compared, and their files checked on disk.
APPEND_ONLY = (
    "ingested_messages", "rejected_messages", "failed_messages", "audit_log", "users", "api_keys", "web_sessions",
    "regions", "stores", "user_regions", "user_stores", "api_key_regions", "api_key_stores", "catalogue_images",
    "catalogue_versions", "catalogue_epoch", "products", "product_gtins",
)
KEYED = ("nodes", "downlink", "catalogue_imports", "follower_cursors")


def _rows(rows: list[tuple[Any, ...]]) -> set[str]:
    return {repr(r) for r in rows}


def _keys(rows: list[tuple[Any, ...]]) -> set[Any]:
    return {r[0] for r in rows}


async def _omnishelf(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "omnishelf.cli", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()


def test_a_second_instance_from_a_backup_taken_during_ingest(
    kind: str, databases: Databases, broker: Broker, tmp_path: Path
) -> None:
    # PostgreSQL: a schema other than public, restored into another database's schema of that name.
    schema = "ops_live" if kind == "postgresql" else None
    src_url, dst_url = databases.new(kind, schema=schema), databases.new(kind, schema=schema)
    cat_src, cat_dst, dest, work = tmp_path / "cat-src", tmp_path / "cat-dst", tmp_path / "backup", tmp_path / "work"
    src = make_engine(src_url)
    migrate(src)
    pop = populate(src, cat_src, work, messages=20)

    async def body() -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, list[tuple[Any, ...]]], int, str]:
        settings = await cloud_settings(broker, src, CATALOGUE_DIR=str(cat_src), CATALOGUE_POLL_S=0.05)
        stop = threading.Event()
        imports: list[list[str]] = []

        def importer() -> None:  # one catalogue import after another, each with new image files
            first = 1000
            while not stop.is_set():
                imports.append(catalogue_import(src, cat_src, work, first, 4, colour=first))
                first += 4

        async with running(CloudBus(settings, src)), box(broker, "live-1") as b:
            await b.birth()

            async def publish() -> None:
                while not stop.is_set():
                    await b.scan()
                    await asyncio.sleep(0.002)

            pub = asyncio.create_task(publish())
            imp = asyncio.create_task(asyncio.to_thread(importer))
            try:
                live = select(func.count()).select_from(IngestedMessage).where(IngestedMessage.node == "live-1")
                await until_db(src, lambda s: (s.scalar(live) or 0) >= 50, timeout=30, what="live ingest")
                await until(lambda: len(imports) >= 2, timeout=60, what="imports running")
                before = table_rows(src)
                code, out, err = await _omnishelf(["backup", str(dest)], cloud_env(tmp_path, src_url, catalogue=cat_src))
                after = table_rows(src)
                during = len(imports)
            finally:
                stop.set()
                await pub
                await imp
            assert code == 0, err
            assert len(after["ingested_messages"]) > len(before["ingested_messages"]), "ingest went on during the backup"
            assert during >= 2
            return before, after, code, out

    before, after, _, out = asyncio.run(body())
    assert f"backup {dest}: database at revision {HEAD}" in out

    done = omnishelf(["restore", str(dest)], cloud_env(tmp_path, dst_url, catalogue=cat_dst))
    assert done.returncode == 0, done.stderr
    assert "row counts and catalogue epoch" in done.stdout and f"is at revision {HEAD}" in done.stdout
    dst = make_engine(dst_url)
    restored = table_rows(dst)

    for t in APPEND_ONLY:
        assert _rows(before[t]) <= _rows(restored[t]), f"{t}: a row that existed before the backup is missing"
        assert _rows(restored[t]) <= _rows(after[t]), f"{t}: a restored row never existed"
    for t in KEYED:
        assert _keys(before[t]) <= _keys(restored[t]) <= _keys(after[t]), t
    assert len(restored["ingested_messages"]) > len(before["ingested_messages"])

    # One snapshot: the box's messages are a gap-free prefix, and its node row agrees with them.
    with dst.connect() as conn:
        seqs = sorted(conn.execute(select(IngestedMessage.seq).where(IngestedMessage.node == "live-1", IngestedMessage.type == "scan")
        ).scalars())
        node = conn.execute(select(Node.seq_contig, Node.seq_high).where(Node.id == "live-1")).one()
    assert seqs == list(range(1, len(seqs) + 1)) and tuple(node) == (len(seqs), len(seqs))

    # Every file the restored database names is there, with the bytes its name promises.
    names = named_files(dst)
    assert names, "the catalogue names files"
    for sha in names:
        path = cat_dst / "files" / sha[:2] / sha
        assert path.is_file() and sha256_of(path) == sha, sha
    manifest = read_manifest(dest)
    assert manifest.missing == () and manifest.damaged == ()
    assert manifest.row_counts["ingested_messages"] == len(restored["ingested_messages"])
    assert manifest.catalogue_epoch == restored["catalogue_epoch"][0][0]

    # The second instance serves what the first had.
    env = cloud_env(tmp_path, dst_url, catalogue=cat_dst, env="production")
    with serving(env, "--no-worker") as base:
        auth = {"Authorization": f"Bearer {pop.keys['hq']}"}
        nodes = httpx.get(f"{base}/nodes", headers=auth, timeout=10).json()
        assert {n["id"] for n in nodes} == {r[0] for r in restored["nodes"]}
        assert next(n for n in nodes if n["id"] == "live-1")["seq_contig"] == len(seqs)
        sku = pop.skus[-1]
        product = httpx.get(f"{base}/catalogue/products/{sku}", headers=auth, timeout=10)
        assert product.status_code == 200 and product.json()["sku"] == sku
        sha = sorted(names)[0]
        got = httpx.get(f"{base}/catalogue/files/{sha}", timeout=10)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    src.dispose()
    dst.dispose()


# -- refusals ---------------------------------------------------------------------------------------


@pytest.fixture
def taken(kind: str, databases: Databases, tmp_path: Path) -> Iterator[tuple[Path, str, Engine]]:
    """A backup of a populated installation: (backup dir, source URL, source engine)."""
    url = databases.new(kind)
    eng = make_engine(url)
    migrate(eng)
    populate(eng, tmp_path / "cat-src", tmp_path / "work", messages=5)
    backup(eng, tmp_path / "cat-src", tmp_path / "backup")
    yield tmp_path / "backup", url, eng
    eng.dispose()


def _restore_cli(dest: Path, url: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 *extra: str, catalogue: Path | None = None) -> tuple[int, str, str]:
    for k, v in cloud_env(tmp, url, catalogue=catalogue or tmp / "cat-dst").items():
        monkeypatch.setenv(k, v)
    code = main(["restore", str(dest), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_restore_refuses_a_target_with_data_then_force_replaces_it(
    taken: tuple[Path, str, Engine], kind: str, databases: Databases, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    dest, _, src = taken
    url = databases.new(kind)
    other = make_engine(url)
    migrate(other)
    from cloud.seed import seed

    seed(other)
    cat = tmp_path / "cat-other"
    (cat / "files" / "ab").mkdir(parents=True)
    (cat / "files" / "ab" / "stale").write_text("old")
    code, _, err = _restore_cli(dest, url, tmp_path, monkeypatch, capsys, catalogue=cat)
    assert code == 2 and "holds data (" in err and f"catalogue directory {cat} holds files" in err
    assert "pass --force to replace it" in err and err.count("\n") == 1
    assert table_rows(other)["regions"] and len(table_rows(other)["users"]) == 0  # untouched
    code, out, err = _restore_cli(dest, url, tmp_path, monkeypatch, capsys, "--force", catalogue=cat)
    assert code == 0, err
    assert table_rows(other) == table_rows(src)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("cat-other.before-restore-")]
    assert len(aside) == 1 and (aside[0] / "files" / "ab" / "stale").read_text() == "old"
    assert f"previous files are in {aside[0]}" in out
    assert not (cat / "files" / "ab" / "stale").exists()
    other.dispose()


def _damage(dest: Path, how: str) -> str:
    manifest = json.loads((dest / MANIFEST).read_text())
    victim = dest / "catalogue" / manifest["files"][3]["path"]
    if how == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        return f"backup file {victim} is corrupt: expected sha256"
    if how == "truncate-db":
        db = dest / manifest["database_file"]["path"]
        db.write_bytes(db.read_bytes()[:-100])
        return f"backup file {db} is corrupt"
    if how == "delete":
        victim.unlink()
        return f"is partial: 1 of {len(manifest['files']) + 1} files are missing ({victim})"
    if how == "no-manifest":
        (dest / MANIFEST).unlink()
        return "holds no manifest.json: not a backup, or a backup that did not finish"
    if how == "garbled":
        (dest / MANIFEST).write_text('{"format": 1, "software_version": ')
        return "is not a readable manifest"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flip", "truncate-db", "delete", "no-manifest", "garbled"])
def test_a_damaged_backup_is_refused_before_anything_is_written(
    how: str, taken: tuple[Path, str, Engine], kind: str, databases: Databases, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    dest = taken[0]
    expected = _damage(dest, how)
    url = databases.new(kind)
    code, _, err = _restore_cli(dest, url, tmp_path, monkeypatch, capsys)
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    eng = make_engine(url)
    assert read_status(eng).database is None and not (tmp_path / "cat-dst").exists()
    eng.dispose()


def test_restore_checks_row_counts_against_the_manifest(
    taken: tuple[Path, str, Engine], kind: str, databases: Databases, tmp_path: Path
) -> None:
    """A manifest that does not describe its dump (edited, or from another backup) is caught."""
    dest = taken[0]
    data = json.loads((dest / MANIFEST).read_text())
    data["rows"]["ingested_messages"] += 1
    (dest / MANIFEST).write_text(json.dumps(data))
    eng = make_engine(databases.new(kind))
    with pytest.raises(BackupError) as caught:
        restore(dest, eng, tmp_path / "cat-dst")
    assert caught.value.reason is BackupProblem.MISMATCH
    n = data["rows"]["ingested_messages"]
    assert f"ingested_messages: {n - 1} rows, the backup has {n}" in str(caught.value)
    eng.dispose()


def test_backup_refusals(kind: str, databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    url = databases.new(kind)
    for k, v in cloud_env(tmp_path, url, catalogue=tmp_path / "cat").items():
        monkeypatch.setenv(k, v)
    if kind == "sqlite":
        assert main(["backup", str(tmp_path / "b0")]) == 2
        err = capsys.readouterr().err
        assert "SQLite file" in err and "does not exist (nothing to back up)" in err
        assert not Path(make_engine(url).url.database or "").exists()  # not created by the attempt
    migrate(url)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["backup", str(tmp_path / "full")]) == 2
    assert "is not empty: give a new directory for each backup" in capsys.readouterr().err
    assert main(["backup", str(tmp_path / "cat" / "bk")]) == 2
    assert "is inside the catalogue directory" in capsys.readouterr().err
    assert main(["backup", str(tmp_path / "ok")]) == 0
    assert f"database at revision {HEAD}" in capsys.readouterr().out


def test_unreachable_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in cloud_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none").items():
        monkeypatch.setenv(k, v)
    for args in (["backup", str(tmp_path / "b")], ["restore", str(tmp_path / "b")]):
        assert main([*args, "--db-timeout", "0"]) == 2
        err = capsys.readouterr().err
        assert "not reachable" in err and err.count("\n") == 1, err


@pytest.mark.postgres
def test_missing_postgresql_tools_are_named(databases: Databases, tmp_path: Path) -> None:
    url = databases.new("postgresql")
    migrate(url)
    env = {**cloud_env(tmp_path, url), "PATH": str(tmp_path / "empty-bin")}
    done = omnishelf(["backup", str(tmp_path / "b")], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "omnishelf: error: pg_dump not found on PATH: install PostgreSQL's client tools of the server's major "
        "version or newer (Debian: apt-get install postgresql-client-15)"
    )
    assert not (tmp_path / "b").exists()  # no half backup left behind


@pytest.mark.postgres
def test_a_backup_goes_back_to_its_own_kind_and_schema(databases: Databases, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sq = databases.new("sqlite")
    migrate(sq)
    backup(make_engine(sq), tmp_path / "cat", tmp_path / "sq-backup")
    code, _, err = _restore_cli(tmp_path / "sq-backup", databases.new("postgresql"), tmp_path, monkeypatch, capsys)
    assert code == 2 and "is of a sqlite database; the target" in err and "'omnishelf cloud move-to' PostgreSQL" in err
    pg = databases.new("postgresql", schema="alpha")
    migrate(pg)
    backup(make_engine(pg), tmp_path / "cat", tmp_path / "pg-backup")
    code, _, err = _restore_cli(tmp_path / "pg-backup", databases.new("postgresql", schema="beta"), tmp_path,
                                monkeypatch, capsys)
    assert code == 2 and "the backup holds PostgreSQL schema 'alpha', the target database" in err
    assert "uses 'beta'" in err


@pytest.mark.postgres
def test_restored_ledger_stays_readable_by_followers_on_another_server(databases: Databases, tmp_path: Path) -> None:
    """Ledger transaction ids from a server further along than the one restored into are shifted
    below it (order kept), so followers read what the new server stores."""
    url = databases.new("postgresql")
    eng = make_engine(url)
    migrate(eng)
    populate(eng, tmp_path / "cat", tmp_path / "work", messages=5)
    far = 10**12  # an old server's transaction counter, far ahead of this one's
    with eng.begin() as conn:
        # A stock movement (the orders engine's ATP feed reads them by txid too).
        conn.execute(text("INSERT INTO orders_movements (location_id, sku, at, kind, on_hand_delta, reserved_delta, "
                          "on_hand_after, reserved_after, source) VALUES (1, 'S', now(), 'level', 1, 0, 1, 0, 'test')"))
    with eng.begin() as conn:
        conn.execute(text("UPDATE orders_movements SET txid = txid + :d"), {"d": far})
        conn.execute(text("UPDATE ingested_messages SET txid = txid + :d"), {"d": far})
        conn.execute(text("UPDATE follower_cursors SET txid = txid + :d"), {"d": far})
        old_order = conn.execute(text("SELECT id FROM ingested_messages ORDER BY txid, id")).scalars().all()
    backup(eng, tmp_path / "cat", tmp_path / "b")
    dst = make_engine(databases.new("postgresql"))
    restore(tmp_path / "b", dst, tmp_path / "cat-dst")
    with dst.connect() as conn:
        assert conn.execute(text("SELECT id FROM ingested_messages ORDER BY txid, id")).scalars().all() == old_order
        top = conn.execute(text("SELECT max(txid) FROM ingested_messages")).scalar_one()
        moved = conn.execute(text("SELECT max(txid) FROM orders_movements")).scalar_one()
        assert max(top, moved) < conn.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one()
    call = Call("ops", "ops-follower", lambda _ctx, _msgs: None, batched=True)
    lag_before = followers.lag(dst, "ops-follower")
    assert lag_before == len(old_order) - 10  # the cursor still stands where it stood
    new = Incoming(topics.up("st0001-k1", "scan"), encode(scan_envelope("st0001-k1", 999)), datetime.now(UTC))
    store_batch(dst, [new])
    # Followers read rows older than every running transaction (other tests share the server): poll.
    seen, deadline = 0, time.monotonic() + 30
    while seen < lag_before + 1 and time.monotonic() < deadline:
        step = followers.step(dst, call, None, 500)
        seen += step.processed
        if not step.processed:
            time.sleep(0.1)
    assert seen == lag_before + 1 and followers.lag(dst, "ops-follower") == 0
    eng.dispose()
    dst.dispose()


# -- the broker's persistence (--broker-data) ------------------------------------------------------


async def _retained_host_state(layout: BrokerLayout, node_password: str) -> bytes | None:
    """The retained state of host cloud-1 as a box subscribing now receives it (None: nothing retained).
    The fence: a message the box publishes to itself after subscribing arrives after any retained one."""
    got: list[tuple[str, bytes]] = []
    conn = MqttConnection(BrokerAddress.from_url(layout.url), "node-a", node_password,
                          on_message=lambda m: got.append((m.topic, bytes(m.payload))))
    await conn.connect()
    try:
        await conn.subscribe([topics.host_state_filter(), topics.node_dn_filter("node-a")])
        cloud = MqttConnection(BrokerAddress.from_url(layout.url), "cloud-1", layout.cloud_users["cloud-1"])
        await cloud.connect()
        await cloud.publish(topics.dn("node-a", "rebirth"), b"fence")
        await cloud.disconnect()
        await until(lambda: any(t == topics.dn("node-a", "rebirth") for t, _ in got), timeout=10, what="the fence")
    finally:
        await conn.disconnect()
    return next((p for t, p in got if t == topics.host_state("cloud-1")), None)


def test_broker_persistence_is_saved_on_request_backed_up_and_restored(
    broker: Broker, databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node_pw, cloud_pw = broker.add_node("node-a"), broker.add_cloud("cloud-1")
    marker = f"online {secrets.token_hex(8)}".encode()

    async def publish_retained() -> None:
        cloud = MqttConnection(BrokerAddress.from_url(broker.url), "cloud-1", cloud_pw)
        await cloud.connect()
        await cloud.publish(topics.host_state("cloud-1"), marker, retain=True)
        await cloud.disconnect()

    asyncio.run(publish_retained())
    live = broker.layout.persistence_path
    # Mosquitto saves every 60 s: the retained message is in its memory, not yet in its file.
    assert not live.exists() or marker not in live.read_bytes()
    url = databases.new("sqlite")
    migrate(url)
    for k, v in cloud_env(tmp_path, url, catalogue=tmp_path / "cat").items():
        monkeypatch.setenv(k, v)

    # Backup: the running broker is asked to save, and the backup holds the message it had in memory.
    assert main(["backup", str(tmp_path / "bk"), "--broker-data", str(broker.layout.data_dir)]) == 0
    out = capsys.readouterr().out
    assert broker.process.proc is not None
    assert "broker persistence: mosquitto.db, " in out and f"saved by Mosquitto (pid {broker.process.proc.pid}) on request" in out
    assert ", the broker persistence, " in out
    manifest = read_manifest(tmp_path / "bk")
    assert manifest.broker_file is not None and manifest.broker_file.path == "broker/mosquitto.db"
    assert marker in (tmp_path / "bk" / "broker" / "mosquitto.db").read_bytes()
    assert marker in live.read_bytes()  # what was copied is what Mosquitto saved

    # A backup without the broker's file, restored with --broker-data: refused before anything is written.
    assert main(["backup", str(tmp_path / "bk-nobroker")]) == 0
    capsys.readouterr()
    target = tmp_path / "restored-broker"
    code, _, err = _restore_cli(tmp_path / "bk-nobroker", databases.new("sqlite"), tmp_path, monkeypatch, capsys,
                                "--broker-data", str(target))
    assert code == 2 and "holds no broker persistence (it was taken without --broker-data)" in err, err
    # Into the running broker's own directory: refused (it would write its own file over it).
    url2 = databases.new("sqlite")
    code, _, err = _restore_cli(tmp_path / "bk", url2, tmp_path, monkeypatch, capsys,
                                "--broker-data", str(broker.layout.data_dir), catalogue=tmp_path / "cat2")
    assert code == 2 and f"Mosquitto (pid {broker.process.proc.pid}) is running with {broker.layout.data_dir}" in err, err
    eng2 = make_engine(url2)
    assert read_status(eng2).database is None and not (tmp_path / "cat2").exists()
    eng2.dispose()

    # Stopped, the broker's own file is taken as it is (it saved on the way out).
    broker.process.stop()
    assert main(["backup", str(tmp_path / "bk-stopped"), "--broker-data", str(broker.layout.data_dir)]) == 0
    assert "the broker is not running: its mosquitto.db as last saved, at " in capsys.readouterr().out
    assert marker in (tmp_path / "bk-stopped" / "broker" / "mosquitto.db").read_bytes()

    # Restored into another broker's data directory, holding a file already: refused, then --force.
    target.mkdir()
    (target / "mosquitto.db").write_bytes(b"older")
    url3 = databases.new("sqlite")
    code, _, err = _restore_cli(tmp_path / "bk", url3, tmp_path, monkeypatch, capsys, "--broker-data", str(target),
                                catalogue=tmp_path / "cat3")
    assert code == 2 and f"broker data directory {target} holds mosquitto.db" in err and "--force" in err, err
    code, out, err = _restore_cli(tmp_path / "bk", url3, tmp_path, monkeypatch, capsys, "--broker-data", str(target),
                                  "--force", catalogue=tmp_path / "cat3")
    assert code == 0, err
    assert f"broker persistence restored into {target / 'mosquitto.db'}" in out
    aside = [p for p in target.iterdir() if p.name.startswith("mosquitto.db.before-restore-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"older" and f"previous persistence file is {aside[0]}" in out
    assert (target / "mosquitto.db").stat().st_mode & 0o777 == 0o600

    # A broker started on the restored directory has the retained message.
    layout = BrokerLayout(target, free_port(), node_users={"node-a": node_pw}, cloud_users={"cloud-1": cloud_pw})
    with MosquittoProcess(layout):
        assert asyncio.run(_retained_host_state(layout, node_pw)) == marker


# -- signage media: files the database names, like the catalogue's ----------------------------------


def test_a_lost_or_damaged_signage_media_file_is_reported(
    kind: str, databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from cloud.seed import seed
    from cloud.signage.demo import setup
    from cloud.signage.media import MEDIA_SUBDIR

    url = databases.new(kind)
    eng = make_engine(url)
    migrate(eng)
    seed(eng)  # the regions and stores the demo's campaigns target
    cat = tmp_path / "cat"
    assert setup(eng, cat / MEDIA_SUBDIR) is not None  # the demo's signage: three images and their thumbnails
    with eng.connect() as conn:
        media = {name: (sha, thumb) for name, sha, thumb in conn.execute(
            text("SELECT name, sha256, thumb_sha256 FROM signage_media"))}
    eng.dispose()

    def rel(sha: str) -> str:
        return f"{MEDIA_SUBDIR}/files/{sha[:2]}/{sha}"

    lost, damaged = media["house.png"][0], media["tea.png"][0]
    (cat / rel(lost)).unlink()
    data = bytearray((cat / rel(damaged)).read_bytes())
    data[len(data) // 2] ^= 0x01
    (cat / rel(damaged)).write_bytes(bytes(data))

    for k, v in cloud_env(tmp_path, url, catalogue=cat).items():
        monkeypatch.setenv(k, v)
    assert main(["backup", str(tmp_path / "bk")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {rel(lost)} is named by the database but was not in the catalogue directory" in err, err
    manifest = read_manifest(tmp_path / "bk")
    assert manifest.missing == (rel(lost),)
    assert manifest.damaged == (rel(damaged),)
    listed = {f.path for f in manifest.files}
    named = {rel(sha) for pair in media.values() for sha in pair}
    assert listed == named - {rel(lost)}, "every other medium and thumbnail is copied and listed"

    # Restored, the loss is said again (the damaged file comes back as it was found).
    code, out, err = _restore_cli(tmp_path / "bk", databases.new(kind), tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "note: 1 catalogue file(s) the database names were not in the source" in out
    assert "a missing image or signage media file must be uploaded again" in out
    assert not (tmp_path / "cat-dst" / rel(lost)).exists()
    assert (tmp_path / "cat-dst" / rel(damaged)).read_bytes() == bytes(data)
