"""A simulated supply chain for the trace tests, the bench and the demo: a factory, two
distributors in two regions, four stores; units commissioned in batches, packed in cases, shipped
and received as EPCIS events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import gs1

GTIN = "09506000134352"
FACTORY = ("fac-suzhou", "factory", "Suzhou factory", "east", 31.30, 120.62)
DISTRIBUTORS = [("dc-east", "distributor", "Shanghai DC", "east", 31.10, 121.30),
                ("dc-south", "distributor", "Guangzhou DC", "south", 23.13, 113.26)]
STORES = {"st0001": "dc-east", "st0002": "dc-east", "st0003": "dc-south", "st0004": "dc-south"}
ST0004 = ("st0004", "Guangzhou Tianhe", "south", 23.13, 113.32)


def gln(n: int) -> str:
    body = f"950600{n:06d}"
    return body + gs1.check_digit(body)


def sscc(n: int) -> str:
    body = f"0950600{n:010d}"
    return body + gs1.check_digit(body)


GLNS = {"fac-suzhou": gln(1), "dc-east": gln(2), "dc-south": gln(3), "st0001": gln(11), "st0002": gln(12),
        "st0003": gln(13), "st0004": gln(14)}


def sgln(code: str) -> str:
    return gs1.sgln_urn(GLNS[code])


def unit(serial: str) -> str:
    return f"https://id.gs1.org/01/{GTIN}/21/{serial}"


def case(n: int) -> str:
    return f"https://id.gs1.org/00/{sscc(n)}"


def _t(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(kind: str, when: datetime, step: str, loc: str, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"type": kind, "eventTime": _t(when), "eventTimeZoneOffset": "+08:00", "bizStep": step,
                         "bizLocation": {"id": sgln(loc)}, "readPoint": {"id": sgln(loc)}}
    if kind != "TransformationEvent":
        e["action"] = kw.pop("action", "OBSERVE")
    e.update(kw)
    return e


def document(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@context": ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"], "type": "EPCISDocument",
            "schemaVersion": "2.0", "creationDate": _t(datetime.now(UTC)), "epcisBody": {"eventList": events}}


def supply_chain(per_store: int = 10, start: datetime | None = None, expired_batch: bool = True
                 ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(EPCIS document, store → serials shipped to it, plus 'factory' → serials never shipped).

    Batch L1 (expiry 2031-12-31) for most units; each store's last unit is from batch LX (expired
    2020-01-31) when `expired_batch`. Cases: one per store (SSCC n), in a pallet per distributor.
    """
    t0 = start or datetime.now(UTC) - timedelta(days=10)
    events: list[dict[str, Any]] = []
    plan: dict[str, list[str]] = {}
    for i, store in enumerate(STORES):
        plan[store] = [f"S{i}{k:05d}" for k in range(per_store)]
    plan["factory"] = [f"F{k:05d}" for k in range(3)]
    for batch, expiry, serials in (
        ("L1", "2031-12-31", [s for st in STORES for s in (plan[st][:-1] if expired_batch else plan[st])]
         + plan["factory"]),
        ("LX", "2020-01-31", [plan[st][-1] for st in STORES] if expired_batch else []),
    ):
        if serials:
            events.append(event("ObjectEvent", t0, "commissioning", "fac-suzhou", action="ADD",
                                epcList=[unit(s) for s in serials], disposition="active",
                                ilmd={"cbvmda:lotNumber": batch, "cbvmda:itemExpirationDate": expiry}))
    for i, store in enumerate(STORES, 1):
        events.append(event("AggregationEvent", t0 + timedelta(hours=1), "packing", "fac-suzhou", action="ADD",
                            parentID=case(i), childEPCs=[unit(s) for s in plan[store]]))
    for j, dc in enumerate(("dc-east", "dc-south")):
        cases = [case(i) for i, st in enumerate(STORES, 1) if STORES[st] == dc]
        events.append(event("ObjectEvent", t0 + timedelta(hours=2), "shipping", "fac-suzhou", epcList=cases,
                            disposition="in_transit",
                            destinationList=[{"type": "location", "destination": sgln(dc)}]))
        events.append(event("ObjectEvent", t0 + timedelta(days=1, hours=j), "receiving", dc, epcList=cases,
                            disposition="in_progress"))
    for i, store in enumerate(STORES, 1):
        dc = STORES[store]
        events.append(event("ObjectEvent", t0 + timedelta(days=2), "shipping", dc, epcList=[case(i)],
                            disposition="in_transit",
                            destinationList=[{"type": "location", "destination": sgln(store)}]))
    return document(events), plan


def locations_csv() -> str:
    rows = ["code,kind,name,gln,region,lat,lon"]
    for code, kind, name, region, lat, lon in (FACTORY, *DISTRIBUTORS):
        rows.append(f"{code},{kind},{name},{GLNS[code]},{region},{lat},{lon}")
    for store in STORES:
        rows.append(f"{store},store,,{GLNS[store]},,0,0")
    return "\n".join(rows) + "\n"


def element(serial: str, batch: str = "L1", expiry: str = "311231") -> str:
    """The unit's DataMatrix content as a scanner sends it."""
    return f"]d201{GTIN}17{expiry}10{batch}{gs1.GS}21{serial}"
