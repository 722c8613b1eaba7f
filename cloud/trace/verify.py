"""The verdict on one scan: the same rules for a scan over the bus and over REST.

`verify()` runs in the caller's transaction (the ledger's for a bus scan): it reads only by unique
keys (the unit by GTIN + serial, its last scan by id, recalls by GTIN + batch, the location by store
or GLN), records the scan with its verdict, applies the scan's effect (a sale, a receipt, a return,
an undo: each an EPCIS event) and raises the alerts HQ must see.

Rules, first match wins: malformed → plain product code (untracked) → unknown → printed batch or
expiry differ → duplicate scan at the same station (answered like the first) → recalled →
decommissioned → cloned (impossible travel since its last sighting) → sold before (a return or an
undo at this store is accepted instead) → expired → diverted (region differs from its last shipping
destination's) → never received by a store → genuine.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, String, Table, bindparam, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import ARRAY

import gs1
from broker.payloads import ParsedCode, ScanPurpose, VerdictClass, VerdictData, VerdictRule
from cloud.models import Region, Store
from cloud.trace.events import EPCS, EVENTS, LOCATIONS, UNITS
from cloud.trace.hotsql import InsertRows, InsertRowsUpdating, Prepared, UpdateRows
from cloud.trace.keys import case_key, unit_key
from cloud.trace.models import Alert, Recall, Scan
from cloud.trace.rules import TraceRules

__all__ = ["ScanIn", "Verdict", "forget_master_data", "haversine_km", "location_for_store", "verify", "verify_many"]

SCANS: Table = Scan.__table__  # type: ignore[assignment]
RECALLS: Table = Recall.__table__  # type: ignore[assignment]
ALERTS: Table = Alert.__table__  # type: ignore[assignment]
_STORES: Table = Store.__table__  # type: ignore[assignment]
_REGIONS: Table = Region.__table__  # type: ignore[assignment]

ALERTING = {VerdictClass.CLONED: "cloned", VerdictClass.DIVERTED: "diverted", VerdictClass.UNKNOWN_CODE: "unknown_code",
            VerdictClass.BATCH_OR_EXPIRY_MISMATCH: "batch_or_expiry_mismatch"}
"""Verdicts that raise an alert whatever the purpose (a recall or a resale alerts on a sale attempt)."""


@dataclass(frozen=True, slots=True)
class ScanIn:
    code: str
    station: str
    purpose: ScanPurpose
    at: datetime
    """When the scan happened (the box's clock if it was synced, else the cloud's receive time)."""
    msg_id: uuid.UUID
    node: str | None = None
    location_id: int | None = None
    position: tuple[int, int] | None = None
    provisional: VerdictClass | None = None
    clerk_id: str | None = None
    """Who scanned, when the box named its signed-in clerk (kept on the scan and its events)."""
    clerk_name: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    data: VerdictData
    scan_row: int


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def location_for_store(conn: Connection, store_id: int) -> int | None:
    """The location of a store, made from the store's row the first time it is needed. Which
    location is a store's never changes once made, so it is cached for the process (every scan
    batch asks: one round trip of nine, on PostgreSQL)."""
    key = (str(conn.engine.url), store_id)
    hit = _store_loc_cache.get(key)
    if hit is not None:
        return hit
    found = conn.execute(select(LOCATIONS.c.id).where(LOCATIONS.c.store_id == store_id)).scalar()
    if found is not None:
        if len(_store_loc_cache) > 10_000:
            _store_loc_cache.clear()
        # Not `found` made below: this transaction may still roll back.
        _store_loc_cache[key] = int(found)
        return int(found)
    store = conn.execute(select(_STORES).where(_STORES.c.id == store_id)).first()
    if store is None:
        return None
    return int(conn.execute(LOCATIONS.insert().values(
        code=store.code, kind="store", name=store.name, gln=None, region_id=store.region_id, lat=store.lat,
        lon=store.lon, store_id=store.id).returning(LOCATIONS.c.id)).scalar_one())


_LOC_TTL_S = 30.0
_store_loc_cache: dict[tuple[str, int], int] = {}
_loc_cache: dict[tuple[str, int], tuple[float, Any]] = {}
_LOC_BY_ID = select(LOCATIONS).where(LOCATIONS.c.id == bindparam("id"))
_LAST = SCANS.alias("last_scan")
_RECALL = RECALLS.alias("batch_recall")
_batch_recall = select(func.min(_RECALL.c.id)).where(
    _RECALL.c.gtin == UNITS.c.gtin, _RECALL.c.batch == UNITS.c.batch, _RECALL.c.serial.is_(None)
).scalar_subquery()
_UNIT_BY_KEY = Prepared(
    select(UNITS, _LAST.c.station.label("last_station"), _LAST.c.node.label("last_node"),
           _LAST.c.location_id.label("last_location_id"), _LAST.c.purpose.label("last_purpose"),
           _LAST.c.at.label("last_at"), _LAST.c.verdict.label("last_verdict"), _LAST.c.rule.label("last_rule"),
           _LAST.c.message.label("last_message"), _LAST.c.msg_id.label("last_msg_id"),
           _batch_recall.label("recall_id"))
    .select_from(UNITS.outerjoin(_LAST, _LAST.c.id == UNITS.c.last_scan_id))
    .where(UNITS.c.gtin == bindparam("gtin"), UNITS.c.serial == bindparam("serial"))
)
"""The unit with all the rules need in one statement: its last scan (the duplicate rule) and the
first recall of its batch (by the unique key's index and the recalls' (gtin, batch) index)."""
_RECALL_REASON = Prepared(select(RECALLS.c.reason).where(RECALLS.c.id == bindparam("id")))
_SCAN_COLUMNS = ("msg_id", "node", "station", "purpose", "code", "gtin", "serial", "location_id", "at", "verdict",
                 "rule", "message", "evidence", "provisional", "clerk_id", "clerk_name")
_INSERT_SCAN = Prepared(SCANS.insert().values({c: bindparam(c) for c in _SCAN_COLUMNS}).returning(SCANS.c.id))
_INSERT_SCANS = InsertRows(SCANS, _SCAN_COLUMNS, ("id", "msg_id"), json_text=("evidence",))
"""A batch's scans in one statement (rows as tuples in `_SCAN_COLUMNS` order, the evidence already
encoded: `_evidence_json`), matched back by their unique msg_id."""
_AT = _SCAN_COLUMNS.index("at")
_EVENT_COLUMNS = ("event_id", "hash", "type", "action", "event_time", "tz_offset", "biz_step", "disposition",
                  "biz_location", "read_point", "capture_id", "recorded_at", "doc")
_INSERT_EVENTS = InsertRows(EVENTS, _EVENT_COLUMNS, ("id", "event_id"))
_INSERT_EPCS = InsertRows(EPCS, ("event_id", "epc", "role"))
_ALERT_COLUMNS = ("kind", "at", "code", "gtin", "serial", "location_id", "store_id", "region_id", "scan_id", "message",
                  "evidence")
_INSERT_ALERTS = InsertRows(ALERTS, _ALERT_COLUMNS)


def _loc(conn: Connection, loc_id: int | None) -> Any:
    """A location row, from a per-process cache of `_LOC_TTL_S` seconds: locations change rarely
    (coordinates, region) and every scan needs one or two of them."""
    if loc_id is None:
        return None
    key = (str(conn.engine.url), loc_id)
    hit = _loc_cache.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < _LOC_TTL_S:
        return hit[1]
    row = conn.execute(_LOC_BY_ID, {"id": loc_id}).first()
    if row is not None:
        if len(_loc_cache) > 10_000:
            _loc_cache.clear()
        _loc_cache[key] = (now, row)
    return row


def _loc_brief(loc: Any) -> dict[str, Any] | None:
    if loc is None:
        return None
    return {"code": loc.code, "kind": loc.kind, "name": loc.name, "gln": loc.gln, "lat": loc.lat, "lon": loc.lon,
            "region_id": loc.region_id}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo is UTC else value.astimezone(UTC)).isoformat()  # most are UTC already


def _parsed_fields(code: gs1.Code) -> dict[str, Any]:
    # Field by field: `dataclasses.asdict` deep-copies and cost a tenth of a verification.
    return {"form": code.form, "gtin": code.gtin, "serial": code.serial, "batch": code.batch, "expiry": code.expiry,
            "sscc": code.sscc, "epc": code.epc}


def _parsed(code: gs1.Code) -> ParsedCode:
    return ParsedCode(**_parsed_fields(code))


def verify(conn: Connection, scan: ScanIn, rules: TraceRules, now: datetime) -> Verdict:
    """Decide, record and apply one scan (see the module's docstring for the order of the rules)."""
    loc = _loc(conn, scan.location_id)
    parsed: ParsedCode | None = None
    unit: Any = None
    try:
        code = gs1.parse_code(scan.code)
    except gs1.CodeError as exc:
        cls, rule, message = VerdictClass.MALFORMED, VerdictRule.PARSE_ERROR, str(exc)
        evidence: dict[str, Any] = {"reason": exc.reason.value, "ai": exc.ai, "expected": exc.expected,
                                    "found": exc.found}
    else:
        parsed = _parsed(code)
        if code.is_unit:
            unit = _UNIT_BY_KEY.first(conn, {"gtin": code.gtin, "serial": code.serial})
        cls, rule, message, evidence = _decide(conn, scan, code, unit, loc, rules, now)
    evidence["location"] = _loc_brief(loc)
    evidence["scanned_at"] = _iso(scan.at)
    scan_id = int(_INSERT_SCAN.first(conn, dict(
        msg_id=scan.msg_id, node=scan.node, station=scan.station, purpose=scan.purpose.value, code=scan.code,
        gtin=parsed.gtin if parsed else None, serial=parsed.serial if parsed else None, location_id=scan.location_id,
        at=scan.at, verdict=cls.value, rule=rule.value, message=message[:500], evidence=evidence,
        provisional=scan.provisional.value if scan.provisional else None, clerk_id=scan.clerk_id,
        clerk_name=scan.clerk_name,
    ))[0])
    if unit is not None:
        _effects(conn, scan, unit, loc, cls, rule, scan_id, now)
    for kind, text, facts in _alerts_of(scan, cls, message, evidence):
        conn.execute(ALERTS.insert().values(_alert_row(kind, scan, parsed, loc, scan_id, text, facts, now)))
    data = VerdictData(scan_id=scan.msg_id, code=scan.code[:1024], parsed=parsed, verdict=cls, rule=rule,
                       message=message[:500], evidence=evidence, provisional=False, decided_at=now)
    return Verdict(data, scan_id)


_UNIT_COLUMNS = _UNIT_BY_KEY.statement.selected_columns  # type: ignore[attr-defined]


def _units_by_keys(keys: Any, on: ColumnElement[bool], *, binary: bool = False) -> Prepared:
    return Prepared(select(*_UNIT_COLUMNS).select_from(
        keys.join(UNITS, on).outerjoin(_LAST, _LAST.c.id == UNITS.c.last_scan_id)), binary=binary)


_JSON_KEYS = func.json_each(bindparam("keys", type_=String)).table_valued("value", name="k")
_PG_KEYS = func.unnest(bindparam("gtins", type_=ARRAY(String)), bindparam("serials", type_=ARRAY(String))) \
    .table_valued("gtin", "serial").render_derived(name="k")
_UNITS_BY_KEYS = {
    "sqlite": _units_by_keys(_JSON_KEYS, (UNITS.c.gtin == func.json_extract(_JSON_KEYS.c.value, literal_column("'$[0]'")))
                             & (UNITS.c.serial == func.json_extract(_JSON_KEYS.c.value, literal_column("'$[1]'")))),
    "postgresql": _units_by_keys(_PG_KEYS, (UNITS.c.gtin == _PG_KEYS.c.gtin) & (UNITS.c.serial == _PG_KEYS.c.serial),
                                 binary=True),
}
"""`_UNIT_BY_KEY` for many units in one statement: the keys come as one JSON array (SQLite) or two
arrays (PostgreSQL, in binary form: no element quoted) and drive the join, one probe of the unique
(gtin, serial) index each. (A `(gtin, serial) IN (VALUES …)` made SQLite scan the table.)"""
_UNIT_STATE = ("seen_location_id", "seen_at", "state", "location_id", "received_at_store", "sold_at",
               "sold_location_id", "sold_node", "sold_session", "sold_seq")
"""The unit's columns a scan may change (`_effect`), besides `last_scan_id`: written back once per
unit and batch, those that changed."""
_writes: dict[tuple[str, ...], UpdateRows] = {}


def _write_unit(columns: tuple[str, ...]) -> UpdateRows:
    """The units' UPDATE of `last_scan_id` and `columns` (a handful of shapes: seen, sold, received,
    returned), built once each."""
    found = _writes.get(columns)
    if found is None:
        found = _writes[columns] = UpdateRows(UNITS, "id", ("last_scan_id", *columns))
    return found


_writes_with_scans: dict[tuple[str, ...], InsertRowsUpdating] = {}


def _write_scans_and_units(columns: tuple[str, ...]) -> InsertRowsUpdating:
    """PostgreSQL: `_INSERT_SCANS` and `_write_unit(columns)` as one statement, built once each."""
    found = _writes_with_scans.get(columns)
    if found is None:
        found = _writes_with_scans[columns] = InsertRowsUpdating(_INSERT_SCANS, "msg_id", UNITS, "id", "last_scan_id",
                                                                 columns)
    return found


class _Unit:
    """A unit as `_UNIT_BY_KEY` reads it, changed in memory by each scan of the batch in turn."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)
        self.changed: set[str] = set()

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...  # the row's columns


def verify_many(conn: Connection, scans: Sequence[ScanIn], rules: TraceRules, now: datetime) -> list[Verdict]:
    """`verify` for many scans at once, with the same verdicts and effects as calling it for each in
    turn (the bus's ingest batch): the units are read in one statement, decided
    in memory, and the scans, units, events and alerts written with one statement each.

    Two scans of one unit are decided in turn, the second seeing the first (its sale, its last-scan
    fields); those of one box in the box's (session, seq) order. A case received at goods-in moves
    every unit it holds: it is verified alone, between the scans before and after it."""
    verdicts: list[Verdict | None] = [None] * len(scans)
    codes: list[gs1.Code | gs1.CodeError] = []
    for scan in scans:
        try:
            codes.append(gs1.parse_code(scan.code))
        except gs1.CodeError as exc:
            codes.append(exc)
    start = 0
    for i, (scan, code) in enumerate(zip(scans, codes, strict=True)):
        if isinstance(code, gs1.Code) and not code.is_unit and code.sscc and scan.purpose is ScanPurpose.RECEIVE:
            _verify_set(conn, scans, codes, range(start, i), rules, now, verdicts)
            verdicts[i] = verify(conn, scan, rules, now)
            start = i + 1
    _verify_set(conn, scans, codes, range(start, len(scans)), rules, now, verdicts)
    return [v for v in verdicts if v is not None]


def _read_units(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], _Unit]:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        rows = _UNITS_BY_KEYS[dialect].dicts(conn, {"keys": json.dumps(keys)})
    elif dialect == "postgresql" and len(keys) == 1:
        # A quiet bus's batch: plain values (psycopg dumps each array in Python, costlier than the read).
        rows = _UNIT_BY_KEY.dicts(conn, {"gtin": keys[0][0], "serial": keys[0][1]})
    elif dialect == "postgresql":
        rows = _UNITS_BY_KEYS[dialect].dicts(conn, {"gtins": [g for g, _s in keys], "serials": [s for _g, s in keys]})
    else:
        rows = [r._asdict() for g, s in keys if (r := _UNIT_BY_KEY.first(conn, {"gtin": g, "serial": s})) is not None]
    return {(r["gtin"], r["serial"]): _Unit(r) for r in rows}


def _in_box_order(scans: Sequence[ScanIn], slots: list[int], order: list[int]) -> None:
    """Within `slots` (the scans of one unit, in arrival order), put each box's scans in the box's
    (session, seq) order; scans of different boxes keep their arrival order."""
    by_node: dict[str | None, list[int]] = {}
    for slot in slots:
        by_node.setdefault(scans[slot].node, []).append(slot)
    for node, mine in by_node.items():
        if node is None or len(mine) < 2 or any(scans[s].position is None for s in mine):
            continue
        for slot, src in zip(mine, sorted(mine, key=lambda s: scans[s].position or (0, 0)), strict=True):
            order[slot] = src


def _verify_set(conn: Connection, scans: Sequence[ScanIn], codes: Sequence[gs1.Code | gs1.CodeError], part: range,
                rules: TraceRules, now: datetime, verdicts: list[Verdict | None]) -> None:
    if not part:
        return
    slots_of: dict[tuple[str, str], list[int]] = {}
    for i in part:
        code = codes[i]
        if isinstance(code, gs1.Code) and code.is_unit:
            slots_of.setdefault((code.gtin or "", code.serial or ""), []).append(i)
    units = _read_units(conn, list(slots_of)) if slots_of else {}
    order = list(range(len(scans)))
    for slots in slots_of.values():
        if len(slots) > 1:
            _in_box_order(scans, slots, order)
    rows: list[tuple[Any, ...]] = []
    """The scans' rows, in `_SCAN_COLUMNS` order."""
    decided: list[tuple[int, VerdictData, Any]] = []
    events: list[tuple[int, dict[str, Any]]] = []
    last_scan: dict[int, int] = {}
    """unit id → the index in `rows` of its last scan of the batch."""
    touched: dict[int, _Unit] = {}
    locs: dict[int | None, tuple[Any, dict[str, Any] | None, str]] = {}
    reasons: dict[int, str | None] = {}
    """A recall's reason, read once per batch however many of its units are scanned."""
    for slot in part:
        i = order[slot]
        scan, code = scans[i], codes[i]
        if scan.location_id not in locs:
            found = _loc(conn, scan.location_id)
            brief = _loc_brief(found)  # one brief per place, shared (never changed), encoded once
            locs[scan.location_id] = (found, brief, _dumps(brief))
        loc, brief, brief_json = locs[scan.location_id]
        parsed: dict[str, Any] | None = None
        unit: _Unit | None = None
        if isinstance(code, gs1.CodeError):
            cls, rule, message = VerdictClass.MALFORMED, VerdictRule.PARSE_ERROR, str(code)
            evidence: dict[str, Any] = {"reason": code.reason.value, "ai": code.ai, "expected": code.expected,
                                        "found": code.found}
        else:
            parsed = _parsed_fields(code)
            if code.is_unit:
                unit = units.get((code.gtin or "", code.serial or ""))
            cls, rule, message, evidence = _decide(conn, scan, code, unit, loc, rules, now, reasons)
        message = message[:500]
        evidence_json = _evidence_json(evidence, brief, brief_json, scan.at)
        # The parsed code validated with the verdict, in one call (a code the box sends could make
        # a ParsedCode that does not validate: the batch then fails, before it writes anything).
        data = VerdictData.model_validate({
            "scan_id": scan.msg_id, "code": scan.code[:1024], "parsed": parsed, "verdict": cls, "rule": rule,
            "message": message, "evidence": evidence, "provisional": False, "decided_at": now})
        purpose = scan.purpose.value
        gtin, serial = (data.parsed.gtin, data.parsed.serial) if data.parsed is not None else (None, None)
        rows.append((scan.msg_id, scan.node, scan.station, purpose, scan.code, gtin, serial, scan.location_id,
                     scan.at, cls.value, rule.value, message, evidence_json,
                     scan.provisional.value if scan.provisional else None, scan.clerk_id, scan.clerk_name))
        if unit is not None:
            values, event = _effect(scan, unit, loc, rule)
            fields = unit.__dict__
            fields.update(values)
            unit.changed.update(values)
            # What the duplicate rule reads of the unit's last scan (`_UNIT_BY_KEY`'s last_* fields).
            fields.update(last_station=scan.station, last_node=scan.node, last_location_id=scan.location_id,
                          last_purpose=purpose, last_at=scan.at, last_verdict=cls.value, last_rule=rule.value,
                          last_message=message, last_msg_id=scan.msg_id)
            last_scan[unit.id] = len(rows) - 1
            touched[unit.id] = unit
            if event is not None:
                events.append((len(rows) - 1, event))
        decided.append((i, data, loc))
    # Only the columns the batch's scans changed, as `_effects` writes them: a column written back
    # unchanged could undo what another worker wrote to the unit since the read (PostgreSQL).
    by_columns: dict[tuple[str, ...], list[_Unit]] = {}
    for u in touched.values():
        by_columns.setdefault(tuple(c for c in _UNIT_STATE if c in u.changed), []).append(u)
    # One multi-row INSERT … RETURNING each; its rows are matched back by their unique msg_id /
    # eventID (asking SQLAlchemy to return them in order made it insert them one by one on SQLite).
    if conn.dialect.name == "postgresql" and len(by_columns) == 1:
        # The common case (every unit of the batch changed alike): scans and units in one statement.
        [(columns, group)] = by_columns.items()
        returned = _write_scans_and_units(columns).run_tuples(conn, rows, {
            "id": [u.id for u in group], "msg_id": [rows[last_scan[u.id]][0] for u in group],
            **{c: [getattr(u, c) for u in group] for c in columns}})
        by_columns = {}
    else:
        returned = _INSERT_SCANS.run_tuples(conn, rows)
    by_msg = {_uuid_hex(msg_id): scan_id for scan_id, msg_id in returned}
    ids = [by_msg[r[0].hex] for r in rows]
    for columns, group in by_columns.items():
        _write_unit(columns).run_columns(conn, {
            "id": [u.id for u in group], "last_scan_id": [ids[last_scan[u.id]] for u in group],
            **{c: [getattr(u, c) for u in group] for c in columns}})
    if events:
        # Its effect on the unit is written above (the store's location may have no GLN to resolve).
        event_rows = [_event_row(event, rows[k][_AT], now) for k, event in events]
        by_event = dict((event_id, new_id) for new_id, event_id in _INSERT_EVENTS.run(conn, event_rows))
        _INSERT_EPCS.run(conn, [{"event_id": by_event[event["eventID"]], "epc": event["epcList"][0], "role": "epc"}
                                        for _k, event in events])
    alerts: list[dict[str, Any]] = []
    for k, (i, data, loc) in enumerate(decided):
        scan = scans[i]
        for kind, text, facts in _alerts_of(scan, data.verdict, data.message, data.evidence):
            alerts.append(_alert_row(kind, scan, data.parsed, loc, ids[k], text, facts, now))
        verdicts[i] = Verdict(data, ids[k])
    if alerts:
        _INSERT_ALERTS.run(conn, alerts)


def _json_dumps() -> Callable[[Any], str]:
    """`json.dumps` with its default arguments (what a JSON column stores), its C encoder made once:
    `json.dumps` makes one per call, half the cost of an evidence's few keys. Without the circular
    check (an evidence is a fresh tree)."""
    if c_make_encoder is None:  # a Python without the json module's C part
        return json.dumps
    encode = c_make_encoder(None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False,
                            True)
    return lambda value: "".join(encode(value, 0))


_dumps = _json_dumps()


def _evidence_json(facts: dict[str, Any], brief: dict[str, Any] | None, brief_json: str, at: datetime) -> str:
    """The scan's evidence as stored: `facts` (the rule's, changed in place) with the place's brief
    and the scan's time added last, encoded byte for byte as `json.dumps` encodes the whole (the
    column's own serializer), with the brief encoded once per batch (`brief_json`) and spliced in."""
    scanned_at = _iso(at)
    if not facts or "location" in facts or "scanned_at" in facts:
        facts["location"], facts["scanned_at"] = brief, scanned_at
        return _dumps(facts)
    head = _dumps(facts)
    facts["location"], facts["scanned_at"] = brief, scanned_at
    # An ISO time is digits, '-', ':', 'T', '.' and '+' only: nothing to escape.
    return f'{head[:-1]}, "location": {brief_json}, "scanned_at": "{scanned_at}"}}'


def _uuid_hex(value: Any) -> str:
    """A UUID as the driver returns it (a `uuid.UUID` from psycopg, its 32 hex digits from SQLite's
    CHAR(32)) → its 32 hex digits."""
    return value.hex if isinstance(value, uuid.UUID) else str(value).replace("-", "")


Decision = tuple[VerdictClass, VerdictRule, str, dict[str, Any]]


def _decide(conn: Connection, scan: ScanIn, code: gs1.Code, unit: Any, loc: Any, rules: TraceRules,
            now: datetime, reasons: dict[int, str | None] | None = None) -> Decision:
    if not code.is_unit:
        if code.sscc and scan.purpose is ScanPurpose.RECEIVE:
            return _receive_case(conn, scan, code.sscc, loc)
        return (VerdictClass.UNTRACKED, VerdictRule.PLAIN_PRODUCT_CODE,
                "a product code, not a unit code: nothing to verify", {"gtin": code.gtin, "sscc": code.sscc})
    if unit is None:
        return (VerdictClass.UNKNOWN_CODE, VerdictRule.NEVER_COMMISSIONED,
                "this unit code was never commissioned by the brand", {"key": unit_key(code.gtin or "", code.serial or "")})
    facts: dict[str, Any] = {"unit": {"gtin": unit.gtin, "serial": unit.serial, "batch": unit.batch,
                                      "expiry": unit.expiry.isoformat() if unit.expiry else None, "state": unit.state}}
    differ = {}
    if code.batch is not None and unit.batch is not None and code.batch != unit.batch:
        differ["batch"] = {"printed": code.batch, "commissioned": unit.batch}
    if code.expiry is not None and unit.expiry is not None and code.expiry != unit.expiry:
        differ["expiry"] = {"printed": code.expiry.isoformat(), "commissioned": unit.expiry.isoformat()}
    if differ:
        return (VerdictClass.BATCH_OR_EXPIRY_MISMATCH, VerdictRule.ATTRIBUTES_DIFFER,
                "printed " + " and ".join(f"{k} {v['printed']} differs from the commissioned {v['commissioned']}"
                                          for k, v in differ.items()), {**facts, "differ": differ})
    if (unit.last_at is not None and unit.last_station == scan.station and unit.last_node == scan.node
            and unit.last_location_id == scan.location_id and unit.last_purpose == scan.purpose.value
            and abs((scan.at - unit.last_at).total_seconds()) <= rules.duplicate_window_s):
        return (VerdictClass(unit.last_verdict), VerdictRule.DUPLICATE_SCAN,
                f"the same scan again within {rules.duplicate_window_s:.0f} s: {unit.last_message}",
                {**facts, "first_scan": str(unit.last_msg_id), "first_rule": unit.last_rule,
                 "first_at": _iso(unit.last_at)})
    if unit.recalled:
        return VerdictClass.RECALLED, VerdictRule.UNIT_RECALLED, "this unit is recalled: do not sell", facts
    if unit.recall_id is not None:
        if reasons is not None and unit.recall_id in reasons:
            reason = reasons[unit.recall_id]
        else:
            found = _RECALL_REASON.first(conn, {"id": unit.recall_id})
            reason = found.reason if found is not None else None
            if reasons is not None:
                reasons[unit.recall_id] = reason
        return (VerdictClass.RECALLED, VerdictRule.BATCH_RECALLED,
                f"batch {unit.batch} is recalled ({reason}): do not sell", {**facts, "recall": unit.recall_id})
    if unit.state == "decommissioned":
        return VerdictClass.ALREADY_SOLD, VerdictRule.DECOMMISSIONED, "this unit was decommissioned", facts
    if unit.seen_location_id is not None and loc is not None and unit.seen_location_id != loc.id \
            and unit.seen_at is not None:
        seen = _loc(conn, unit.seen_location_id)
        if seen is not None:
            km = haversine_km(seen.lat, seen.lon, loc.lat, loc.lon)
            hours = abs((scan.at - unit.seen_at).total_seconds()) / 3600
            speed = math.inf if hours == 0 else km / hours
            if km >= rules.min_distance_km and speed > rules.max_speed_kmh:
                return (VerdictClass.CLONED, VerdictRule.IMPOSSIBLE_TRAVEL,
                        f"seen at {seen.name} {hours * 60:.0f} min before, {km:.0f} km away: a copy of the code",
                        {**facts, "from": _loc_brief(seen), "from_at": _iso(unit.seen_at),
                         "distance_km": round(km, 1), "elapsed_s": round(hours * 3600, 1),
                         "speed_kmh": None if math.isinf(speed) else round(speed, 1), "limit_kmh": rules.max_speed_kmh})
    if unit.state == "sold" and not _before_sale(unit, scan):
        sold_here = loc is not None and unit.sold_location_id == loc.id
        sold = {**facts, "sold_at": _iso(unit.sold_at), "sold_location": _loc_brief(_loc(conn, unit.sold_location_id)),
                "sold_node": unit.sold_node}
        if scan.purpose is ScanPurpose.RETURN:
            return VerdictClass.GENUINE, VerdictRule.RETURN_ACCEPTED, "return accepted: the unit is back in stock", sold
        if scan.purpose is ScanPurpose.UNDO and sold_here and unit.sold_at is not None \
                and (scan.at - unit.sold_at) <= timedelta(seconds=rules.undo_window_s):
            return VerdictClass.GENUINE, VerdictRule.RETURN_ACCEPTED, "sale undone: the unit is back in stock", sold
        return (VerdictClass.ALREADY_SOLD, VerdictRule.SOLD_BEFORE,
                f"already sold{' here' if sold_here else ''} at {_iso(unit.sold_at)}", sold)
    if scan.purpose in (ScanPurpose.RETURN, ScanPurpose.UNDO):
        return VerdictClass.NOT_FOR_SALE_HERE, VerdictRule.NEVER_RECEIVED, "this unit was not sold: nothing to take back", facts
    if unit.expiry is not None and unit.expiry < scan.at.date():
        return (VerdictClass.EXPIRED, VerdictRule.EXPIRY_PASSED, f"expired on {unit.expiry.isoformat()}", facts)
    if unit.ship_region_id is not None and loc is not None and loc.region_id is not None \
            and loc.region_id != unit.ship_region_id:
        return (VerdictClass.DIVERTED, VerdictRule.WRONG_REGION,
                f"shipped to region {_region_code(conn, unit.ship_region_id)}, offered in {_region_code(conn, loc.region_id)}",
                {**facts, "shipped_to": _loc_brief(_loc(conn, unit.ship_dest_id)), "ship_region_id": unit.ship_region_id,
                 "scan_region_id": loc.region_id})
    if not unit.received_at_store and scan.purpose is not ScanPurpose.RECEIVE:
        return (VerdictClass.NOT_FOR_SALE_HERE, VerdictRule.NEVER_RECEIVED,
                f"never received by a store (it is {unit.state.replace('_', ' ')})", facts)
    return VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT, "genuine", facts


_region_cache: dict[tuple[str, int], tuple[float, str]] = {}


def _region_code(conn: Connection, region_id: int | None) -> str:
    """A region's code for a message, cached like locations (region codes are master data)."""
    if region_id is None:
        return "?"
    key = (str(conn.engine.url), region_id)
    hit = _region_cache.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < _LOC_TTL_S:
        return hit[1]
    code = str(conn.execute(select(_REGIONS.c.code).where(_REGIONS.c.id == region_id)).scalar() or region_id)
    if len(_region_cache) > 10_000:
        _region_cache.clear()
    _region_cache[key] = (now, code)
    return code


def forget_master_data() -> None:
    """Drop this process's cached locations and region codes (a location was created or changed
    here; other processes see it within `_LOC_TTL_S`)."""
    _loc_cache.clear()
    _region_cache.clear()


def _before_sale(unit: Any, scan: ScanIn) -> bool:
    """A scan from the box that sold the unit, older in that box's stream than the sale, came first
    even if it is handled after (several workers): it is not a scan 'after the sale'."""
    return (scan.node is not None and scan.position is not None and unit.sold_node == scan.node
            and unit.sold_session is not None and (unit.sold_session, unit.sold_seq) > scan.position)


def _receive_case(conn: Connection, scan: ScanIn, sscc: str, loc: Any) -> Decision:
    """Goods-in of a case: every unit inside is received at once, checked against the shipping notice
    (the last shipping event that sent this case to this location). A unit that does not belong
    (shipped elsewhere, or not named by a notice that names units) is an intruder: flagged, not
    received; units the notice names that are not in the case are missing."""
    from cloud.trace.events import CASES, _location_id

    inner = list(conn.execute(select(CASES.c.sscc).where(CASES.c.parent == sscc)).scalars())
    target = UNITS.c.parent.in_([sscc, *inner])
    units = conn.execute(select(UNITS.c.id, UNITS.c.gtin, UNITS.c.serial, UNITS.c.ship_dest_id).where(target)).all()
    if not units:
        return (VerdictClass.UNKNOWN_CODE, VerdictRule.NEVER_COMMISSIONED, "no unit was ever packed in this case",
                {"sscc": sscc})
    named: set[str] | None = None  # the unit keys the notice names, when it names units (not only the case)
    expected: int | None = None
    if loc is not None:
        # The notice names this case, or the pallet it travelled on.
        outer = conn.execute(select(CASES.c.parent).where(CASES.c.sscc == sscc)).scalar()
        carriers = [case_key(sscc), *([case_key(outer)] if outer else [])]
        shipments = conn.execute(
            select(EVENTS.c.id, EVENTS.c.doc).where(
                EVENTS.c.biz_step == "shipping",
                EVENTS.c.id.in_(select(EPCS.c.event_id).where(EPCS.c.epc.in_(carriers))))
            .order_by(EVENTS.c.event_time.desc(), EVENTS.c.id.desc()).limit(20)).all()
        for ship in shipments:
            dests = [d.get("destination") for d in (ship.doc.get("destinationList") or []) if isinstance(d, dict)]
            if any(_location_id(conn, d)[0] == loc.id for d in dests if isinstance(d, str)):
                keys = set(conn.execute(select(EPCS.c.epc).where(EPCS.c.event_id == ship.id)).scalars())
                named = {k for k in keys if not k.startswith("https://id.gs1.org/00/")} or None
                expected = len(named) if named is not None else sum(1 for u in units if u.ship_dest_id == loc.id)
                break
    intruders: list[Any] = []
    if loc is not None:
        for u in units:
            elsewhere = u.ship_dest_id is not None and u.ship_dest_id != loc.id
            unnamed = named is not None and unit_key(u.gtin, u.serial) not in named
            # Without a notice, a unit never shipped anywhere is not judged (nothing to judge it by).
            if elsewhere or unnamed or (expected is not None and named is None and u.ship_dest_id != loc.id):
                intruders.append(u)
    in_case = {unit_key(u.gtin, u.serial) for u in units}
    missing = len(named - in_case) if named is not None else 0
    keep = target if not intruders else target & UNITS.c.id.not_in([u.id for u in intruders])
    conn.execute(update(UNITS).where(keep).values(
        state="received", location_id=loc.id if loc is not None else None,
        received_at_store=loc is not None and loc.kind == "store"))
    if loc is not None:
        conn.execute(update(UNITS).where(keep, (UNITS.c.seen_at.is_(None)) | (UNITS.c.seen_at <= scan.at))
                     .values(seen_location_id=loc.id, seen_at=scan.at))
    _store_only(conn, _scan_event(scan, loc, "OBSERVE", "receiving", "in_progress", epc=case_key(sscc)), scan.at, scan.at)
    n, received = len(units), len(units) - len(intruders)
    evidence = {"sscc": sscc, "units": n, "expected": expected, "received": received,
                "intruders": [f"(01){u.gtin}(21){u.serial}" for u in intruders[:200]], "missing": missing}
    if not intruders and not missing:
        return (VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT, f"{n} of {n} units received", evidence)
    parts = [f"{received} of {n} received"]
    if intruders:
        k = len(intruders)
        parts.append(f"{k} unit{'s do' if k > 1 else ' does'} not belong to this shipment")
    if missing:
        parts.append(f"{missing} unit{'s' if missing > 1 else ''} of the shipping notice "
                     f"{'are' if missing > 1 else 'is'} not in the case")
    return (VerdictClass.DIVERTED, VerdictRule.CASE_MISMATCH, "; ".join(parts), evidence)


def _scan_event(scan: ScanIn, loc: Any, action: str, step: str, disposition: str, *, parent: str | None = None,
                epc: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.uuid5(scan.msg_id, step)}", "action": action,
        "eventTime": scan.at.isoformat(), "eventTimeZoneOffset": "+00:00", "bizStep": step, "disposition": disposition,
        "readPoint": {"id": f"urn:omnishelf:station:{scan.node or 'api'}:{scan.station}"},
    }
    if loc is not None and loc.gln:
        event["bizLocation"] = {"id": gs1.sgln_urn(loc.gln)}
    if epc:
        event["epcList"] = [epc]
    if scan.clerk_id is not None:
        # An extension member (namespaced, as EPCIS allows): who at the store, not part of the standard's event.
        event["omnishelf:clerk"] = {"id": scan.clerk_id, "name": scan.clerk_name}
    return event


_SEEN = Prepared(update(UNITS).where(UNITS.c.id == bindparam("uid")).values(
    last_scan_id=bindparam("last_scan_id"), seen_location_id=bindparam("seen_location_id"), seen_at=bindparam("seen_at")))


def _effect(scan: ScanIn, unit: Any, loc: Any, rule: VerdictRule) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a decided scan changes on its unit (columns → values, without `last_scan_id`) and the
    EPCIS event it makes (a sale, a receipt, a return, an undo), if any."""
    values: dict[str, Any] = {}
    if loc is not None and (unit.seen_at is None or unit.seen_at <= scan.at):
        values.update(seen_location_id=loc.id, seen_at=scan.at)
    step = None
    if rule is VerdictRule.COMMISSIONED_UNIT and scan.purpose is ScanPurpose.SELL:
        step, disposition = "retail_selling", "retail_sold"
        values.update(state="sold", sold_at=scan.at, sold_location_id=loc.id if loc is not None else None,
                      sold_node=scan.node, sold_session=scan.position[0] if scan.position else None,
                      sold_seq=scan.position[1] if scan.position else None)
    elif rule is VerdictRule.COMMISSIONED_UNIT and scan.purpose is ScanPurpose.RECEIVE:
        step, disposition = "receiving", "sellable_not_accessible"
        values.update(state="received", location_id=loc.id if loc is not None else None,
                      received_at_store=loc is not None and loc.kind == "store")
    elif rule is VerdictRule.RETURN_ACCEPTED:
        step = "returning" if scan.purpose is ScanPurpose.RETURN else "retail_selling"
        disposition = "returned" if scan.purpose is ScanPurpose.RETURN else "sellable_accessible"
        values.update(state="received", location_id=loc.id if loc is not None else None, sold_at=None,
                      sold_location_id=None, sold_node=None, sold_session=None, sold_seq=None)
    if step is None:
        return values, None
    event = _scan_event(scan, loc, "OBSERVE", step, disposition, epc=unit_key(unit.gtin, unit.serial))
    if scan.purpose is ScanPurpose.UNDO:
        event["omnishelf:undoesSale"] = True
    return values, event


def _effects(conn: Connection, scan: ScanIn, unit: Any, loc: Any, cls: VerdictClass, rule: VerdictRule,
             scan_id: int, now: datetime) -> None:
    values, event = _effect(scan, unit, loc, rule)
    if event is None:
        _SEEN.execute(conn, {"uid": unit.id, "last_scan_id": scan_id,
                             "seen_location_id": values.get("seen_location_id", unit.seen_location_id),
                             "seen_at": values.get("seen_at", unit.seen_at)})
        return
    conn.execute(update(UNITS).where(UNITS.c.id == unit.id).values(last_scan_id=scan_id, **values))
    # Its effect on the unit is written above (the store's location may have no GLN to resolve).
    _store_only(conn, event, scan.at, now)


def _event_row(event: dict[str, Any], when: datetime, now: datetime) -> dict[str, Any]:
    from cloud.trace.events import event_hash, step_of

    return dict(event_id=event["eventID"], hash=event_hash(event), type=event["type"], action=event["action"],
                event_time=when, tz_offset="+00:00", biz_step=step_of(event["bizStep"]),
                disposition=event.get("disposition"), biz_location=(event.get("bizLocation") or {}).get("id"),
                read_point=event["readPoint"]["id"], capture_id=None, recorded_at=now, doc=event)


def _store_only(conn: Connection, event: dict[str, Any], when: datetime, now: datetime) -> None:
    ((new_id, _event_id),) = _INSERT_EVENTS.run(conn, [_event_row(event, when, now)])
    _INSERT_EPCS.run(conn, [{"event_id": new_id, "epc": event["epcList"][0], "role": "epc"}])


def _alert_row(kind: str, scan: ScanIn, parsed: ParsedCode | None, loc: Any, scan_id: int | None,
               message: str, evidence: dict[str, Any], now: datetime) -> dict[str, Any]:
    return dict(kind=kind, at=now, code=scan.code[:1024], gtin=parsed.gtin if parsed else None,
                serial=parsed.serial if parsed else None, location_id=loc.id if loc is not None else None,
                store_id=loc.store_id if loc is not None else None,
                region_id=loc.region_id if loc is not None else None, scan_id=scan_id, message=message[:500],
                evidence=evidence)


def _alerts_of(scan: ScanIn, cls: VerdictClass, message: str, evidence: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The alerts a verdict raises: (kind, message, evidence) each."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    kind = ALERTING.get(cls)
    if cls is VerdictClass.RECALLED and scan.purpose is ScanPurpose.SELL:
        kind = "recalled_sold"
    if cls is VerdictClass.ALREADY_SOLD and scan.purpose is ScanPurpose.SELL:
        kind = "already_sold"
    if kind is not None:
        found.append((kind, message, evidence))
    if scan.provisional is not None and scan.provisional is not cls:
        found.append(("provisional_overturned",
                      f"the box answered {scan.provisional.value} offline; the final verdict is {cls.value}: {message}",
                      {**evidence, "provisional": scan.provisional.value, "final": cls.value}))
    return found
