"""REST endpoints of cloud.trace: /epcis/capture, /epcis/events, /trace/scans, /trace/items,
/trace/locations, /trace/commission, /trace/recalls, /trace/alerts (thin: `cloud.trace.service`
does the work, scoped and audited there)."""

from __future__ import annotations

import csv
import io
import tempfile
import uuid
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from broker.payloads import ScanPurpose, VerdictData
from cloud.access.scope import NotFound, Perm, Principal
from cloud.access.service import write_session
from cloud.access.web import require, via
from cloud.trace import epcis, service
from cloud.trace.handlers import RULES
from cloud.trace.models import Capture

__all__ = ["router"]

router = APIRouter()
Problem: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown, or outside your scope"},
    422: {"description": "invalid input (the field and the reason)"},
}
CaptureProblem: dict[int | str, dict[str, Any]] = {
    400: {"description": "an invalid EPCIS document: the event and field at fault, nothing stored"},
    413: {"description": "the document is larger than the limit"},
    **Problem,
}
Business = Annotated[Principal, Depends(require(Perm.BUSINESS))]
Code = Annotated[str, Path(min_length=1, max_length=1024)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
MAX_DOCUMENT = 1024 * 1024 * 1024
"""Bytes a captured document may have (it is spooled to disk, not held in memory)."""


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The code in any form (element string with GS, HRI, Digital Link, EPC URN, EAN)."""
    station: Text = "api"
    purpose: ScanPurpose = ScanPurpose.VERIFY
    node: Text | None = None
    """The box whose store the scan happened at; or give `location`."""
    location: Text | None = None
    """A store code or a location code."""
    at: AwareDatetime | None = None
    """When it was scanned (default: now)."""


class LocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._\-]+$")]
    kind: Annotated[str, StringConstraints(pattern="^(factory|distributor|warehouse|store)$")]
    name: Text
    gln: Annotated[str, StringConstraints(pattern=r"^[0-9]{13}$")] | None = None
    region: Text | None = None
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class RecallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gtin: Annotated[str, StringConstraints(min_length=8, max_length=14)]
    batch: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None
    serials: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=20)]], Field(max_length=10_000)] = []
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str, StringConstraints(min_length=1, max_length=500)]


@router.post("/trace/scans", response_model=VerdictData, tags=["trace"], responses=Problem)
def post_scan(body: ScanRequest, request: Request, principal: Business) -> VerdictData:
    """Verify a code as a station would (same rules, same verdict as a `scan` over the bus)."""
    with write_session(request.app.state.engine) as s, s.begin():
        return service.scan(s, principal, code=body.code, station=body.station, purpose=body.purpose, node=body.node,
                            location=body.location, at=body.at, rules=RULES)


@router.get("/trace/items/{code:path}", tags=["trace"], responses=Problem)
def item_journey(code: Code, request: Request, principal: Business) -> dict[str, Any]:
    """The unit's journey: its events and those of the cases it travelled in, in time order."""
    with request.app.state.sessionmaker() as s:
        return service.journey(s.connection(), code, principal.scope)


@router.post("/epcis/capture", status_code=202, tags=["epcis"], responses=CaptureProblem)
async def post_capture(request: Request, principal: Business, background: BackgroundTasks) -> JSONResponse:
    """Capture an EPCIS 2.0 JSON-LD document: spooled to a file as it arrives (memory stays flat
    for a document of millions of events), checked whole (an invalid one is refused with the event
    and field at fault, nothing stored), then stored in batches; 202 with the capture job's id."""
    limit = MAX_DOCUMENT
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(int(declared), limit)
    spool = tempfile.NamedTemporaryFile(prefix="omnishelf-epcis-", suffix=".json", delete=False)  # noqa: SIM115
    path = FilePath(spool.name)
    handed_over = False
    try:
        size = 0
        with spool:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return _too_large(size, limit)
                spool.write(chunk)
        try:
            total = await run_in_threadpool(epcis.check_file, path)
        except epcis.EpcisError as exc:
            return _invalid(str(exc), exc.reason.value)
        except Exception as exc:  # ijson's parse errors (not JSON, truncated)
            return _invalid(f"not JSON: {exc}")
        engine = request.app.state.engine
        capture_id = epcis.start(engine, principal.actor, total, datetime.now().astimezone())
        background.add_task(_capture_spooled, engine, capture_id, path)
        handed_over = True
        return JSONResponse({"captureID": str(capture_id), "events": total}, status_code=202,
                            headers={"Location": f"/epcis/capture/{capture_id}"})
    finally:
        if not handed_over:
            await run_in_threadpool(path.unlink, missing_ok=True)


def _capture_spooled(engine: Engine, capture_id: uuid.UUID, path: FilePath) -> None:
    try:
        epcis.capture(engine, capture_id, epcis.file_events(path))
    finally:
        path.unlink(missing_ok=True)


def _too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse({"type": "epcisException:CaptureLimitExceededException",
                         "title": f"document is {size} bytes or more, the limit is {limit} bytes: split it into "
                                  "several documents, or capture it with `omnishelf trace capture FILE`"},
                        status_code=413)


def _invalid(message: str, reason: str = "not_json") -> JSONResponse:
    return JSONResponse({"type": "epcisException:ValidationException", "title": message, "reason": reason},
                        status_code=400)


@router.get("/epcis/capture/{capture_id}", tags=["epcis"], responses=Problem)
def capture_status(capture_id: uuid.UUID, request: Request, principal: Business) -> dict[str, Any]:
    with request.app.state.sessionmaker() as s:
        job = s.get(Capture, capture_id)
        if job is None:
            raise NotFound(f"No capture job {capture_id}")
        return {"captureID": str(job.id), "running": job.status == "running", "success": job.status == "succeeded",
                "status": job.status, "total": job.total, "done": job.done, "stored": job.stored,
                "errors": job.errors or [], "createdAt": job.created_at.isoformat(),
                "finishedAt": job.finished_at.isoformat() if job.finished_at else None}


@router.get("/epcis/events", tags=["epcis"], responses=Problem)
def get_events(request: Request, principal: Business,
               limit: Annotated[int, Query(alias="perPage", ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    """EPCIS query: MATCH_epc, MATCH_anyEPC, EQ_bizStep, GE_eventTime, LT_eventTime, EQ_bizLocation."""
    params: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        params.setdefault(k, []).extend(x for x in v.split("|") if x)
    with request.app.state.sessionmaker() as s:
        events = service.query_events(s.connection(), params, limit, principal.scope)
    return {"@context": ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"], "type": "EPCISQueryDocument",
            "schemaVersion": "2.0", "epcisBody": {"queryResults": {"resultsBody": {"eventList": events}}}}


@router.get("/trace/locations", tags=["trace"], responses=Problem)
def list_locations(request: Request, principal: Business) -> list[dict[str, Any]]:
    with request.app.state.sessionmaker() as s:
        return [{"code": x.code, "kind": x.kind, "name": x.name, "gln": x.gln, "region_id": x.region_id,
                 "lat": x.lat, "lon": x.lon} for x in service.locations(s)]


@router.post("/trace/locations", status_code=201, tags=["trace"], responses=Problem)
def create_location(body: LocationIn, request: Request, principal: Business) -> dict[str, Any]:
    with write_session(request.app.state.engine) as s, s.begin():
        loc = service.create_location(s, principal, code=body.code, kind=body.kind, name=body.name, gln=body.gln,
                                      region=body.region, lat=body.lat, lon=body.lon, via=via(request))
        return {"code": loc.code, "kind": loc.kind, "gln": loc.gln, "id": loc.id}


@router.post("/trace/locations/import", tags=["trace"], responses=Problem)
async def import_locations(request: Request, principal: Business) -> dict[str, int]:
    """CSV body: code,kind,name,gln,region,lat,lon."""
    text = (await request.body()).decode("utf-8", errors="replace")
    with write_session(request.app.state.engine) as s, s.begin():
        return {"imported": service.import_locations(s, principal, text, via=via(request))}


@router.post("/trace/commission", tags=["trace"], responses=Problem)
async def commission(request: Request, principal: Business) -> dict[str, int]:
    """CSV body: gtin,serial,batch,expiry,location (expiry YYYY-MM-DD or empty)."""
    text = (await request.body()).decode("utf-8", errors="replace")
    with write_session(request.app.state.engine) as s, s.begin():
        n = service.commission_csv(s.connection(), text, principal.actor, datetime.now().astimezone())
        from cloud.access.service import audit

        audit(s, principal.actor, "trace.commission", "trace_units", f"{n} units", after={"units": n}, via=via(request))
        return {"commissioned": n}


@router.post("/trace/recalls", status_code=201, tags=["trace"], responses=Problem)
def post_recall(body: RecallIn, request: Request, principal: Business) -> dict[str, int]:
    with write_session(request.app.state.engine) as s, s.begin():
        return {"recalls": service.recall(s, principal, gtin=body.gtin, batch=body.batch, serials=body.serials,
                                          reason=body.reason, via=via(request))}


def _alert_json(a: Any) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "at": a.at.isoformat(), "code": a.code, "gtin": a.gtin, "serial": a.serial,
            "store_id": a.store_id, "region_id": a.region_id, "message": a.message, "evidence": a.evidence,
            "acked_at": a.acked_at.isoformat() if a.acked_at else None, "acked_by": a.acked_by, "note": a.note}


@router.get("/trace/alerts", tags=["trace"], responses={
    200: {"description": "the alerts (JSON, or CSV with format=csv)",
          "content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}, **Problem})
def list_alerts(request: Request, principal: Business, kind: Annotated[str | None, Query(max_length=32)] = None,
                gtin: Annotated[str | None, Query(max_length=14)] = None,
                region: Annotated[str | None, Query(max_length=32)] = None,
                store: Annotated[str | None, Query(max_length=32)] = None,
                since: datetime | None = None, until: datetime | None = None,
                format: Annotated[str, Query(pattern="^(json|csv)$")] = "json") -> Any:
    """Alerts in the caller's regions and stores, newest first; `format=csv` for a spreadsheet."""
    with request.app.state.sessionmaker() as s:
        rows = service.alerts(s.connection(), principal.scope, kind=kind, gtin=gtin, region=region, store=store,
                              since=since, until=until)
    if format == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["id", "kind", "at", "code", "gtin", "serial", "store_id", "region_id", "message", "acked_at",
                    "acked_by", "note"])
        for a in rows:
            w.writerow([a.id, a.kind, a.at.isoformat(), a.code.replace("\x1d", "<GS>"), a.gtin, a.serial, a.store_id,
                        a.region_id, a.message, a.acked_at, a.acked_by, a.note])
        return Response(out.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="trace-alerts.csv"'})
    return [_alert_json(a) for a in rows]


@router.post("/trace/alerts/{alert_id}/ack", tags=["trace"], responses=Problem)
def ack_alert(alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], body: AckIn, request: Request,
              principal: Business) -> dict[str, Any]:
    with write_session(request.app.state.engine) as s, s.begin():
        alert = service.acknowledge(s, principal, alert_id, body.note, via=via(request))
        s.flush()
        return _alert_json(alert)



