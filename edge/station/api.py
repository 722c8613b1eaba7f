"""The station's routes on the box's local API (for the station screen, the clerk's app, integrations).

    GET  /station                       counts, whether the cloud is online, lists, printers, scanners, queue
    POST /station/scans                 {code, symbology?, purpose?, station?, wait_s?} → the scan and its verdict
    GET  /station/verdicts?limit=&pending=   latest scans, newest first, each with its verdict (or null)
    GET  /station/verdicts/{scan_id}    one scan and its verdict
    GET  /station/events?after=&wait=   the feed (scan, verdict, alert, printer, print_queued, printed, lists)
                                        after an event id; waits up to `wait` s for the next one (long poll)
    GET  /station/alerts?all=           open alerts (all: acknowledged ones too)
    POST /station/alerts/{id}/ack       {note}
    GET  /station/lists                 the offline lists held (version, counts)
    POST /station/print/receipt         {scan_ids, request_id?}
    POST /station/print/label           {scan_id, request_id?}
    GET  /station/print/jobs?limit=     the queue, newest first, and the printers' states
    POST /station/print/jobs/{id}/reprint
    GET  /station/stock/{sku}           on hand / available here and available in nearby stores
    POST /station/stock/adjustments     {sku, delta, reason, note?, request_id?} → 202 {adjustment_id, …, new}

Writes (scans, stock adjustments, reprints) take `X-Clerk-Session: <token>` (`POST /clerks/sign-in`):
the clerk is stamped on what goes up to the cloud (`edge.attribution`).
"""

from __future__ import annotations

import re
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from broker.payloads import ClerkRef, ScanPurpose, StockReason
from edge.attribution import clerk_of
from edge.localapi import ApiError, Request, Route, integer, json_response, text
from edge.outbox import OutboxFull

if TYPE_CHECKING:
    from edge.station.component import StationComponent

__all__ = ["station_routes"]

_WAIT_MAX_S = 25
_DELTA_MAX = 10_000
_SKU = re.compile(r"[A-Za-z0-9._\-/]{1,64}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanRequest(_Body):
    code: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """As the scanner sent it; GS as the character U+001D; an AIM prefix (`]d2…`) is recognised."""
    symbology: Annotated[str, StringConstraints(max_length=200)] | None = None
    purpose: ScanPurpose = ScanPurpose.VERIFY
    station: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "api"
    wait_s: Annotated[float, Field(ge=0, le=_WAIT_MAX_S)] = 0
    """Wait this long for a verdict (final, or provisional) before answering."""


class AdjustmentRequest(_Body):
    sku: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-/]{1,64}$")]
    delta: Annotated[int, Field(ge=-_DELTA_MAX, le=_DELTA_MAX)]
    """Units added (found, counted more) or taken away (damaged, lost): never 0."""
    reason: StockReason
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    """The same request_id again returns the adjustment already made (a retry never adjusts twice)."""

    @field_validator("delta")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("delta is 0: an adjustment adds (positive) or removes (negative) at least one unit")
        return value


class AckRequest(_Body):
    note: Annotated[str, StringConstraints(max_length=500)] = ""


class ReceiptRequest(_Body):
    scan_ids: Annotated[tuple[uuid.UUID, ...], Field(min_length=1, max_length=100)]
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    """The same request_id again returns the job already queued (a retry never prints twice)."""


class LabelRequest(_Body):
    scan_id: uuid.UUID
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{what} {value[:60]!r} is not a scan id: expected a UUID") from None


def station_routes(station: StationComponent) -> tuple[Route, ...]:
    from edge.station.component import PrintRefused

    db = station.db

    def clerk(req: Request) -> ClerkRef | None:
        return clerk_of(req, station.ctx.shared, required=station.ctx.config.clerks.require_sign_in)

    def submit(req: Request) -> Any:
        body = req.body
        assert isinstance(body, ScanRequest)
        from edge.station.codes import split_aim

        who = clerk(req)
        aim, code = split_aim(body.code)
        try:
            scan_id = station.submit_threadsafe(code, body.symbology or aim, body.station, body.purpose, who)
        except OutboxFull as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the box cannot take scans now: {exc}") from None
        except ValidationError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the scan is not valid: {exc.errors(include_url=False)[0]['msg']}") from None
        except (RuntimeError, TimeoutError) as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc) or "the box did not record the scan in time; try again") from None
        if body.wait_s:
            station.wait_verdict(str(scan_id), body.wait_s)
        return db.scan(str(scan_id))

    def verdicts(req: Request) -> Any:
        return {"scans": db.latest(int(req.params["limit"] or 50), pending=req.params["pending"] == "1")}

    def one(req: Request) -> Any:
        scan_id = _uuid(req.args["scan_id"], "scan id")
        found = db.scan(scan_id)
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no scan {scan_id} on this station")
        return found

    def events(req: Request) -> Any:
        after = int(req.params["after"] or 0)
        wait = int(req.params["wait"] or 0)
        found = db.wait_events(after, wait) if wait else db.events(after)
        return {"events": found, "last": found[-1]["id"] if found else db.last_event()}

    def alerts(req: Request) -> Any:
        return {"alerts": db.alerts(open_only=req.params["all"] != "1")}

    def ack(req: Request) -> Any:
        raw = req.args["alert_id"]
        if not raw.isdigit() or len(raw) > 12:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"alert id {raw[:30]!r} is not a number")
        body = req.body
        assert isinstance(body, AckRequest)
        if not db.alert_exists(int(raw)):
            raise ApiError(HTTPStatus.NOT_FOUND, f"no alert {raw} on this station")
        acked = db.ack_alert(int(raw), body.note)
        return {"id": int(raw), "acknowledged": True, "already": not acked}

    def lists(_req: Request) -> Any:
        return db.list_counts()

    def _job(result: tuple[Any, bool]) -> Any:
        job, new = result
        return {**job.public(), "new": new}

    def receipt(req: Request) -> Any:
        body = req.body
        assert isinstance(body, ReceiptRequest)
        try:
            return _job(station.print_receipt([str(s) for s in body.scan_ids], request_id=body.request_id))
        except PrintRefused as exc:
            raise ApiError(HTTPStatus.CONFLICT, str(exc)) from None

    def label(req: Request) -> Any:
        body = req.body
        assert isinstance(body, LabelRequest)
        try:
            return _job(station.print_label(str(body.scan_id), request_id=body.request_id))
        except PrintRefused as exc:
            raise ApiError(HTTPStatus.CONFLICT, str(exc)) from None

    def jobs(req: Request) -> Any:
        return {"printers": station.printer_summary(), "jobs": [j.public() for j in db.jobs(int(req.params["limit"] or 50))]}

    def reprint(req: Request) -> Any:
        raw = req.args["job_id"]
        if not raw.isdigit() or len(raw) > 12:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"job id {raw[:30]!r} is not a number")
        who = clerk(req)
        job = station.reprint(int(raw))
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no print job {raw} on this station")
        return {**job.public(), "clerk": who.model_dump() if who else None}

    def stock(req: Request) -> Any:
        sku = req.args["sku"]
        if not _SKU.fullmatch(sku):
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"{sku[:80]!r} is not a SKU: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'")
        lookup = station.ctx.shared.stock
        if lookup is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "this box looks no stock up: enable the kiosk component "
                                                           "(kiosk.enabled, kiosk.stock_url, kiosk.nearby) in its config")
        found = lookup.station_stock(sku)
        if found["source"] not in ("cloud", "cache"):
            found["source"] = "cache"  # nothing fetched yet: an empty cache, said by here=null and as_of=null
        return found

    def adjust(req: Request) -> Any:
        body = req.body
        assert isinstance(body, AdjustmentRequest)
        who = clerk(req)
        try:
            answer, new = station.adjust_stock(body.sku, body.delta, body.reason, body.note or None, who, body.request_id)
        except OutboxFull as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the box cannot take adjustments now: {exc}") from None
        except (RuntimeError, TimeoutError) as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE,
                           str(exc) or "the box did not record the adjustment in time; try again") from None
        return json_response({**answer, "new": new}, HTTPStatus.ACCEPTED)

    def summary(_req: Request) -> Any:
        return dict(station.status())

    return (
        Route("GET", "/station", summary),
        Route("POST", "/station/scans", submit, body=ScanRequest),
        Route("GET", "/station/verdicts", verdicts, params=(integer("limit", 50, 1, 500), text("pending", max_len=1))),
        Route("GET", "/station/verdicts/{scan_id}", one),
        Route("GET", "/station/events", events, params=(integer("after", 0, 0, 2**62), integer("wait", 0, 0, _WAIT_MAX_S))),
        Route("GET", "/station/alerts", alerts, params=(text("all", max_len=1),)),
        Route("POST", "/station/alerts/{alert_id}/ack", ack, body=AckRequest),
        Route("GET", "/station/lists", lists),
        Route("POST", "/station/print/receipt", receipt, body=ReceiptRequest),
        Route("POST", "/station/print/label", label, body=LabelRequest),
        Route("GET", "/station/print/jobs", jobs, params=(integer("limit", 50, 1, 500),)),
        Route("POST", "/station/print/jobs/{job_id}/reprint", reprint),
        Route("GET", "/station/stock/{sku...}", stock),
        Route("POST", "/station/stock/adjustments", adjust, body=AdjustmentRequest),
    )
