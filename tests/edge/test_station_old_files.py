"""Box files written before the clerk's station (no clerk on scans, no on-hand in the kiosk's stock
figures) open and keep what they held; new rows carry the new fields."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.kiosk.shelf_db import ShelfDb
from edge.station.station_db import StationDb


def test_an_older_station_file_gains_the_clerk_column(tmp_path: Path) -> None:
    path = tmp_path / "station.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE scans (n INTEGER PRIMARY KEY AUTOINCREMENT, scan_id TEXT NOT NULL UNIQUE, code TEXT NOT NULL, "
                 "symbology TEXT, station TEXT NOT NULL, purpose TEXT NOT NULL, source TEXT NOT NULL, "
                 "scanned_at TEXT NOT NULL, verdict TEXT, provisional INTEGER, body TEXT, decided_at TEXT)")
    conn.execute("INSERT INTO scans (scan_id, code, station, purpose, source, scanned_at) "
                 "VALUES ('old', '4006381333931', 'till', 'verify', 'api', '2026-11-01T00:00:00Z')")
    conn.commit()
    conn.close()
    db = StationDb(path)
    try:
        assert db.scan("old") is not None and db.scan("old")["clerk"] is None  # type: ignore[index]
        db.add_scan("new", "4006381333931", None, "till", "sell", "api", {"id": "7", "name": "Mei Chen"})
        assert db.scan("new")["clerk"] == {"id": "7", "name": "Mei Chen"}  # type: ignore[index]
    finally:
        db.close()
    StationDb(path).close()  # opened again: the column is there, nothing to add


def test_an_older_shelf_file_gains_on_hand(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE stock (sku TEXT NOT NULL, location TEXT NOT NULL, kind TEXT, atp INTEGER NOT NULL, "
                 "fetched_at REAL NOT NULL, PRIMARY KEY (sku, location)) WITHOUT ROWID")
    conn.execute("INSERT INTO stock VALUES ('TEA-1', 'st1', 'store', 3, 1000.0)")
    conn.commit()
    conn.close()
    db = ShelfDb(path)
    try:
        figures, _ = db.figures("TEA-1")
        assert [(f.location, f.atp, f.on_hand) for f in figures] == [("st1", 3, None)]
        db.put_figures([("TEA-1", "st2", "store", 4, 6)], replace_sku=None)
        figures, _ = db.figures("TEA-1")
        assert sorted((f.location, f.atp, f.on_hand) for f in figures) == [("st1", 3, None), ("st2", 4, 6)]
    finally:
        db.close()
