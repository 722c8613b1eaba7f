"""Bus handlers of cloud.trace: a `scan` gets its verdict (a `verdict` command whose `corr` is the
scan's msg_id); a `birth` gets the box its offline lists (`trace_lists` commands).

`trace_lists` is a `command` (`CommandData(name=TRACE_LISTS, args=TraceListsArgs)`, the contract in
`broker.payloads` says how versions and parts work), sent on every birth and after each recall.

A box answering offline puts its answer in the scan's `provisional` field (`ScanData.provisional`);
when the cloud's final verdict differs it raises a `provisional_overturned` alert.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Connection, Table, select

from broker.envelope import MessageType
from broker.payloads import (
    TRACE_LISTS,
    BadUnit,
    BirthData,
    CommandData,
    ListUnit,
    RecalledBatch,
    RecalledUnit,
    ScanData,
    TraceListsArgs,
    VerdictClass,
)
from cloud.bus import Context, Message
from cloud.models import Store
from cloud.trace.events import UNITS
from cloud.trace.models import Alert, Recall
from cloud.trace.rules import TraceRules
from cloud.trace.verify import ScanIn, location_for_store, verify, verify_many

__all__ = ["lists_commands", "on_birth", "on_scan", "on_scans"]

_STORES: Table = Store.__table__  # type: ignore[assignment]
_RECALLS: Table = Recall.__table__  # type: ignore[assignment]
_ALERTS: Table = Alert.__table__  # type: ignore[assignment]
RULES = TraceRules.from_env()


def on_scan(ctx: Context, msg: Message) -> None:
    data = msg.data
    assert isinstance(data, ScanData)
    store_id = ctx.store_of(msg.node)
    if store_id is None:
        # A box assigned to no store scans nowhere: no place to judge clones or diversion by. Its
        # scans stay in the ledger; assigning the box (fleet) makes its next scans count.
        return
    loc_id = location_for_store(ctx.conn, store_id)
    scan = ScanIn(code=data.code, station=data.station, purpose=data.purpose, at=msg.ts, msg_id=msg.msg_id,
                  node=msg.node, location_id=loc_id, position=msg.position, provisional=data.provisional,
                  **_clerk(data))
    verdict = verify(ctx.conn, scan, RULES, ctx.now)
    if ctx.runs(msg.node, TRACE_LISTS):
        ctx.send(msg.node, MessageType.VERDICT, verdict.data, corr=msg.msg_id, expires_in=timedelta(hours=24))


def _clerk(data: ScanData) -> dict[str, str | None]:
    return {"clerk_id": data.clerk.id, "clerk_name": data.clerk.name} if data.clerk else {}


def on_scans(ctx: Context, msgs: Sequence[Message]) -> None:
    """`on_scan` for a batch's scans at once (`cloud.engine.Handler.batch`): the boxes' stores in
    one read, the verdicts by `verify_many`."""
    locs: dict[int, int | None] = {}
    scans: list[ScanIn] = []
    for msg in msgs:
        data = msg.data
        assert isinstance(data, ScanData)
        store_id = ctx.store_of(msg.node)
        if store_id is None:
            continue  # as in on_scan: a box assigned to no store scans nowhere
        if store_id not in locs:
            locs[store_id] = location_for_store(ctx.conn, store_id)
        scans.append(ScanIn(code=data.code, station=data.station, purpose=data.purpose, at=msg.ts, msg_id=msg.msg_id,
                            node=msg.node, location_id=locs[store_id], position=msg.position,
                            provisional=data.provisional, **_clerk(data)))
    verdicts = verify_many(ctx.conn, scans, RULES, ctx.now)
    # A verdict goes to a box with a station, the component that shows it (the one that keeps the
    # offline lists): another box that scans (a simulator, a data feed) would only refuse it, and
    # its refusal would fill both logs. The scan is verified and recorded all the same.
    ctx.send_many([(scan.node or "", MessageType.VERDICT, verdict.data, scan.msg_id)
                   for scan, verdict in zip(scans, verdicts, strict=True) if ctx.runs(scan.node or "", TRACE_LISTS)],
                  expires_in=timedelta(hours=24))


def on_birth(ctx: Context, msg: Message) -> None:
    assert isinstance(msg.data, BirthData)
    if msg.data.commands is not None and TRACE_LISTS not in msg.data.commands:
        return  # no station on this box: it would only refuse the lists
    store_id = ctx.store_of(msg.node)
    if store_id is None:
        return
    if ctx.conn.execute(select(UNITS.c.id).limit(1)).first() is None \
            and ctx.conn.execute(select(_RECALLS.c.id).limit(1)).first() is None:
        return  # traceability is not in use here: nothing to cache, no command to wait for
    for part in lists_commands(ctx.conn, store_id, RULES):
        ctx.send(msg.node, MessageType.COMMAND, part, expires_in=timedelta(hours=12))


def lists_commands(conn: Connection, store_id: int, rules: TraceRules) -> list[CommandData]:
    """The `trace_lists` parts for a store's boxes (`broker.payloads.TraceListsArgs`)."""
    loc_id = location_for_store(conn, store_id)
    store = conn.execute(select(_STORES.c.code).where(_STORES.c.id == store_id)).scalar_one()
    received = [ListUnit(gtin=r.gtin, serial=r.serial, batch=r.batch or None, expiry=r.expiry) for r in conn.execute(
        select(UNITS.c.gtin, UNITS.c.serial, UNITS.c.batch, UNITS.c.expiry)
        .where(UNITS.c.location_id == loc_id, UNITS.c.state == "received"))]
    recalls = conn.execute(select(_RECALLS.c.gtin, _RECALLS.c.batch, _RECALLS.c.serial, _RECALLS.c.reason)).all()
    bad = conn.execute(select(_ALERTS.c.gtin, _ALERTS.c.serial, _ALERTS.c.kind, _ALERTS.c.message)
                       .where(_ALERTS.c.kind.in_(("cloned", "diverted", "batch_or_expiry_mismatch")),
                              _ALERTS.c.serial.is_not(None))
                       .order_by(_ALERTS.c.id.desc()).limit(rules.list_part)).all()
    version = time.time_ns() // 1000
    chunks = [received[i:i + rules.list_part] for i in range(0, len(received), rules.list_part)] or [[]]
    # The lists of recalls and known-bad units go with the first part (they are short).
    first = {
        "recalled_batches": tuple(sorted({RecalledBatch(gtin=r.gtin, batch=r.batch, reason=r.reason[:200])
                                          for r in recalls if r.serial is None and r.batch}, key=str)),
        "recalled_units": tuple(sorted({RecalledUnit(gtin=r.gtin, serial=r.serial, reason=r.reason[:200])
                                        for r in recalls if r.serial is not None}, key=str)),
        "known_bad": tuple(sorted({BadUnit(gtin=r.gtin, serial=r.serial, verdict=VerdictClass(r.kind),
                                           reason=r.message[:200]) for r in bad}, key=str)),
    }
    return [
        CommandData(name=TRACE_LISTS, args=TraceListsArgs(
            version=version, part=i, parts=len(chunks), store=store, received=tuple(chunk),
            **(first if i == 0 else {}),
        ).model_dump(mode="json"))
        for i, chunk in enumerate(chunks)
    ]
