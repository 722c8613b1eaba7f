"""Console pages of signage: overview (publications with rollback, campaigns, screens), the calendar
of a screen (the same expansion its box runs) with empty slots and conflicts marked, "what does
region X show at 19:00 on Saturday", and proof-of-play reports with server-side SVG charts and CSV.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup, escape

from cloud.access.scope import Forbidden, NotFound, Perm, Principal, visible_nodes, visible_regions
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.signage import service

__all__ = ["bar_chart", "router"]

router = APIRouter(prefix="/console/signage", include_in_schema=False)
Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Poster = Annotated[Principal, Depends(form_user(Perm.BUSINESS))]
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _session(request: Request) -> Any:
    return request.app.state.sessionmaker()


@router.get("", response_class=HTMLResponse)
def overview(request: Request, principal: Reader) -> HTMLResponse:
    with _session(request) as s:
        return render(request, "signage_overview.html", principal, active="signage",
                      publications=service.list_publications(s, 20), campaigns=service.list_campaigns(s, principal),
                      screens=service.screens_view(s, principal.scope), dropped=service.dropped_counts(s, principal.scope),
                      current=service.current_publication(s))


@router.post("/publish")
def publish(request: Request, principal: Poster, note: Annotated[str, Form(max_length=1000)] = "") -> Any:
    return _change(request, principal, lambda s: service.publish(s, principal, note or None, via="console"))


@router.post("/rollback")
def rollback(request: Request, principal: Poster, version: Annotated[int, Form(ge=1, le=2**31 - 1)]) -> Any:
    return _change(request, principal, lambda s: service.rollback(s, principal, version, via="console"))


def _change(request: Request, principal: Principal, fn: Any) -> Any:
    try:
        with write_session(request.app.state.engine) as s, s.begin():
            fn(s)
    except (Forbidden, NotFound, InputError) as exc:
        return render(request, "error.html", principal, status_code=403 if isinstance(exc, Forbidden) else 422,
                      active="signage", message=str(exc), title="Not published")
    return RedirectResponse("/console/signage", status_code=303)


@router.get("/calendar", response_class=HTMLResponse)
def calendar(
    request: Request, principal: Reader, node: Annotated[str, Query(max_length=63)] = "",
    day: Annotated[date | None, Query()] = None, hours: Annotated[float, Query(gt=0, le=72)] = 24,
    region: Annotated[str, Query(max_length=32)] = "", weekday: Annotated[int, Query(ge=0, le=6)] = 5,
    at: Annotated[time, Query()] = time(19),
) -> HTMLResponse:
    rows: list[Any] = []
    screen = None
    message = None
    region_rows: list[dict[str, Any]] = []
    with _session(request) as s:
        nodes = [n for n in visible_nodes(s, principal.scope) if n.store is not None]
        regions = visible_regions(s, principal.scope)
        try:
            if day is not None and not _sane(day):
                raise InputError("day", f"{day.isoformat()} is outside 2000-01-01 to 2200-12-31", location="query")
            if node:
                n = next((x for x in nodes if x.id == node), None)
                zone = ZoneInfo(n.store.timezone) if n and n.store else UTC
                d = day or datetime.now(zone).date()
                start = datetime.combine(d, time(0), tzinfo=zone).astimezone(UTC)
                screen, rows = service.calendar(s, principal.scope, node, start, start + timedelta(hours=hours))
            if region:
                region_rows = service.region_at(s, principal.scope, region, weekday, at)
        except (NotFound, InputError) as exc:
            message = str(exc)
    zone = ZoneInfo(screen.timezone) if screen else UTC
    view = [{"start": r.start.astimezone(zone).strftime("%a %d %b %H:%M:%S"), "utc": r.start.strftime("%H:%M:%S"),
             "secs": round((r.end - r.start).total_seconds()), "slot": r.slot, "conflict": r.conflict} for r in rows]
    # Long timelines are folded: consecutive rows of one campaign are one line (count shown).
    folded: list[dict[str, Any]] = []
    for v in view:
        key = (v["slot"].campaign, v["slot"].layer) if v["slot"] else None
        if folded and folded[-1]["key"] == key and key is not None and folded[-1]["conflict"] == v["conflict"]:
            folded[-1]["n"] += 1
            folded[-1]["secs"] += v["secs"]
        else:
            folded.append(v | {"key": key, "n": 1})
    return render(request, "signage_calendar.html", principal, active="signage", nodes=nodes, node=node, rows=folded,
                  screen=screen, message=message, regions=regions, region=region, weekday=weekday, at=at.strftime("%H:%M"),
                  region_rows=region_rows, weekdays=WEEKDAYS, day=(day.isoformat() if day else ""), hours=hours)


def _sane(d: date) -> bool:
    return date(2000, 1, 1) <= d <= date(2200, 12, 31)


def bar_chart(rows: list[dict[str, Any]], label: str, value: str, title: str) -> Markup:
    """A horizontal bar chart as inline SVG (drawn here: pages load nothing from elsewhere)."""
    if not rows:
        return Markup("")
    top = max(float(r[value]) for r in rows) or 1.0
    bar_h, gap, left, width = 18, 6, 180, 420
    height = len(rows) * (bar_h + gap) + 34
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{left + width + 80}" '
             f'height="{height}" viewBox="0 0 {left + width + 80} {height}"><title>{escape(title)}</title>'
             f'<text x="0" y="14" font-size="13" font-weight="600">{escape(title.capitalize())}</text>']
    for i, r in enumerate(rows):
        y = 24 + i * (bar_h + gap)
        w = max(1.0, width * float(r[value]) / top)
        name = escape(str(r[label] if r[label] is not None else "(default)"))
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="12">{name}</text>'
                     f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#3b82f6"><title>{name}: '
                     f'{r[value]}</title></rect><text x="{left + w + 4:.1f}" y="{y + 13}" font-size="12">{r[value]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@router.get("/reports", response_class=HTMLResponse)
def reports(
    request: Request, principal: Reader, by: Annotated[str, Query(pattern="^(campaign|region|store|screen|day)$")] = "campaign",
    first: date | None = None, last: date | None = None, campaign: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    a, b = first or date.today(), last or first or date.today()
    with _session(request) as s:
        rows = service.report(s, principal.scope, [by], first, last, campaign or None)
        # The plan is an expansion per screen and day: only for a sensible range.
        plan = service.delivery(s, principal.scope, campaign, a, b) \
            if campaign and _sane(a) and _sane(b) and 0 <= (b - a).days <= 92 else None
    qs = f"by={by}" + (f"&first={first}" if first else "") + (f"&last={last}" if last else "") + \
        (f"&campaign={campaign}" if campaign else "")
    return render(request, "signage_reports.html", principal, active="signage", rows=rows, by=by, campaign=campaign,
                  first=first.isoformat() if first else "", last=last.isoformat() if last else "", qs=qs, plan=plan,
                  chart=bar_chart(rows, by, "seconds", f"seconds played per {by}"),
                  chart_plays=bar_chart(rows, by, "plays", f"plays per {by}"))
