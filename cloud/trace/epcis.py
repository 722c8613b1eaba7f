"""EPCIS 2.0 JSON-LD documents: validation (each problem named) and the capture job.

A document is checked whole before anything is stored: one invalid event refuses the document
(nothing stored), as the standard's capture interface does. Valid documents are stored in batches
(one transaction each) so a document of millions of events shows progress and a crash resumes
without duplicates (events are idempotent by eventID or content hash)."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, update

from cloud.trace.events import store_event
from cloud.trace.models import Capture

__all__ = ["BIZ_STEPS", "DISPOSITIONS", "EpcisError", "EpcisReason", "capture", "check_file", "events_of",
           "file_events", "validate"]

BIZ_STEPS = frozenset(["accepting", "arriving", "assembling", "collecting", "commissioning", "consigning", "creating_class_instance", "cycle_counting", "decommissioning", "departing", "destroying", "disassembling", "dispensing", "encoding", "entering_exiting", "holding", "inspecting", "installing", "killing", "loading", "other", "packing", "picking", "receiving", "removing", "repackaging", "repairing", "replacing", "reserving", "retail_selling", "sampling", "sensor_reporting", "shipping", "staging_outbound", "stock_taking", "stocking", "storing", "transporting", "unloading", "unpacking", "void_shipping"])
DISPOSITIONS = frozenset(["active", "available", "completeness_inferred", "completeness_verified", "conformant", "container_closed", "container_open", "damaged", "destroyed", "dispensed", "disposed", "encoded", "expired", "in_progress", "in_transit", "inactive", "mismatch_instance", "mismatch_class", "mismatch_quantity", "needs_replacement", "no_pedigree_match", "non_conformant", "non_sellable_other", "partially_dispensed", "recalled", "reserved", "retail_sold", "returned", "sellable_accessible", "sellable_not_accessible", "stolen", "unavailable", "unknown"])
SOURCE_TYPES = frozenset({"owning_party", "possessing_party", "location"})
EVENT_TYPES = frozenset({"ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent",
                         "AssociationEvent"})
ACTIONS = frozenset({"ADD", "OBSERVE", "DELETE"})
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.ASCII)
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$", re.ASCII)
_QUANTITY_KEYS = frozenset({"epcClass", "quantity", "uom"})
BATCH = 1000


class EpcisReason(enum.StrEnum):
    NOT_A_DOCUMENT = "not_a_document"
    CONTEXT = "context"
    MISSING = "missing_field"
    VALUE = "invalid_value"
    VOCABULARY = "vocabulary"


class EpcisError(ValueError):
    """An invalid document; the message names the event (by position) and the field."""

    def __init__(self, reason: EpcisReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _is_uri(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value))


def _vocab(where: str, field: str, value: Any, words: frozenset[str], prefixes: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise EpcisError(EpcisReason.VALUE, f"{where}: {field} must be a string, found {value!r}")
    for prefix in prefixes:
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    else:
        if _is_uri(value):
            return  # a custom vocabulary URI is allowed
    if value not in words:
        raise EpcisError(EpcisReason.VOCABULARY, f"{where}: {field} {value!r} is not a CBV value nor a URI")


def _time(where: str, field: str, value: Any) -> datetime:
    if not isinstance(value, str) or not _TIME.match(value):
        raise EpcisError(EpcisReason.VALUE, f"{where}: {field} must be an ISO 8601 date-time with an offset "
                         f"(2026-07-22T06:45:00+02:00), found {value!r}")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def events_of(doc: Any) -> list[dict[str, Any]]:
    """The document's events (a bare event is accepted as a one-event document)."""
    if not isinstance(doc, dict):
        raise EpcisError(EpcisReason.NOT_A_DOCUMENT, f"an EPCIS document is a JSON object, found {type(doc).__name__}")
    if "@context" not in doc:
        raise EpcisError(EpcisReason.CONTEXT, f"{doc.get('type', 'document')}: @context is missing "
                         "(JSON-LD needs the EPCIS context)")
    if doc.get("type") in EVENT_TYPES:
        return [doc]
    if doc.get("type") != "EPCISDocument":
        raise EpcisError(EpcisReason.NOT_A_DOCUMENT, f"type must be EPCISDocument, found {doc.get('type')!r}")
    body = doc.get("epcisBody")
    events = body.get("eventList") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise EpcisError(EpcisReason.MISSING, "EPCISDocument: epcisBody.eventList is missing")
    return events


def validate_event(i: int, event: Any) -> datetime:
    """Check one event; its eventTime in UTC. `i` (1-based) names it in messages."""
    if not isinstance(event, dict):
        raise EpcisError(EpcisReason.VALUE, f"event {i}: must be an object")
    kind = event.get("type")
    where = f"event {i} ({kind})"
    if kind not in EVENT_TYPES:
        raise EpcisError(EpcisReason.VALUE, f"event {i}: type must be one of {', '.join(sorted(EVENT_TYPES))}, "
                         f"found {kind!r}")
    missing = [f for f in ("eventTime", "eventTimeZoneOffset") if f not in event]
    if kind != "TransformationEvent" and "action" not in event:
        missing.insert(0, "action")
    if missing:
        raise EpcisError(EpcisReason.MISSING, f"{where}: {' and '.join(missing)} missing")
    when = _time(where, "eventTime", event["eventTime"])
    if not isinstance(event["eventTimeZoneOffset"], str) or not _OFFSET.match(event["eventTimeZoneOffset"]):
        raise EpcisError(EpcisReason.VALUE, f"{where}: eventTimeZoneOffset must be ±HH:MM, "
                         f"found {event['eventTimeZoneOffset']!r}")
    if "action" in event and event["action"] not in ACTIONS:
        raise EpcisError(EpcisReason.VALUE, f"{where}: action must be ADD, OBSERVE or DELETE, found {event['action']!r}")
    if "bizStep" in event:
        _vocab(where, "bizStep", event["bizStep"], BIZ_STEPS,
               ("urn:epcglobal:cbv:bizstep:", "https://ref.gs1.org/cbv/BizStep-", "gs1:BizStep-", "cbv:BizStep-"))
    if "disposition" in event:
        _vocab(where, "disposition", event["disposition"], DISPOSITIONS,
               ("urn:epcglobal:cbv:disp:", "https://ref.gs1.org/cbv/Disp-", "gs1:Disp-", "cbv:Disp-"))
    if kind == "ObjectEvent" and "epcList" not in event and "quantityList" not in event:
        raise EpcisError(EpcisReason.MISSING, f"{where}: needs an epcList or a quantityList (what the event is about)")
    for name in ("epcList", "childEPCs", "inputEPCList", "outputEPCList"):
        if name in event and not (isinstance(event[name], list) and all(isinstance(e, str) for e in event[name])):
            raise EpcisError(EpcisReason.VALUE, f"{where}: {name} must be a list of identifiers")
    for name in ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList"):
        for q in event.get(name) or []:
            if not isinstance(q, dict) or "epcClass" not in q:
                raise EpcisError(EpcisReason.MISSING, f"{where}: each {name} entry needs an epcClass")
            extra = sorted(set(q) - _QUANTITY_KEYS)
            if extra:
                raise EpcisError(EpcisReason.VALUE, f"{where}: unknown field {', '.join(extra)} in {name} "
                                 "(expected epcClass, quantity, uom)")
            if "quantity" in q and (isinstance(q["quantity"], bool) or not isinstance(q["quantity"], int | float)):
                raise EpcisError(EpcisReason.VALUE, f"{where}: {name} quantity must be a number, found {q['quantity']!r}")
    for name, key in (("sourceList", "source"), ("destinationList", "destination")):
        for entry in event.get(name) or []:
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str) or "type" not in entry:
                raise EpcisError(EpcisReason.MISSING, f"{where}: each {name} entry needs a type and a {key}")
            t = entry["type"]
            bare = t.rsplit("SDT-", 1)[-1].rsplit("sdt:", 1)[-1] if isinstance(t, str) else t
            # A CBV type (bare or in one of its URI forms), or any other URI / CURIE (a custom type).
            if not (isinstance(t, str) and (bare in SOURCE_TYPES or _is_uri(t))):
                raise EpcisError(EpcisReason.VOCABULARY, f"{where}: {name} type {t!r} is not owning_party, "
                                 "possessing_party, location nor a URI")
    ilmd = event.get("ilmd")
    if ilmd is not None:
        if not isinstance(ilmd, dict):
            raise EpcisError(EpcisReason.VALUE, f"{where}: ilmd must be an object")
        bare = sorted(k for k in ilmd if ":" not in k and not k.startswith("@"))
        if bare:
            raise EpcisError(EpcisReason.VALUE, f"{where}: ilmd field {', '.join(bare)} has no namespace prefix "
                             "(e.g. cbvmda:lotNumber)")
    cert = event.get("certificationInfo")
    if cert is not None and not (isinstance(cert, str) or (isinstance(cert, list) and all(isinstance(c, str) for c in cert))):
        raise EpcisError(EpcisReason.VALUE, f"{where}: certificationInfo must be a URI or a list of URIs")
    return when


def validate(doc: Any) -> list[tuple[dict[str, Any], datetime]]:
    """Every event of the document with its time in UTC, or `EpcisError` for the first problem."""
    return [(e, validate_event(i, e)) for i, e in enumerate(events_of(doc), 1)]


def _batches(items: Iterable[tuple[dict[str, Any], datetime]], size: int
             ) -> Iterator[list[tuple[dict[str, Any], datetime]]]:
    chunk: list[tuple[dict[str, Any], datetime]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def start(engine: Engine, actor: str, total: int, now: datetime) -> uuid.UUID:
    from cloud.access.service import write_session

    capture_id = uuid.uuid4()
    with write_session(engine) as s, s.begin():
        s.add(Capture(id=capture_id, status="running", total=total, done=0, stored=0, errors=None, actor=actor[:80],
                      created_at=now))
    return capture_id


def capture(engine: Engine, capture_id: uuid.UUID, events: Iterable[tuple[dict[str, Any], datetime]],
            batch: int = BATCH, progress: Callable[[int], None] | None = None) -> None:
    """Store validated events in batches (one transaction each), moving the job's progress with
    each batch, then mark the job finished. `events` may be a stream (a file read event by event)."""
    from cloud.access.service import write_session

    table: Table = Capture.__table__  # type: ignore[assignment]
    done = stored = 0
    try:
        for chunk in _batches(events, batch):
            with write_session(engine) as s, s.begin():
                conn = s.connection()
                now = datetime.now(UTC)
                for event, when in chunk:
                    if store_event(conn, event, when, capture_id=capture_id, now=now) is not None:
                        stored += 1
                done += len(chunk)
                conn.execute(update(table).where(table.c.id == capture_id).values(done=done, stored=stored))
            if progress is not None:
                progress(len(chunk))
        status, errors = "succeeded", None
    except Exception as exc:  # recorded on the job; the events stored so far stay (capture is idempotent)
        status, errors = "failed", [f"event {done + 1}..{done + batch}: {type(exc).__name__}: {exc}"[:500]]
    with write_session(engine) as s, s.begin():
        s.connection().execute(update(table).where(table.c.id == capture_id).values(
            status=status, errors=errors, finished_at=datetime.now(UTC)))


def _header(path: Path) -> tuple[set[str], Any]:
    """The document's top-level keys and its `type`, read as a stream (the file may be gigabytes)."""
    import ijson

    keys: set[str] = set()
    kind: Any = None
    with path.open("rb") as f:
        for prefix, event, value in ijson.parse(f, use_float=True):
            if prefix == "" and event not in ("start_map", "map_key", "end_map"):
                raise EpcisError(EpcisReason.NOT_A_DOCUMENT, "an EPCIS document is a JSON object, found "
                                 f"{'a list' if event == 'start_array' else 'a ' + event}")
            if prefix == "" and event == "map_key":
                keys.add(value)
            elif prefix == "type" and event == "string":
                kind = value
    return keys, kind


def file_events(path: Path) -> Iterator[tuple[dict[str, Any], datetime]]:
    """The events of an EPCIS document file, each validated, read one at a time (memory stays flat
    for a document of millions of events). Raises `EpcisError` at the first problem; a caller that
    must store nothing of an invalid document runs through it once before storing (`check_file`)."""
    import ijson

    keys, kind = _header(path)
    if "@context" not in keys:
        raise EpcisError(EpcisReason.CONTEXT, f"{kind or 'document'}: @context is missing "
                         "(JSON-LD needs the EPCIS context)")
    if kind in EVENT_TYPES:
        with path.open("rb") as f:
            import json

            doc = json.load(f)
        yield doc, validate_event(1, doc)
        return
    if kind != "EPCISDocument":
        raise EpcisError(EpcisReason.NOT_A_DOCUMENT, f"type must be EPCISDocument, found {kind!r}")
    if "epcisBody" not in keys:
        raise EpcisError(EpcisReason.MISSING, "EPCISDocument: epcisBody.eventList is missing")
    with path.open("rb") as f:
        for i, event in enumerate(ijson.items(f, "epcisBody.eventList.item", use_float=True), 1):
            yield event, validate_event(i, event)


def check_file(path: Path) -> int:
    """Validate a whole document file as a stream; its number of events, or `EpcisError`."""
    return sum(1 for _ in file_events(path))
