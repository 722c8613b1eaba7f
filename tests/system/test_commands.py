"""Commands to a real box agent through a real worker (separate processes): delivered once and
acknowledged, refused with the box's reason, and still delivered after a kill -9 of the worker
between commit and publish, and after a restart of the box."""

from __future__ import annotations

import signal
import sqlite3
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from broker.envelope import MessageType
from broker.payloads import CommandData
from cloud.bus import downlink
from cloud.db import make_engine, write_transaction
from tests.system.harness import Proc, System, wait_for


def freeze_outside_a_transaction(system: System, worker: Proc) -> None:
    """SIGSTOP the worker where it holds no write lock. On SQLite a worker frozen inside a write
    transaction (a presence or telemetry message it was storing) would keep every other writer out
    until it dies: the database is probed with a write of its own, and the worker let go for a
    moment and frozen again while the probe cannot get in."""
    if system.engine.dialect.name != "sqlite":
        worker.signal(signal.SIGSTOP)  # PostgreSQL: its row locks are not the command's rows
        return
    path = str(system.engine.url.database)
    for _ in range(20):
        worker.signal(signal.SIGSTOP)
        probe = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            worker.signal(signal.SIGCONT)  # frozen mid-transaction: let it finish, then again
        finally:
            probe.close()
    raise AssertionError("the worker was inside a write transaction at each of 20 freezes")


def send(system: System, node: str, name: str) -> uuid.UUID:
    engine = make_engine(system.db_url)
    try:
        with write_transaction(engine) as conn:
            return downlink.send(conn, node, MessageType.COMMAND, CommandData(name=name), engine="test",
                                 now=datetime.now(UTC))
    finally:
        engine.dispose()


def command(system: System, msg_id: uuid.UUID) -> tuple[str, int, str | None]:
    with system.engine.connect() as c:
        row = c.execute(sa.text("SELECT status, attempts, detail FROM downlink WHERE msg_id = :m"),
                        {"m": msg_id if system.engine.dialect.name == "postgresql" else msg_id.hex}).one()
    return str(row[0]), int(row[1]), row[2]


def acks_on_the_box(system: System, node: str, msg_id: uuid.UUID) -> int:
    """How many acks for this command the box ever put in its outbox (its own record)."""
    db = sqlite3.connect(f"file:{system.tmp / node / 'outbox.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox WHERE type = 'ack' AND corr = ?", (str(msg_id),)).fetchone()[0])
    finally:
        db.close()


def test_a_command_is_handled_once_and_acknowledged(system: System) -> None:
    system.worker()
    system.box("st-cmd")
    wait_for(lambda: system.online("st-cmd") is True, 30, "the box online")
    ping = send(system, "st-cmd", "ping")
    wait_for(lambda: command(system, ping)[0] == "delivered", 20, "ping delivered")
    assert command(system, ping)[2] == "pong"
    nope = send(system, "st-cmd", "teleport")
    wait_for(lambda: command(system, nope)[0] == "failed", 20, "teleport refused")
    assert "command 'teleport' is not supported by this box" in (command(system, nope)[2] or "")
    # The relay publishes the same command again (as after a lost ack): the box does not run it twice.
    with system.engine.begin() as c:
        c.execute(sa.text("UPDATE downlink SET status = 'sent', next_attempt_at = :t WHERE status = 'delivered'"),
                  {"t": datetime(2000, 1, 1, tzinfo=UTC).replace(tzinfo=None) if system.engine.dialect.name == "sqlite"
                   else datetime(2000, 1, 1, tzinfo=UTC)})
    wait_for(lambda: command(system, ping)[1] >= 2, 20, "the command published a second time")
    fence = send(system, "st-cmd", "ping")  # handled after the repeat: the repeat has been seen by then
    wait_for(lambda: command(system, fence)[0] == "delivered", 20, "the fence")
    assert acks_on_the_box(system, "st-cmd", ping) == 1


def test_commands_survive_a_worker_killed_between_commit_and_publish_and_a_box_restart(system: System) -> None:
    worker = system.worker()
    box = system.box("st-cmd2")
    wait_for(lambda: system.online("st-cmd2") is True, 30, "the box online")
    freeze_outside_a_transaction(system, worker)  # frozen: it cannot publish what is committed next
    during = send(system, "st-cmd2", "ping")
    worker.kill()
    assert command(system, during)[0] == "pending"
    system.worker()
    wait_for(lambda: command(system, during)[0] == "delivered", 30, "delivered by the next worker")

    box.stop()  # clean stop: its death tells the cloud it is offline
    wait_for(lambda: system.online("st-cmd2") is False, 30, "the box offline")
    while_away = send(system, "st-cmd2", "ping")
    system.box("st-cmd2")
    wait_for(lambda: command(system, while_away)[0] == "delivered", 30, "delivered after the box came back")
    assert command(system, while_away)[1] == 1, "published once: not while the box was away"
    assert acks_on_the_box(system, "st-cmd2", during) == 1
    assert acks_on_the_box(system, "st-cmd2", while_away) == 1
