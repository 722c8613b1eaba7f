"""`omnishelf orders`: stock import from CSV (refused whole at a bad row), the inbox, rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from cloud.db import make_engine, migrate
from cloud.orders import service
from tests.orders.conftest import seed


def omnishelf(db: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNISHELF_DATABASE_URL": db}
    return subprocess.run([sys.executable, "-m", "omnishelf.cli", "orders", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_orders_commands(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = make_engine(db)
    migrate(engine)
    seed(engine)
    (tmp_path / "bad.csv").write_text("location,sku,on_hand\nsta,TEA-1,3\nsta,RICE-1,-1\n")
    bad = omnishelf(db, "stock-import", "bad.csv", cwd=tmp_path)
    assert (bad.returncode, bad.stderr.strip().splitlines()[-1]) == (
        2, "omnishelf: error: bad.csv: line 3: on_hand -1 is outside 0..10000000")
    (tmp_path / "ok.csv").write_text("location,sku,on_hand,safety,min_level\nsta,TEA-1,3,1,2\nstb,TEA-1,5,,\n")
    ok = omnishelf(db, "stock-import", "ok.csv", cwd=tmp_path)
    assert (ok.returncode, ok.stdout) == (0, "2 stock rows changed\n")
    with engine.connect() as conn:
        assert service.totals(conn, ["TEA-1"]) == {"TEA-1": (8, 0)}
    (tmp_path / "rules.json").write_text(json.dumps({"groups": [{"name": "g", "rules": [{"name": "r"}]}]}))
    saved = omnishelf(db, "rules", "rules.json", cwd=tmp_path)
    assert (saved.returncode, saved.stdout) == (0, "saved as version 1\n")
    shown = json.loads(omnishelf(db, "rules", cwd=tmp_path).stdout)
    assert shown["version"] == 1 and shown["rules"]["groups"][0]["name"] == "g"
    assert omnishelf(db, "inbox", cwd=tmp_path).stdout == "the inbox is empty\n"
    with engine.connect() as conn:
        assert conn.execute(select(service.AUDIT.c.action).where(service.AUDIT.c.via == "cli")).scalars().all() == [
            "stock.csv", "routing.rules"]
    engine.dispose()
