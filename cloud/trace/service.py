"""The trace engine's operations behind the REST routes, the console and the CLI: scoped reads,
audited changes."""

from __future__ import annotations

import csv
import gc
import io
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.orm import Session

import gs1
from broker.payloads import ScanPurpose, VerdictData
from cloud.access.scope import NotFound, Principal, Scope, get_node, get_store
from cloud.access.service import InputError, audit
from cloud.models import Region, Store
from cloud.trace.events import CASES, EPCS, EVENTS, LOCATIONS, UNITS
from cloud.trace.keys import SERIAL, case_key, key_of
from cloud.trace.models import Alert, Location, Recall, Registration
from cloud.trace.rules import TraceRules
from cloud.trace.verify import ALERTS, ScanIn, forget_master_data, location_for_store, verify

__all__ = ["acknowledge", "alerts", "commission_csv", "create_location", "import_locations", "journey",
           "query_events", "recall", "register", "scan"]

KINDS = ("factory", "distributor", "warehouse", "store")


def _now() -> datetime:
    return datetime.now(UTC)


def _region_id(session: Session, code: str | None) -> int | None:
    if not code:
        return None
    rid = session.scalar(select(Region.id).where(Region.code == code))
    if rid is None:
        raise InputError("region", f"no region {code!r}")
    return int(rid)


def create_location(session: Session, principal: Principal, *, code: str, kind: str, name: str, gln: str | None,
                    region: str | None, lat: float, lon: float, via: str = "api") -> Location:
    """A factory, distributor or warehouse (a store's location comes from its store; give
    kind=store and the store's code to set its GLN)."""
    if kind not in KINDS:
        raise InputError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if gln is not None:
        try:
            code_ = gs1.parse_code(gln if len(gln) != 13 else f"414{gln}")
        except gs1.CodeError as exc:
            raise InputError("gln", str(exc)) from None
        gln = code_.gln
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InputError("lat", f"coordinates {lat}, {lon} are outside -90..90, -180..180")
    if kind == "store":
        store = get_store(session, principal.scope, code)
        loc_id = location_for_store(session.connection(), store.id)
        loc = session.get(Location, loc_id)
        assert loc is not None
        loc.gln, loc.name = gln, name or loc.name
    else:
        if session.scalar(select(Location.id).where(Location.code == code)) is not None:
            raise InputError("code", f"location {code!r} exists already")
        loc = Location(code=code, kind=kind, name=name, gln=gln, region_id=_region_id(session, region), lat=lat, lon=lon)
        session.add(loc)
    if gln is not None and session.scalar(select(Location.id).where(Location.gln == gln, Location.code != code)):
        raise InputError("gln", f"GLN {gln} belongs to another location")
    session.flush()
    forget_master_data()
    audit(session, principal.actor, "trace.location.save", "trace_location", code,
          after={"kind": kind, "gln": gln, "region": region, "lat": lat, "lon": lon}, via=via)
    return loc


def import_locations(session: Session, principal: Principal, text: str, via: str = "api") -> int:
    """CSV with a header: code,kind,name,gln,region,lat,lon. One bad line refuses the file (line named)."""
    reader = csv.DictReader(io.StringIO(text))
    need = {"code", "kind", "name", "gln", "region", "lat", "lon"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise InputError("file", f"CSV header must have {', '.join(sorted(need))}, found {reader.fieldnames}")
    n = 0
    for line, row in enumerate(reader, 2):
        try:
            create_location(session, principal, code=row["code"], kind=row["kind"], name=row["name"],
                            gln=row["gln"] or None, region=row["region"] or None, lat=float(row["lat"]),
                            lon=float(row["lon"]), via=via)
        except (InputError, ValueError, NotFound) as exc:
            raise InputError("file", f"line {line}: {exc}") from None
        n += 1
    return n


def locations(session: Session) -> Sequence[Location]:
    return session.scalars(select(Location).order_by(Location.kind, Location.code)).all()


def commission_csv(conn: Connection, text: str, actor: str, now: datetime) -> int:
    """Commission units from CSV (gtin,serial,batch,expiry,location[,at]): stored as one commissioning
    ObjectEvent ADD per (location, gtin, batch, expiry, at) group; `at` (ISO 8601 with offset) is when
    they were commissioned, now if absent."""
    # Millions of small strings and tuples, none of them in a cycle: the cyclic collector walking
    # them again and again cost a quarter of a 100,000-code file (its passes were charged to
    # whichever line allocated). Reference counting still frees everything.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _commission_csv(conn, text, actor, now)
    finally:
        if enabled:
            gc.enable()


def _commission_csv(conn: Connection, text: str, actor: str, now: datetime) -> int:
    from cloud.trace.events import store_event

    # csv.reader and column positions: DictReader's dict per row cost a tenth of a bulk commissioning.
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    need = {"gtin", "serial", "batch", "expiry", "location"}
    fields = [h.strip() for h in header] if header else None
    if not fields or not need <= set(fields):
        raise InputError("file", f"CSV header must have {', '.join(sorted(need))}, found {fields}")
    i_gtin, i_serial, i_batch, i_expiry, i_loc = (fields.index(k) for k in ("gtin", "serial", "batch", "expiry",
                                                                             "location"))
    i_at = fields.index("at") if "at" in fields else None
    width = len(fields)
    groups: dict[tuple[str, str, str, str, str], list[str]] = {}
    locs: dict[str, Any] = {}
    # A file names a few GTINs and expiry dates a hundred thousand times: each is checked once.
    gtins: dict[str, str] = {}
    expiries: dict[str, str] = {}
    batches: set[str] = set()
    for line, values in enumerate(reader, 2):
        if not values:
            continue  # a blank line (DictReader skipped them too)
        if len(values) < width:
            values = values + [""] * (width - len(values))
        try:
            raw_gtin, raw_expiry = values[i_gtin], values[i_expiry]
            gtin = gtins.get(raw_gtin) or gtins.setdefault(raw_gtin, gs1.normalise_gtin(raw_gtin))
            serial = values[i_serial].strip()
            if not SERIAL.match(serial):  # the fast check; gs1 says what is wrong
                gs1.sgtin_urn(gtin, serial, 7)  # the serial must be a valid AI (21) value
                raise ValueError(f"serial must be 1-20 characters, got {len(serial)}")
            batch = values[i_batch].strip()
            if batch and batch not in batches:
                if not SERIAL.match(batch):  # AI (10) has the serial's rules: gs1 says what is wrong
                    gs1.lgtin_urn(gtin, batch, 7)
                    raise ValueError(f"batch must be 1-20 characters, got {len(batch)}")
                batches.add(batch)
            expiry = expiries.get(raw_expiry) if raw_expiry in expiries else expiries.setdefault(
                raw_expiry, date.fromisoformat(raw_expiry).isoformat() if raw_expiry else "")
            assert expiry is not None
            at = values[i_at].strip() if i_at is not None else ""
            if at:
                when = datetime.fromisoformat(at.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    raise ValueError(f"at {at!r} needs a UTC offset (e.g. 2026-11-20T08:00:00+08:00)")
                at = when.astimezone(UTC).isoformat()
        except (gs1.GtinError, gs1.CodeError, ValueError) as exc:
            raise InputError("file", f"line {line}: {exc}") from None
        loc_code = values[i_loc].strip()
        if loc_code not in locs:
            locs[loc_code] = conn.execute(select(LOCATIONS).where(LOCATIONS.c.code == loc_code)).first()
            if locs[loc_code] is None:
                raise InputError("file", f"line {line}: no location {loc_code!r}")
        groups.setdefault((loc_code, gtin, batch, expiry, at), []).append(serial)
    n = 0
    for (loc_code, gtin, batch, expiry, at), serials in groups.items():
        loc = locs[loc_code]
        when = datetime.fromisoformat(at) if at else now
        event: dict[str, Any] = {
            "type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "disposition": "active",
            "eventTime": when.isoformat(), "eventTimeZoneOffset": "+00:00",
            "epcList": [f"https://id.gs1.org/01/{gtin}/21/{s}" for s in serials],
            "ilmd": {k: v for k, v in (("cbvmda:lotNumber", batch), ("cbvmda:itemExpirationDate", expiry)) if v},
            "omnishelf:commissionedBy": actor,
        }
        if loc.gln:
            event["bizLocation"] = {"id": gs1.sgln_urn(loc.gln)}
        store_event(conn, event, when, capture_id=None, now=now, location_id=loc.id,
                    units=[(gtin, s) for s in serials])
        n += len(serials)
    return n


def scan(session: Session, principal: Principal, *, code: str, station: str, purpose: ScanPurpose,
         node: str | None, location: str | None, at: datetime | None, rules: TraceRules) -> VerdictData:
    """`POST /trace/scans`: the same verification as a bus scan, at a node's store or a location
    (a store in the caller's scope; a factory/distributor/warehouse for all-region callers)."""
    conn = session.connection()
    if node is not None:
        n = get_node(session, principal.scope, node)
        if n.store_id is None:
            raise InputError("node", f"node {node!r} is not assigned to a store")
        loc_id = location_for_store(conn, n.store_id)
    elif location is not None:
        row = session.scalar(select(Location).where(Location.code == location))
        if row is None:
            store = get_store(session, principal.scope, location)
            loc_id = location_for_store(conn, store.id)
        elif row.store_id is not None:
            owner = session.get(Store, row.store_id)
            assert owner is not None
            get_store(session, principal.scope, owner.code)  # scope check
            loc_id = row.id
        else:
            if not principal.scope.all:
                raise NotFound(f"No location {location!r} (unknown, or outside your regions and stores)")
            loc_id = row.id
    else:
        raise InputError("location", "give the node or the location (store or location code) of the scan")
    now = _now()
    verdict = verify(conn, ScanIn(code=code, station=station, purpose=purpose, at=at or now, msg_id=uuid.uuid4(),
                                  node=node, location_id=loc_id), rules, now)
    return verdict.data


def resolve(code: str) -> tuple[str, gs1.Code]:
    try:
        parsed = gs1.parse_code(code)
    except gs1.CodeError as exc:
        raise InputError("code", str(exc), location="path") from None
    key, _ = key_of(code)
    return key, parsed


def _visible_glns(conn: Connection, scope: Scope) -> frozenset[str] | None:
    """The GLNs of the locations `scope` sees (None: all of them): a store in its scope, or a
    factory/distributor/warehouse in one of its regions."""
    if scope.all:
        return None
    stores = select(Store.id).where(scope.store_clause())
    return frozenset(conn.execute(select(LOCATIONS.c.gln).where(
        LOCATIONS.c.gln.is_not(None),
        LOCATIONS.c.store_id.in_(stores) | LOCATIONS.c.region_id.in_(scope.region_ids))).scalars())


def _sees(glns: frozenset[str] | None, row: Any) -> bool:
    """Whether an event happened at a location the caller sees (where it happened, else where it was read)."""
    from cloud.trace.keys import gln_of

    return glns is None or (gln_of(row.biz_location) or gln_of(row.read_point)) in glns


def journey(conn: Connection, code: str, scope: Scope | None = None) -> dict[str, Any]:
    """Every event of the unit and of the cases it travelled in, in time order (indexed by key).
    With a `scope` that does not see every location, only the events at locations it sees; a unit
    with none of them is not found, as an unknown one."""
    key, parsed = resolve(code)
    keys = {key}
    unit = None
    if parsed.gtin and parsed.serial:
        unit = conn.execute(select(UNITS).where(UNITS.c.gtin == parsed.gtin, UNITS.c.serial == parsed.serial)).first()
        # Cases it was packed in: parents named by aggregation events that list it as a child.
        parents = conn.execute(
            select(EPCS.c.epc).where(EPCS.c.role == "parent", EPCS.c.event_id.in_(
                select(EPCS.c.event_id).where(EPCS.c.epc == key, EPCS.c.role == "child")))).scalars().all()
        keys.update(parents)
        if unit is not None and unit.parent:
            keys.add(case_key(unit.parent))
        for sscc in list(keys):
            if sscc.startswith("https://id.gs1.org/00/"):
                outer = conn.execute(select(CASES.c.parent).where(CASES.c.sscc == sscc.rsplit("/", 1)[1])).scalar()
                if outer:
                    keys.add(case_key(outer))
    ids = select(EPCS.c.event_id).where(EPCS.c.epc.in_(sorted(keys)))
    rows = conn.execute(select(EVENTS).where(EVENTS.c.id.in_(ids)).order_by(EVENTS.c.event_time, EVENTS.c.id)).all()
    if scope is not None and not scope.all:
        visible = _visible_glns(conn, scope)
        rows = [r for r in rows if _sees(visible, r)]
        if not rows:
            raise NotFound(f"No unit {code!r} in your scope")
    glns = {r.biz_location for r in rows if r.biz_location}
    places: dict[str, Any] = {}
    for ident in glns:
        from cloud.trace.keys import gln_of

        gln = gln_of(ident)
        loc = conn.execute(select(LOCATIONS).where(LOCATIONS.c.gln == gln)).first() if gln else None
        if loc is not None:
            places[ident] = {"code": loc.code, "name": loc.name, "kind": loc.kind, "lat": loc.lat, "lon": loc.lon}
    return {
        "code": code, "key": key, "gtin": parsed.gtin, "serial": parsed.serial,
        "unit": None if unit is None else {
            "state": unit.state, "batch": unit.batch, "expiry": unit.expiry.isoformat() if unit.expiry else None,
            "parent": unit.parent, "recalled": unit.recalled},
        "events": [{"eventID": r.event_id, "type": r.type, "action": r.action, "eventTime": r.event_time.isoformat(),
                    "bizStep": r.biz_step, "disposition": r.disposition, "bizLocation": r.biz_location,
                    "place": places.get(r.biz_location or ""), "via": sorted(keys - {key}) if r.id else [],
                    "clerk": (r.doc or {}).get("omnishelf:clerk")}
                   for r in rows],
    }


QUERY_PARAMS = ("MATCH_epc", "MATCH_anyEPC", "EQ_bizStep", "GE_eventTime", "LT_eventTime", "EQ_bizLocation")


def query_events(conn: Connection, params: dict[str, list[str]], limit: int,
                 scope: Scope | None = None) -> list[dict[str, Any]]:
    """EPCIS query with the parameters that matter here (each may repeat: values are ORed); with a
    `scope` that does not see every location, only events at locations it sees."""
    unknown = sorted(set(params) - set(QUERY_PARAMS) - {"perPage", "nextPageToken"})
    if unknown:
        raise InputError(unknown[0], f"unknown query parameter; supported: {', '.join(QUERY_PARAMS)}", location="query")
    stmt = select(EVENTS)
    if "MATCH_epc" in params:
        keys = [key_of(v)[0] for v in params["MATCH_epc"]]
        # The standard's MATCH_epc: epcList or childEPCs (MATCH_anyEPC adds parentID, inputs, outputs).
        stmt = stmt.where(EVENTS.c.id.in_(select(EPCS.c.event_id).where(EPCS.c.epc.in_(keys),
                                                                       EPCS.c.role.in_(("epc", "child")))))
    if "MATCH_anyEPC" in params:
        keys = [key_of(v)[0] for v in params["MATCH_anyEPC"]]
        stmt = stmt.where(EVENTS.c.id.in_(select(EPCS.c.event_id).where(EPCS.c.epc.in_(keys))))
    if "EQ_bizStep" in params:
        from cloud.trace.events import step_of

        stmt = stmt.where(EVENTS.c.biz_step.in_([step_of(v) for v in params["EQ_bizStep"]]))
    if "EQ_bizLocation" in params:
        stmt = stmt.where(EVENTS.c.biz_location.in_(params["EQ_bizLocation"]))
    for name, op in (("GE_eventTime", "ge"), ("LT_eventTime", "lt")):
        if name in params:
            try:
                when = datetime.fromisoformat(params[name][0].replace("Z", "+00:00"))
            except ValueError:
                raise InputError(name, f"expected an ISO 8601 date-time, got {params[name][0]!r}", location="query") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            stmt = stmt.where(EVENTS.c.event_time >= when if op == "ge" else EVENTS.c.event_time < when)
    stmt = stmt.order_by(EVENTS.c.event_time, EVENTS.c.id)
    if scope is None or scope.all:
        return [r.doc for r in conn.execute(stmt.limit(limit))]
    # Where an event happened is an identifier to parse (SGLN URN, Digital Link), not a column to
    # join: read in pages and keep the visible ones until the page is full.
    visible = _visible_glns(conn, scope)
    out: list[dict[str, Any]] = []
    offset, page = 0, max(limit, 500)
    while len(out) < limit:
        rows = conn.execute(stmt.offset(offset).limit(page)).all()
        out.extend(r.doc for r in rows if _sees(visible, r))
        if len(rows) < page:
            break
        offset += page
    return out[:limit]


def recall(session: Session, principal: Principal, *, gtin: str, batch: str | None, serials: list[str], reason: str,
           via: str = "api") -> int:
    """Recall a GTIN's batch, or single units of a GTIN; returns the recall rows written."""
    try:
        g = gs1.normalise_gtin(gtin)
    except gs1.GtinError as exc:
        raise InputError("gtin", str(exc)) from None
    if not batch and not serials:
        raise InputError("batch", "give the batch, or the serials of the units to recall")
    now = _now()
    rows = [Recall(gtin=g, batch=batch, serial=None, reason=reason, actor=principal.actor, created_at=now)] if batch else []
    rows += [Recall(gtin=g, batch=None, serial=s, reason=reason, actor=principal.actor, created_at=now) for s in serials]
    session.add_all(rows)
    if serials:
        session.execute(update(UNITS).where(UNITS.c.gtin == g, UNITS.c.serial.in_(serials))
                        .values(recalled=True))
    audit(session, principal.actor, "trace.recall", "trace_recall", f"{g}/{batch or ','.join(serials)}"[:128],
          after={"gtin": g, "batch": batch, "serials": serials, "reason": reason}, via=via)
    session.flush()
    push_lists(session.connection(), now)
    return len(rows)


def push_lists(conn: Connection, now: datetime) -> int:
    """Send every active box in a store its `trace_lists` again (after a recall: the boxes answer
    offline from them); in the caller's transaction, through the durable downlink. Returns the boxes."""
    from datetime import timedelta

    from broker.envelope import MessageType
    from broker.payloads import TRACE_LISTS
    from cloud.bus import downlink
    from cloud.models import Node
    from cloud.trace.handlers import RULES, lists_commands

    nodes = conn.execute(select(Node.id, Node.store_id, Node.commands)
                         .where(Node.store_id.is_not(None), Node.retired_at.is_(None))).all()
    by_store: dict[int, list[str]] = {}
    for node_id, store_id, said in nodes:
        # Only the boxes that run a station (or did not say what they run).
        if store_id is not None and (said is None or TRACE_LISTS in said):
            by_store.setdefault(store_id, []).append(node_id)
    for store_id, node_ids in by_store.items():
        parts = lists_commands(conn, store_id, RULES)
        for node_id in node_ids:
            for part in parts:
                downlink.send(conn, node_id, MessageType.COMMAND, part, engine="trace", expires_in=timedelta(hours=12),
                              now=now)
    return sum(len(ids) for ids in by_store.values())


def _alert_scope(scope: Scope) -> Any:
    if scope.all:
        return ALERTS.c.id.is_not(None)
    stores = select(Store.id).where(scope.store_clause())
    return ALERTS.c.store_id.in_(stores) | ALERTS.c.region_id.in_(scope.region_ids)


def alerts(conn: Connection, scope: Scope, *, kind: str | None = None, region: str | None = None,
           store: str | None = None, gtin: str | None = None, since: datetime | None = None,
           until: datetime | None = None, limit: int = 500) -> list[Any]:
    """Alerts in the scope, newest first; `region`/`store` are codes (an unknown one matches nothing)."""
    region_id = store_id = None
    if region is not None:
        region_id = conn.execute(select(Region.id).where(Region.code == region)).scalar() or -1
    if store is not None:
        store_id = conn.execute(select(Store.id).where(Store.code == store)).scalar() or -1
    stmt = select(ALERTS).where(_alert_scope(scope))
    for col, value in ((ALERTS.c.kind, kind), (ALERTS.c.region_id, region_id), (ALERTS.c.store_id, store_id),
                       (ALERTS.c.gtin, gtin)):
        if value is not None:
            stmt = stmt.where(col == value)
    if since is not None:
        stmt = stmt.where(ALERTS.c.at >= since)
    if until is not None:
        stmt = stmt.where(ALERTS.c.at < until)
    return list(conn.execute(stmt.order_by(ALERTS.c.id.desc()).limit(limit)).all())


def acknowledge(session: Session, principal: Principal, alert_id: int, note: str, via: str = "api") -> Alert:
    alert = session.scalar(select(Alert).where(Alert.id == alert_id, _alert_scope(principal.scope)))
    if alert is None:
        raise NotFound(f"No alert {alert_id} (unknown, or outside your regions and stores)")
    before = {"acked_at": alert.acked_at.isoformat() if alert.acked_at else None, "note": alert.note}
    alert.acked_at, alert.acked_by, alert.note = _now(), principal.actor, note
    audit(session, principal.actor, "trace.alert.ack", "trace_alert", str(alert_id), before=before,
          after={"note": note}, via=via)
    return alert


def alerts_per_day(conn: Connection, scope: Scope, days: int = 30) -> dict[tuple[str, str], int]:
    day = func.date(ALERTS.c.at)
    rows = conn.execute(select(day, ALERTS.c.kind, func.count()).where(_alert_scope(scope))
                        .group_by(day, ALERTS.c.kind)).all()
    return {(str(d), k): int(n) for d, k, n in rows}


def register(session: Session, code: str, contact: str) -> tuple[bool, str]:
    """A shopper's registration: (True, message) the first time; the second is refused and flagged."""
    _key, parsed = resolve(code)
    if not (parsed.gtin and parsed.serial):
        raise InputError("code", "only a unit's code (GTIN + serial) can be registered")
    unit = session.execute(select(UNITS.c.id).where(UNITS.c.gtin == parsed.gtin, UNITS.c.serial == parsed.serial)).first()
    if unit is None:
        return False, "This code is unknown to the brand: the item may not be genuine."
    existing = session.scalar(select(Registration).where(Registration.gtin == parsed.gtin,
                                                         Registration.serial == parsed.serial))
    if existing is not None:
        session.add(Alert(kind="second_registration", at=_now(), code=code[:1024], gtin=parsed.gtin,
                          serial=parsed.serial, message="a second shopper registration of one unit: possible clone",
                          evidence={"first_at": existing.at.isoformat()}))
        return False, "This item is already registered. If you just bought it, please contact the store."
    session.add(Registration(gtin=parsed.gtin, serial=parsed.serial, contact=contact[:200], at=_now()))
    return True, "Registered. Thank you!"
