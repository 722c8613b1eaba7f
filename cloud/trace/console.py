"""Console pages of cloud.trace: code lookup → journey (timeline and an SVG map), alerts (filter,
acknowledge, CSV, a per-day chart drawn as SVG on the server); and the shopper's registration page
(a Digital Link path on the cloud's own domain: /01/{gtin}/21/{serial}), served without sign-in and
without outside assets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.access.scope import NotFound, Perm, Principal
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.trace import service

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Poster = Annotated[Principal, Depends(form_user(Perm.BUSINESS))]
COLOURS = {"cloned": "#c0392b", "diverted": "#d35400", "recalled_sold": "#8e44ad", "unknown_code": "#2c3e50",
           "already_sold": "#7f8c8d", "batch_or_expiry_mismatch": "#16a085", "provisional_overturned": "#e74c3c",
           "second_registration": "#2980b9"}


def map_svg(points: list[dict[str, Any]], width: int = 600, height: int = 300) -> str:
    """The journey's places on an equirectangular frame fitted to them, joined in time order."""
    if not points:
        return ""
    lats, lons = [p["lat"] for p in points], [p["lon"] for p in points]
    pad = 0.5
    lo_lat, hi_lat, lo_lon, hi_lon = min(lats) - pad, max(lats) + pad, min(lons) - pad, max(lons) + pad

    def xy(p: dict[str, Any]) -> tuple[float, float]:
        return (20 + (p["lon"] - lo_lon) / (hi_lon - lo_lon) * (width - 40),
                height - 20 - (p["lat"] - lo_lat) / (hi_lat - lo_lat) * (height - 40))

    coords = [xy(p) for p in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    marks = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#2c3e50"/><text x="{x + 7:.1f}" y="{y - 7:.1f}" '
                    f'font-size="11">{i}. {escape(p["name"])}</text>' for i, ((x, y), p) in enumerate(zip(coords, points, strict=True), 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="journey map" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="#f4f6f8"/>'
            f'<polyline points="{path}" fill="none" stroke="#3498db" stroke-width="2"/>{marks}</svg>')


def chart_svg(counts: dict[tuple[str, str], int], days: int = 30, today: date | None = None) -> str:
    """Alerts per day (stacked by kind) for the last `days` days."""
    today = today or datetime.now(UTC).date()
    dates = [(today - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    kinds = sorted({k for _d, k in counts})
    totals = [sum(counts.get((d, k), 0) for k in kinds) for d in dates]
    top = max([1, *totals])
    w, h, bar = 640, 200, 640 / days
    parts = []
    for i, d in enumerate(dates):
        y = float(h - 20)
        for k in kinds:
            n = counts.get((d, k), 0)
            if n:
                bh = n / top * (h - 40)
                y -= bh
                parts.append(f'<rect x="{i * bar + 2:.1f}" y="{y:.1f}" width="{bar - 4:.1f}" height="{bh:.1f}" '
                             f'fill="{COLOURS.get(k, "#95a5a6")}"><title>{d} {escape(k)}: {n}</title></rect>')
    legend = "".join(f'<rect x="{10 + j * 150}" y="{h - 12}" width="10" height="10" fill="{COLOURS.get(k, "#95a5a6")}"/>'
                     f'<text x="{24 + j * 150}" y="{h - 3}" font-size="11">{escape(k)}</text>' for j, k in enumerate(kinds))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="alerts per day" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}"><text x="4" y="12" font-size="11">max {top}/day</text>{"".join(parts)}{legend}</svg>')


@router.get("/console/trace", response_class=HTMLResponse)
def trace_page(request: Request, principal: Reader, code: Annotated[str, Query(max_length=1024)] = "",
               kind: Annotated[str, Query(max_length=32)] = "") -> HTMLResponse:
    journey: dict[str, Any] | None = None
    problem = None
    with request.app.state.sessionmaker() as s:
        conn = s.connection()
        if code:
            try:
                journey = service.journey(conn, code, principal.scope)
            except InputError as exc:
                problem = exc.message
            except NotFound as exc:
                problem = str(exc)
        rows = service.alerts(conn, principal.scope, kind=kind or None, limit=200)
        chart = chart_svg(service.alerts_per_day(conn, principal.scope))
        places = service.locations(s)
    points = [e["place"] for e in (journey or {}).get("events", []) if e.get("place")]
    dedup = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    return render(request, "trace.html", principal, active="trace", code=code, journey=journey, problem=problem,
                  map=map_svg(dedup), alerts=rows, chart=chart, kind=kind, kinds=sorted(COLOURS),
                  locations=places)


@router.post("/console/trace/recalls")
def recall(request: Request, principal: Poster, gtin: Annotated[str, Form(min_length=8, max_length=14)],
           reason: Annotated[str, Form(min_length=1, max_length=500)],
           batch: Annotated[str, Form(max_length=20)] = "", serials: Annotated[str, Form(max_length=20_000)] = "",
           ) -> Response:
    """A recall of a GTIN's batch, or of units (serials separated by spaces, commas or lines)."""
    units = [x for x in serials.replace(",", " ").split() if x]
    with write_session(request.app.state.engine) as s, s.begin():
        try:
            service.recall(s, principal, gtin=gtin, batch=batch.strip() or None, serials=units, reason=reason,
                           via="console")
        except InputError as exc:
            return render(request, "error.html", principal, status_code=422, message=str(exc), title="Recall refused")
    return RedirectResponse("/console/trace", status_code=303)


@router.post("/console/trace/alerts/{alert_id}/ack")
def ack(request: Request, principal: Poster, alert_id: int, note: Annotated[str, Form(min_length=1, max_length=500)]
        ) -> Response:
    with write_session(request.app.state.engine) as s, s.begin():
        try:
            service.acknowledge(s, principal, alert_id, note, via="console")
        except NotFound as exc:
            return render(request, "error.html", principal, status_code=404, message=str(exc), title="Alert not found")
    return RedirectResponse("/console/trace", status_code=303)


_SHOPPER = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Register your item</title>
<style>body{{font-family:sans-serif;margin:1.2em;max-width:28em}}input,button{{font-size:1.1em;padding:.4em;width:100%;
margin:.3em 0}}.ok{{color:#1e8449}}.no{{color:#c0392b}}</style></head><body>
<h1>Register your item</h1><p>Product {gtin}, unit {serial}</p>{message}
<form method="post"><label>E-mail or phone<input name="contact" required maxlength="200"></label>
<button type="submit">Register</button></form></body></html>"""


@router.get("/01/{gtin}/21/{serial}", response_class=HTMLResponse)
def shopper_page(gtin: str, serial: str) -> HTMLResponse:
    return HTMLResponse(_SHOPPER.format(gtin=escape(gtin), serial=escape(serial), message=""))


@router.post("/01/{gtin}/21/{serial}", response_class=HTMLResponse)
def shopper_register(request: Request, gtin: str, serial: str,
                     contact: Annotated[str, Form(min_length=1, max_length=200)]) -> HTMLResponse:
    with write_session(request.app.state.engine) as s, s.begin():
        try:
            ok, message = service.register(s, f"https://id.gs1.org/01/{gtin}/21/{serial}", contact)
        except InputError as exc:
            ok, message = False, exc.message
    html = _SHOPPER.format(gtin=escape(gtin), serial=escape(serial),
                           message=f'<p class="{"ok" if ok else "no"}">{escape(message)}</p>')
    return HTMLResponse(html, status_code=200 if ok else 409)
