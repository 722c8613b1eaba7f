"""Console pages of signage: overview (publications with rollback, campaigns, screens), the forms
HQ edits the drafts with (media upload, playlists, campaigns: the service's own checks, errors shown
on the form as typed), the calendar
of a screen (the same expansion its box runs) with empty slots and conflicts marked, "what does
region X show at 19:00 on Saturday", and proof-of-play reports with server-side SVG charts and CSV.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from cloud.access.scope import Forbidden, NotFound, Perm, Principal, visible_nodes, visible_regions, visible_stores
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.signage import service
from cloud.signage.api import media_dir
from cloud.signage.media import MAX_VIDEO_BYTES, MediaStore
from cloud.signage.models import Campaign

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
    at: Annotated[time, Query()] = time(19), screen_name: Annotated[str, Query(alias="screen", max_length=200)] = "",
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
                screen, rows = service.calendar(s, principal.scope, node, start, start + timedelta(hours=hours),
                                                screen_name=screen_name or None)
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
                  region_rows=region_rows, weekdays=WEEKDAYS, day=(day.isoformat() if day else ""), hours=hours,
                  screen_name=screen_name)


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


# -- media, playlists and campaigns: HQ edits the drafts here --------------------------------------


def _media_page(request: Request, principal: Principal, *, error: str | None = None, code: int = 200,
                name: str = "") -> HTMLResponse:
    with _session(request) as s:
        return render(request, "signage_media.html", principal, status_code=code, active="signage",
                      media=service.list_media(s), error=error, name=name)


@router.get("/media", response_class=HTMLResponse)
def media_page(request: Request, principal: Reader) -> HTMLResponse:
    return _media_page(request, principal)


@router.post("/media", response_class=HTMLResponse)
async def media_upload(
    request: Request, principal: Poster, file: Annotated[UploadFile | None, File()] = None,
    name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if file is None or not file.filename:
        return _media_page(request, principal, error="file: choose an image or a video to upload", code=422, name=name)
    data = await file.read(MAX_VIDEO_BYTES + 1)
    try:
        if len(data) > MAX_VIDEO_BYTES:
            raise InputError("file", f"larger than {MAX_VIDEO_BYTES // 2**20} MB")
        with write_session(request.app.state.engine) as s, s.begin():
            service.upload_media(s, principal, MediaStore(media_dir(request)), name or file.filename, data, via="console")
    except InputError as exc:
        return _media_page(request, principal, error=str(exc), code=422, name=name)
    return RedirectResponse("/console/signage/media", status_code=303)


EXTRA_ROWS = 3
MAX_ROWS = 500


def _rows(form: Any) -> int:
    raw = str(form.get("rows", "0"))
    return min(MAX_ROWS, int(raw)) if raw.isdigit() else 0


def _playlist_rows(items: list[dict[str, Any]], extra: int = EXTRA_ROWS) -> list[dict[str, Any]]:
    rows = [{"media": i.get("media", ""), "duration_s": i.get("duration_s", ""),
             "transition": (i.get("transition") or {}).get("kind", ""), "ms": (i.get("transition") or {}).get("ms", "")}
            for i in items]
    return rows + [{"media": "", "duration_s": "", "transition": "", "ms": ""} for _ in range(extra)]


def _playlists_page(request: Request, principal: Principal, *, edit: dict[str, Any] | None = None,
                    error: str | None = None, code: int = 200, saved: bool = False) -> HTMLResponse:
    with _session(request) as s:
        media = service.list_media(s)
        playlists = service.list_playlists(s)
        edit = edit or {"name": "", "is_default": False, "rows": _playlist_rows([])}
        return render(request, "signage_playlists.html", principal, status_code=code, active="signage", media=media,
                      names={m.sha256: m.name for m in media}, playlists=playlists, edit=edit, error=error,
                      transitions=service.TRANSITIONS, saved=saved)


@router.get("/playlists", response_class=HTMLResponse)
def playlists_page(request: Request, principal: Reader, name: Annotated[str, Query(max_length=200)] = "",
                   saved: bool = False) -> HTMLResponse:
    edit = None
    if name:
        with _session(request) as s:
            p = next((x for x in service.list_playlists(s) if x.name == name), None)
            if p is None:
                return render(request, "error.html", principal, status_code=404, active="signage",
                              message=f"No playlist {name!r}", title="Playlist not found")
            edit = {"name": p.name, "is_default": p.is_default, "rows": _playlist_rows(list(p.items))}
    return _playlists_page(request, principal, edit=edit, saved=saved)


def _number(raw: str, field: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise InputError(field, f"expected a {'whole ' if kind is int else ''}number, got {raw!r}") from None


def _item_rows(form: Any) -> list[dict[str, Any]]:
    """The rows as typed, in the order their positions give (rows without a number keep theirs)."""
    rows = [{"media": str(form.get(f"item{n}_media", "")), "duration_s": str(form.get(f"item{n}_duration", "")).strip(),
             "transition": str(form.get(f"item{n}_transition", "")), "ms": str(form.get(f"item{n}_ms", "")).strip(),
             "pos": str(form.get(f"item{n}_pos", "")).strip()}
            for n in range(_rows(form))]
    order = sorted(range(len(rows)), key=lambda n: (int(rows[n]["pos"]) if rows[n]["pos"].isdigit() else n + 1, n))
    return [rows[n] for n in order]


def playlist_items(form: Any) -> list[dict[str, Any]]:
    """The form's item rows → playlist items for the service, in the order given; a row without
    media is left out."""
    items: list[dict[str, Any]] = []
    for r in _item_rows(form):
        if not r["media"]:
            continue
        n = len(items)
        item: dict[str, Any] = {"media": r["media"], "duration_s": _number(r["duration_s"] or "10", f"items.{n}.duration_s", float)}
        if r["transition"]:
            item["transition"] = {"kind": r["transition"], "ms": _number(r["ms"] or "0", f"items.{n}.transition.ms", int)}
        items.append(item)
    return items


@router.post("/playlists", response_class=HTMLResponse)
async def playlist_save(request: Request, principal: Poster) -> Response:
    form = await request.form()
    name = str(form.get("name", ""))[:200]
    is_default = form.get("is_default") == "on"
    try:
        items = playlist_items(form)
        with write_session(request.app.state.engine) as s, s.begin():
            service.create_playlist(s, principal, name, items, is_default=is_default, via="console")
    except InputError as exc:
        edit = {"name": name, "is_default": is_default, "rows": [*_item_rows(form), *_playlist_rows([], 1)]}
        return _playlists_page(request, principal, edit=edit, error=str(exc), code=422)
    return RedirectResponse(f"/console/signage/playlists?name={quote(name.strip())}&saved=1", status_code=303)


LAYERS = ("normal", "override", "interrupt")
DAYPART_ROWS = 2


def _campaign_form(c: Any | None) -> dict[str, Any]:
    if c is None:
        return {"id": "", "name": "", "layer": "normal", "priority": 0, "playlist": "", "start_date": "", "end_date": "",
                "regions": [], "stores": [], "tags": "", "sov_s": 0, "enabled": True, "new": True,
                "dayparts": [{"weekdays": [], "start": "", "end": ""} for _ in range(DAYPART_ROWS)]}
    return {"id": c.id, "name": c.name, "layer": c.layer, "priority": c.priority, "playlist": c.playlist_id,
            "start_date": c.start_date.isoformat() if c.start_date else "",
            "end_date": c.end_date.isoformat() if c.end_date else "", "regions": list(c.regions),
            "stores": list(c.stores), "tags": ", ".join(c.tags), "sov_s": c.sov_s, "enabled": c.enabled, "new": False,
            "dayparts": list(c.dayparts) + [{"weekdays": [], "start": "", "end": ""} for _ in range(DAYPART_ROWS)]}


def _campaigns_page(request: Request, principal: Principal, *, edit: dict[str, Any] | None = None,
                    error: str | None = None, code: int = 200, saved: bool = False) -> HTMLResponse:
    with _session(request) as s:
        playlists = service.list_playlists(s)
        edit = edit or _campaign_form(None)
        if isinstance(edit["playlist"], int):
            edit["playlist"] = next((p.name for p in playlists if p.id == edit["playlist"]), "")
        return render(request, "signage_campaigns.html", principal, status_code=code, active="signage",
                      campaigns=service.list_campaigns(s, principal), playlists=playlists,
                      regions=visible_regions(s, principal.scope), stores=visible_stores(s, principal.scope),
                      edit=edit, error=error, layers=LAYERS, weekdays=WEEKDAYS, saved=saved,
                      playlist_names={p.id: p.name for p in playlists})


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns_page(request: Request, principal: Reader, id: Annotated[str, Query(max_length=64)] = "",
                   saved: bool = False) -> HTMLResponse:
    edit = None
    if id:
        with _session(request) as s:
            c = next((x for x in service.list_campaigns(s, principal) if x.id == id), None)
            if c is None:
                return render(request, "error.html", principal, status_code=404, active="signage",
                              message=f"No campaign {id!r} (unknown, or outside your regions and stores)",
                              title="Campaign not found")
            edit = _campaign_form(c)
    return _campaigns_page(request, principal, edit=edit, saved=saved)


def _date(raw: str, field: str) -> date | None:
    if not raw:
        return None
    try:
        d = date.fromisoformat(raw)
    except ValueError:
        raise InputError(field, f"expected a date YYYY-MM-DD, got {raw!r}") from None
    if not _sane(d):
        raise InputError(field, f"{raw} is outside 2000-01-01 to 2200-12-31")
    return d


def _form_dayparts(form: Any) -> list[dict[str, Any]]:
    return [{"weekdays": [int(v) for v in form.getlist(f"dp{n}_days") if str(v) in {"0", "1", "2", "3", "4", "5", "6"}],
             "start": str(form.get(f"dp{n}_start", "")), "end": str(form.get(f"dp{n}_end", ""))}
            for n in range(min(_rows(form), 50))]


def campaign_from_form(form: Any) -> service.CampaignIn:
    """The campaign form → the service's input (the service makes the checks the API makes too)."""
    # A half-filled daypart row is passed on as it is: the service names what is missing.
    dayparts = [d for d in _form_dayparts(form) if d["weekdays"] or d["start"] or d["end"]]
    name = str(form.get("name", "")).strip()
    if not name:
        raise InputError("name", "give the campaign a name (1 to 200 characters)")
    body = service.CampaignIn(
        id=str(form.get("id", "")).strip(), name=name[:200], layer=str(form.get("layer", "")),
        playlist=str(form.get("playlist", "")),
        priority=int(_number(str(form.get("priority", "")).strip() or "0", "priority", int)),
        start_date=_date(str(form.get("start_date", "")), "start_date"),
        end_date=_date(str(form.get("end_date", "")), "end_date"), dayparts=tuple(dayparts),
        regions=tuple(str(v) for v in form.getlist("regions")), stores=tuple(str(v) for v in form.getlist("stores")),
        tags=tuple(t.strip() for t in str(form.get("tags", "")).split(",") if t.strip()),
        sov_s=int(_number(str(form.get("sov_s", "")).strip() or "0", "sov_s", int)), enabled=form.get("enabled") == "on",
    )
    if not 0 <= body.priority <= 1000:
        raise InputError("priority", f"expected 0 to 1000, got {body.priority}")
    if not 0 <= body.sov_s <= 1800:
        raise InputError("sov_s", f"expected 0 to 1800 seconds per hour, got {body.sov_s}")
    return body


def _typed(form: Any) -> dict[str, Any]:
    """The form as typed, to show it again with the error."""
    typed = _campaign_form(None)
    for key in ("id", "name", "layer", "priority", "playlist", "start_date", "end_date", "tags", "sov_s"):
        typed[key] = str(form.get(key, ""))
    typed["regions"], typed["stores"] = [str(v) for v in form.getlist("regions")], [str(v) for v in form.getlist("stores")]
    typed["enabled"], typed["new"] = form.get("enabled") == "on", form.get("new") == "1"
    typed["dayparts"] = [*_form_dayparts(form), {"weekdays": [], "start": "", "end": ""}]
    return typed


@router.post("/campaigns", response_class=HTMLResponse)
async def campaign_save(request: Request, principal: Poster) -> Response:
    form = await request.form()
    try:
        body = campaign_from_form(form)
        with write_session(request.app.state.engine) as s, s.begin():
            if form.get("new") == "1" and s.get(Campaign, body.id) is not None:
                # The new-campaign form must not overwrite an existing campaign by reusing its id.
                raise InputError("id", f"a campaign {body.id!r} exists already: edit it instead")
            service.save_campaign(s, principal, body, via="console")
    except (InputError, NotFound) as exc:
        return _campaigns_page(request, principal, edit=_typed(form), error=str(exc), code=422)
    return RedirectResponse(f"/console/signage/campaigns?id={quote(body.id)}&saved=1", status_code=303)
