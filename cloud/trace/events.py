"""Storing EPCIS events and applying what they mean to units (state, place, case, destination).

Used by the EPCIS capture and by the verification (a sale, a receipt, a return at a station are
events too), inside the caller's transaction."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, or_, select, tuple_, update

from cloud.db import insert_for
from cloud.trace.keys import gln_of, key_of, unit_key
from cloud.trace.models import Case, Event, EventEpc, Location, Unit

__all__ = ["event_hash", "store_event"]

UNITS: Table = Unit.__table__  # type: ignore[assignment]
CASES: Table = Case.__table__  # type: ignore[assignment]
EVENTS: Table = Event.__table__  # type: ignore[assignment]
EPCS: Table = EventEpc.__table__  # type: ignore[assignment]
LOCATIONS: Table = Location.__table__  # type: ignore[assignment]

_VOLATILE = {"eventID", "recordTime", "@context", "errorDeclaration"}


def event_hash(event: dict[str, Any]) -> str:
    """A content hash of the event (what it says, not when it was recorded nor its id): the same
    event captured twice without an eventID is recognised. sha-256 over canonical JSON (sorted
    keys), written as a `ni:` URI like the standard's event hash (not the same digest)."""
    body = {k: v for k, v in event.items() if k not in _VOLATILE}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
    return f"ni:///sha-256;{digest}?ver=omnishelf1"


def step_of(value: str | None) -> str | None:
    """'urn:epcglobal:cbv:bizstep:shipping' / 'https://ref.gs1.org/cbv/BizStep-shipping' → 'shipping'."""
    if value is None:
        return None
    for sep in ("bizstep:", "BizStep-", "disp:", "Disp-"):
        if sep in value:
            return value.rsplit(sep, 1)[1]
    return value


def _location_id(conn: Connection, ident: str | None) -> tuple[int | None, int | None, str | None]:
    """(location id, region id, kind) of an SGLN / Digital Link location, by GLN (unique index)."""
    gln = gln_of(ident)
    if gln is None:
        return None, None, None
    row = conn.execute(select(LOCATIONS.c.id, LOCATIONS.c.region_id, LOCATIONS.c.kind)
                       .where(LOCATIONS.c.gln == gln)).first()
    return (row.id, row.region_id, row.kind) if row else (None, None, None)


def _ids(event: dict[str, Any], *names: str) -> list[str]:
    out: list[str] = []
    for name in names:
        value = event.get(name)
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _ilmd(event: dict[str, Any]) -> tuple[str | None, date | None]:
    ilmd = event.get("ilmd") or {}
    lot = expiry = None
    for key, value in ilmd.items():
        name = key.rsplit(":", 1)[-1]
        if name == "lotNumber" and isinstance(value, str):
            lot = value[:20]
        elif name == "itemExpirationDate" and isinstance(value, str):
            try:
                expiry = date.fromisoformat(value[:10])
            except ValueError:
                expiry = None
    return lot, expiry


def store_event(conn: Connection, event: dict[str, Any], event_time: datetime, *, capture_id: uuid.UUID | None,
                now: datetime, location_id: int | None = None,
                units: Sequence[tuple[str, str]] | None = None) -> int | None:
    """Insert one (validated) event and apply it; the new row's id, or None if it was already stored
    (same eventID, or same content hash). `location_id` is where it happened when the event cannot
    say it (a location without a GLN). `units`: the event's epcList as (gtin, serial), each already
    validated, in its order (CSV commissioning): keyed as they are instead of read back from the
    Digital Links, which cost more than the rest of a bulk commissioning together."""
    digest = event_hash(event)
    event_id = str(event.get("eventID") or digest)
    row = {
        "event_id": event_id[:200], "hash": digest, "type": event["type"], "action": event.get("action"),
        "event_time": event_time, "tz_offset": event.get("eventTimeZoneOffset", "+00:00"),
        "biz_step": step_of(event.get("bizStep")), "disposition": step_of(event.get("disposition")),
        "biz_location": (event.get("bizLocation") or {}).get("id"), "read_point": (event.get("readPoint") or {}).get("id"),
        "capture_id": capture_id, "recorded_at": now, "doc": event,
    }
    new_id = conn.execute(insert_for(conn, EVENTS).values(**row).on_conflict_do_nothing().returning(EVENTS.c.id)).scalar()
    if new_id is None:
        return None
    if units is not None:
        keyed: list[tuple[tuple[str, Any], str]] = [((unit_key(g, sn), _Known(g, sn)), "epc") for g, sn in units]
        _index_and_apply(conn, event, row, keyed, event_time, location_id, int(new_id), plain=True)
        return int(new_id)
    parent = event.get("parentID")
    roles: list[tuple[str, str]] = [(e, "epc") for e in _ids(event, "epcList", "inputEPCList", "outputEPCList")]
    roles += [(e, "child") for e in _ids(event, "childEPCs")]
    if isinstance(parent, str):
        roles.append((parent, "parent"))
    for q in [*(event.get("quantityList") or []), *(event.get("childQuantityList") or []),
              *(event.get("inputQuantityList") or []), *(event.get("outputQuantityList") or [])]:
        if isinstance(q, dict) and isinstance(q.get("epcClass"), str):
            roles.append((q["epcClass"], "class"))
    keyed = [(key_of(ident), role) for ident, role in roles]
    _index_and_apply(conn, event, row, keyed, event_time, location_id, int(new_id), plain=False)
    return int(new_id)


class _Known(NamedTuple):
    """A unit named by a caller that validated it (what `_apply` reads of a parsed code)."""

    gtin: str
    serial: str
    sscc: None = None


def _index_and_apply(conn: Connection, event: dict[str, Any], row: dict[str, Any],
                     keyed: list[tuple[tuple[str, Any], str]], event_time: datetime, location_id: int | None,
                     new_id: int, *, plain: bool) -> None:
    if len(keyed) >= COPY_FROM and conn.dialect.name == "postgresql":
        if plain:
            # Validated keys (GS1 character set 82: no tab, newline or backslash): COPY's text
            # format as it is, a few times faster than a row at a time.
            _copy_text(conn, "trace_event_epcs", ("event_id", "epc", "role"),
                       "".join(f"{new_id}\t{k[:200]}\t{role}\n" for (k, _c), role in keyed))
        else:
            _copy(conn, "trace_event_epcs", ("event_id", "epc", "role"),
                  ((new_id, k[:200], role) for (k, _c), role in keyed))
    elif keyed:
        conn.execute(EPCS.insert(), [{"event_id": new_id, "epc": k[:200], "role": role} for (k, _c), role in keyed])
    _apply(conn, event, row, keyed, event_time, location_id, plain=plain)


def _apply(conn: Connection, event: dict[str, Any], row: dict[str, Any], keyed: list[tuple[tuple[str, Any], str]],
           when: datetime, location_id: int | None, *, plain: bool = False) -> None:
    step, action, kind = row["biz_step"], row["action"], row["type"]
    loc_id, _loc_region, loc_kind = _location_id(conn, row["biz_location"])
    if loc_id is None and location_id is not None:
        loc_id = location_id
        loc_kind = conn.execute(select(LOCATIONS.c.kind).where(LOCATIONS.c.id == location_id)).scalar()
    units = [(c.gtin, c.serial) for (_k, c), role in keyed if c is not None and c.gtin and c.serial and role != "parent"]
    cases = [c.sscc for (_k, c), role in keyed if c is not None and c.sscc and role in ("epc", "child")]
    parent_code = next((c for (_k, c), role in keyed if role == "parent" and c is not None), None)

    if kind == "ObjectEvent" and action == "ADD" and units and step in (None, "commissioning"):
        lot, expiry = _ilmd(event)
        if len(units) >= COPY_FROM and conn.dialect.name == "postgresql":
            _copy_units(conn, units, lot, expiry, loc_id, when, plain=plain)
            return
        rows = [{"gtin": g, "serial": s, "batch": lot, "expiry": expiry, "state": "commissioned",
                   "location_id": loc_id, "received_at_store": False, "recalled": False,
                   "seen_location_id": loc_id, "seen_at": when} for g, s in units]
        conn.execute(insert_for(conn, UNITS).on_conflict_do_nothing(index_elements=["gtin", "serial"]), rows)
        return
    if kind == "AggregationEvent" and parent_code is not None and parent_code.sscc:
        sscc = parent_code.sscc
        if action == "ADD":
            conn.execute(insert_for(conn, CASES).values(sscc=sscc, location_id=loc_id)
                         .on_conflict_do_nothing(index_elements=["sscc"]))
            for chunk in _chunks(units):
                conn.execute(update(UNITS).where(_unit_clause(chunk)).values(parent=sscc))
            for child in cases:
                conn.execute(insert_for(conn, CASES).values(sscc=child, parent=sscc, location_id=loc_id)
                             .on_conflict_do_update(index_elements=["sscc"], set_={"parent": sscc}))
        elif action == "DELETE":
            for chunk in _chunks(units):
                conn.execute(update(UNITS).where(_unit_clause(chunk), UNITS.c.parent == sscc).values(parent=None))
            if not units and not cases:
                conn.execute(update(UNITS).where(UNITS.c.parent == sscc).values(parent=None))
            if cases:
                conn.execute(update(CASES).where(CASES.c.sscc.in_(cases)).values(parent=None))
    # Movements apply to the units named and to every unit inside the cases named (a case received
    # at goods-in receives what it holds).
    containers = [*cases] + ([parent_code.sscc] if parent_code is not None and parent_code.sscc else [])
    for i, chunk in enumerate(_chunks(units) or [[]]):
        target = _targets(conn, chunk, containers if i == 0 else [])
        if target is not None:
            _move(conn, event, row, target, containers if i == 0 else [], step, loc_id, loc_kind, when)


COPY_FROM = 500
"""From this many rows, PostgreSQL gets them by COPY (a bulk commissioning: ~5 x an executemany)."""


def _copy(conn: Connection, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    """COPY rows into `table` on the connection's psycopg cursor, in the caller's transaction."""
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _copy_text(conn: Connection, table: str, columns: tuple[str, ...], text: str) -> None:
    """COPY rows already in COPY's text format (tab-separated, `\\N` for NULL) into `table`."""
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(text)


_UNIT_COPY = ("gtin", "serial", "batch", "expiry", "state", "location_id", "received_at_store", "recalled",
              "seen_location_id", "seen_at")


def _copy_units(conn: Connection, units: list[tuple[str, str]], lot: str | None, expiry: date | None,
                loc_id: int | None, when: datetime, *, plain: bool = False) -> None:
    """Commission many units on PostgreSQL by COPY. Straight into the table first, in a savepoint:
    a commissioning names new units nearly always, and this skips a scratch table and an INSERT …
    SELECT (half the time). If one of them is there already, COPY cannot skip it: the savepoint is
    rolled back and they go through a scratch table and one INSERT … ON CONFLICT DO NOTHING, so a
    unit commissioned twice is still stored once."""
    from psycopg.errors import UniqueViolation

    raw: Any = conn.connection.driver_connection
    cols = ", ".join(_UNIT_COPY)
    if plain and (lot is None or _COPY_SAFE.match(lot)):
        # Every value is validated (GS1 character set 82) or ours: COPY's text format as it is.
        tail = "\t".join(["\\N" if v is None else str(v) for v in
                          (lot, expiry.isoformat() if expiry else None, "commissioned", loc_id, "f", "f", loc_id,
                           when.isoformat())])
        text = "".join(f"{g}\t{s}\t{tail}\n" for g, s in units)

        def fill(copy: Any) -> None:
            copy.write(text)
    else:
        def fill(copy: Any) -> None:
            for g, s in units:
                copy.write_row((g, s, lot, expiry, "commissioned", loc_id, False, False, loc_id, when))
    try:
        with conn.begin_nested(), raw.cursor() as cur, cur.copy(f"COPY trace_units ({cols}) FROM STDIN") as copy:
            fill(copy)
        return
    except UniqueViolation:
        pass  # some are commissioned already: the savepoint took the COPY back
    with raw.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS trace_units_in (gtin varchar(14), serial varchar(20), "
                    "batch varchar(20), expiry date, state varchar(16), location_id integer, received_at_store boolean, "
                    "recalled boolean, seen_location_id integer, seen_at timestamptz) ON COMMIT DROP")
        with cur.copy(f"COPY trace_units_in ({cols}) FROM STDIN") as copy:
            fill(copy)
        cur.execute(f"INSERT INTO trace_units ({cols}) SELECT {cols} FROM trace_units_in "
                    "ON CONFLICT (gtin, serial) DO NOTHING")
        cur.execute("DROP TABLE trace_units_in")


_COPY_SAFE = re.compile(r"^[ -\[\]-~]*$")
"""Printable ASCII without a backslash: written into COPY's text format as it is."""


def _chunks(units: list[tuple[str, str]], size: int = 400) -> list[list[tuple[str, str]]]:
    """Pieces small enough for SQLite's bound-parameter limit."""
    return [units[i:i + size] for i in range(0, len(units), size)]


def _move(conn: Connection, event: dict[str, Any], row: dict[str, Any], target: Any, containers: list[str],
          step: str | None, loc_id: int | None, loc_kind: str | None, when: datetime) -> None:
    values: dict[str, Any] = {}
    if step == "shipping":
        dest_ids = [d.get("destination") for d in (event.get("destinationList") or []) if isinstance(d, dict)
                    and str(d.get("type", "")).endswith("location")]
        dest_ids = dest_ids or [d.get("destination") for d in (event.get("destinationList") or []) if isinstance(d, dict)]
        for dest in dest_ids:
            dest_id, dest_region, _k = _location_id(conn, dest)
            if dest_id is not None:
                values.update(ship_dest_id=dest_id, ship_region_id=dest_region)
                break
        values["state"] = "in_transit"
    elif step == "receiving":
        values.update(state="received", location_id=loc_id)
        if loc_kind == "store":
            values["received_at_store"] = True
    elif step == "retail_selling":
        values.update(state="sold", sold_at=when, sold_location_id=loc_id)
    elif step in ("decommissioning", "destroying") or row["disposition"] in ("destroyed", "inactive"):
        values["state"] = "decommissioned"
    elif step == "returning":
        values.update(state="received", location_id=loc_id, sold_at=None)
    if values:
        conn.execute(update(UNITS).where(target).values(**values))
    if loc_id is not None:
        conn.execute(update(UNITS).where(target, or_(UNITS.c.seen_at.is_(None), UNITS.c.seen_at < when))
                     .values(seen_location_id=loc_id, seen_at=when))
        if containers:
            conn.execute(update(CASES).where(CASES.c.sscc.in_(containers)).values(location_id=loc_id))


def _unit_clause(units: Iterable[tuple[str, str]]) -> Any:
    return tuple_(UNITS.c.gtin, UNITS.c.serial).in_(list(units))


def _targets(conn: Connection, units: list[tuple[str, str]], containers: list[str]) -> Any:
    clauses = []
    if units:
        clauses.append(_unit_clause(units))
    if containers:
        # Units directly in the cases, and in cases inside them (a pallet of cases): two levels.
        inner = list(conn.execute(select(CASES.c.sscc).where(CASES.c.parent.in_(containers))).scalars())
        clauses.append(UNITS.c.parent.in_([*containers, *inner]))
    return or_(*clauses) if clauses else None
