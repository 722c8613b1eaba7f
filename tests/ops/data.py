"""A populated installation: a row in every table of every engine, and catalogue files on disk."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from sqlalchemy import Engine, func, select

from broker import topics
from broker.envelope import Envelope, MessageType, encode
from broker.payloads import BirthData, CommandData, ScanData
from cloud.access import service
from cloud.access.bootstrap import create_api_key
from cloud.bus import downlink, followers
from cloud.bus.dispatch import Call, record_failure
from cloud.bus.ledger import Incoming, store_batch
from cloud.bus.message import Message
from cloud.catalogue.importer import import_file
from cloud.catalogue.sync import announce, ensure_artifacts
from cloud.db import write_transaction
from cloud.models import IngestedMessage
from cloud.seed import DEMO_STORES, seed
from cloud.settings import Settings
from tests.catalogue.gen import HEADER, product_row

__all__ = ["PASSWORD", "Populated", "catalogue_import", "png", "populate", "scan_envelope"]

PASSWORD = "correct horse battery"


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@dataclass
class Populated:
    keys: dict[str, str] = field(default_factory=dict)
    """name → API key secret."""
    users: tuple[str, ...] = ()
    skus: list[str] = field(default_factory=list)


def catalogue_import(eng: Engine, catalogue: Path, work: Path, first: int, n: int, *, colour: int = 0) -> list[str]:
    """Import `n` products from SKU number `first`, each with its own image (new files)."""
    pics = work / f"pics-{first}"
    pics.mkdir(parents=True, exist_ok=True)
    src = work / f"import-{first}.csv"
    rows = []
    for i in range(first, first + n):
        name = f"p{i}.png"
        (pics / name).write_bytes(png(((i * 37 + colour) % 256, (i * 91) % 256, (i * 13 + colour) % 256)))
        rows.append(product_row(i, images=name))
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    result = import_file(eng, src, catalogue, image_dir=pics)
    assert result.rows_failed == 0, result
    return [r[0] for r in rows]


def scan_envelope(node: str, seq: int) -> Envelope:
    return Envelope(type=MessageType.SCAN, node=node, session=1, seq=seq, data=ScanData(code=f"690123456789{seq % 10}", station="s1"))


def populate(eng: Engine, catalogue: Path, work: Path, *, messages: int = 100) -> Populated:
    """Fill every engine's tables: the demo fleet, users with grants, API keys, a console session,
    audit rows, births and scans in the ledger, rejected and failed messages, commands, a follower
    cursor, two catalogue imports with images, sync files and their announcement."""
    out = Populated()
    seed(eng)
    with service.write_session(eng) as s, s.begin():
        service.create_user(s, "cli:test", "ops-admin", PASSWORD, "admin", via="cli")
        service.create_user(s, "cli:test", "ops-east", PASSWORD, "regional", regions=["east"], via="cli")
        service.create_user(s, "cli:test", "ops-st3", PASSWORD, "store", stores=["st0003"], via="cli")
    out.users = ("ops-admin", "ops-east", "ops-st3")
    out.keys = {
        "hq": create_api_key(eng, "ops-hq", "hq"),
        "east": create_api_key(eng, "ops-east-key", "regional", regions=["east"]),
        "st3": create_api_key(eng, "ops-st3-key", "store", stores=["st0003"],
                              expires_at=datetime.now(UTC) + timedelta(days=30)),
    }
    policy = service.access_policy(Settings(DATABASE_URL=eng.url.render_as_string(hide_password=False)))
    assert service.sign_in(eng, "ops-admin", PASSWORD, "127.0.0.1", policy) is not None

    now = datetime.now(UTC)
    items: list[Incoming] = []
    for store, node in DEMO_STORES.items():
        birth = Envelope(type=MessageType.BIRTH, node=node, session=1, seq=0,
                         data=BirthData(software_version="1.0.0", config_hash="abc", store=store, last_seq=0))
        items.append(Incoming(topics.up(node, "birth"), encode(birth), now))
        items += [Incoming(topics.up(node, "scan"), encode(scan_envelope(node, seq)), now) for seq in range(1, messages + 1)]
    items.append(Incoming(topics.up("st0001-k1", "scan"), b"\xff not json", now))
    items.append(Incoming(topics.up("st0002-k1", "scan"), b'{"v": 1, "type": "scan"}', now))
    outcome = store_batch(eng, items)
    assert outcome.stored == len(items) - 2 and sum(outcome.rejected.values()) == 2, outcome

    boom = Call("ops", "tests.ops.data.boom", lambda _ctx, _msg: None)
    with write_transaction(eng) as conn:
        row = conn.execute(select(IngestedMessage.__table__).where(IngestedMessage.type == "scan").limit(1)).one()
        record_failure(conn, boom, Message.from_row(row), RuntimeError("boom: a handler bug"), now)
        downlink.send(conn, "st0001-k1", MessageType.COMMAND, CommandData(name="restock", args={"sku": "X-1"}), engine="ops")
        downlink.send(conn, "st0003-k1", MessageType.COMMAND, CommandData(name="ping"), engine="ops", expires_in=None)
    # A cursor part-way through the ledger. On PostgreSQL a follower reads only rows older than
    # every running transaction, and the server is shared: wait for the horizon to pass them.
    call = Call("ops", "ops-follower", lambda _ctx, _msgs: None, batched=True)
    deadline = time.monotonic() + 30
    while (step := followers.step(eng, call, None, 10)).processed == 0:
        assert time.monotonic() < deadline, "the follower read nothing for 30 s"
        time.sleep(0.1)
    assert step.processed == 10

    out.skus = catalogue_import(eng, catalogue, work, 1, 20)
    ann = ensure_artifacts(eng, catalogue, keep=4)
    assert ann is not None
    out.skus += catalogue_import(eng, catalogue, work, 21, 10, colour=7)
    ann = ensure_artifacts(eng, catalogue, keep=4)
    assert ann is not None
    announce(eng, ann)
    return out


def ledger_count(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(IngestedMessage)).scalar_one())
