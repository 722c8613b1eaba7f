"""What a box keeps across a software update or a rollback: an older outbox is upgraded in place,
one written by a later release is refused with one line, not misread."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from edge.outbox_db import SCHEMA, OutboxDb
from firmware_config import BrokerConfig, NodeConfig, OutboxConfig, write_config


def _config(tmp: Path) -> Path:
    cfg = NodeConfig(node_id="st1-up", store_id="st1",
                     broker=BrokerConfig(url="mqtt://127.0.0.1:1", password="x"),
                     outbox=OutboxConfig(path=tmp / "outbox.db"))
    path = tmp / "box.yaml"
    write_config(cfg, path)
    return path


def test_an_outbox_from_a_later_release_is_refused_and_left_intact(tmp_path: Path) -> None:
    store = OutboxDb(tmp_path / "outbox.db")
    store.close()
    db = sqlite3.connect(tmp_path / "outbox.db")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA + 1,))
    db.commit()
    db.close()
    before = (tmp_path / "outbox.db").read_bytes()
    done = subprocess.run([sys.executable, "-m", "omnishelf.cli", "edge", "run", "--config", str(_config(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"has layout {SCHEMA + 1}, written by a later omnishelf; this version reads layout {SCHEMA}" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("omnishelf: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert (tmp_path / "outbox.db").read_bytes() == before, "the refused outbox was changed"


def test_an_outbox_of_an_older_layout_is_upgraded_in_place(tmp_path: Path) -> None:
    store = OutboxDb(tmp_path / "outbox.db")
    store.close()
    db = sqlite3.connect(tmp_path / "outbox.db")
    db.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
    db.execute("DROP TABLE commands")
    db.commit()
    db.close()
    store = OutboxDb(tmp_path / "outbox.db")
    try:
        assert store._meta("schema") == SCHEMA
    finally:
        store.close()
