"""Console pages of the fleet: the live fleet map and tree, stores, devices, one box (with its
commands and failed messages), regions, and the bus's failed messages with replay.

Handlers get their principal from `console_user(perm)` and their rows from `cloud.fleet.service`
or the scope layer; form posts check the session's CSRF token first (`form_user`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from cloud.access.scope import (
    Forbidden,
    NotFound,
    Perm,
    Principal,
    get_node,
    get_store,
    visible_nodes,
    visible_regions,
    visible_stores,
)
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.fleet import config_push, service
from cloud.models import IngestedMessage, Node, Store

__all__ = ["router", "store_map"]

router = APIRouter(prefix="/console", include_in_schema=False)

Fleet = Annotated[Principal, Depends(console_user(Perm.FLEET))]
EditForm = Annotated[Principal, Depends(form_user(Perm.FLEET_EDIT))]
FilterStr = Annotated[str, Query(max_length=100)]
FailedId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _node_state(n: Node) -> dict[str, Any]:
    return {
        "id": n.id,
        "store": n.store.code if n.store else None,
        "online": n.online,
        "last_seen": n.last_seen.strftime("%Y-%m-%d %H:%M:%S") if n.last_seen else None,
        "software_version": n.software_version,
        "config_hash": n.config_hash,
    }


def store_map(stores: Sequence[Store], online: dict[int, tuple[int, int]], width: int = 640, height: int = 420) -> dict[str, Any]:
    """Stores projected into an SVG viewBox (equirectangular, scaled by cos(latitude)) with a degree
    grid for orientation: drawn by the server, so no tiles and no internet are needed."""
    if not stores:
        return {"width": width, "height": height, "points": [], "grid": []}
    lats = [s.lat for s in stores]
    lons = [s.lon for s in stores]
    k = math.cos(math.radians(sum(lats) / len(lats)))
    min_x, max_x = min(lons) * k, max(lons) * k
    min_y, max_y = min(lats), max(lats)
    span = max(max_x - min_x, max_y - min_y, 0.5)
    pad = 70
    scale = min((width - 2 * pad) / span, (height - 2 * pad) / span)
    cx, cy = (min_x + max_x) / 2, (min_y + max_y) / 2

    def x_of(lon: float) -> float:
        return round(width / 2 + (lon * k - cx) * scale, 1)

    def y_of(lat: float) -> float:
        return round(height / 2 - (lat - cy) * scale, 1)

    lat_lo, lat_hi = cy - height / 2 / scale, cy + height / 2 / scale
    lon_lo, lon_hi = (cx - width / 2 / scale) / k, (cx + width / 2 / scale) / k
    step = next(st for st in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30) if (lat_hi - lat_lo) / st <= 8)
    grid = []
    for i in range(math.ceil(lat_lo / step), math.floor(lat_hi / step) + 1):
        lat = round(i * step, 3)
        grid.append({"x1": 0, "y1": y_of(lat), "x2": width, "y2": y_of(lat), "label": f"{lat:g}°N", "lx": 4, "ly": y_of(lat) - 3})
    for i in range(math.ceil(lon_lo / step), math.floor(lon_hi / step) + 1):
        lon = round(i * step, 3)
        grid.append({"x1": x_of(lon), "y1": 0, "x2": x_of(lon), "y2": height, "label": f"{lon:g}°E", "lx": x_of(lon) + 3, "ly": height - 4})
    points = []
    for s in stores:
        up, total = online.get(s.id, (0, 0))
        state = "none" if total == 0 else ("online" if up == total else ("offline" if up == 0 else "partial"))
        x, y = x_of(s.lon), y_of(s.lat)
        right = x > width * 0.55  # label on the left of dots near the right edge, so it is not cut off
        points.append({
            "code": s.code, "name": s.name, "state": state, "up": up, "total": total, "x": x, "y": y,
            "tx": x - 16 if right else x + 16, "anchor": "end" if right else "start",
        })
    return {"width": width, "height": height, "points": points, "grid": grid}


def _fleet(request: Request, principal: Principal, region: str, q: str, state: str) -> dict[str, Any]:
    with request.app.state.sessionmaker() as session:
        regions = visible_regions(session, principal.scope)
        stores = visible_stores(session, principal.scope, region_code=region or None, q=q or None)
        nodes = visible_nodes(session, principal.scope, store_ids=[s.id for s in stores])
        if principal.scope.all and not region and not q:
            unassigned = [n for n in visible_nodes(session, principal.scope) if n.store_id is None]
        else:
            unassigned = []
        failed = service.failed_counts(session, principal.scope).get("failed", 0)
        config = config_push.config_labels(session, [n.id for n in [*nodes, *unassigned]])
    if state in ("online", "offline"):
        nodes = [n for n in nodes if n.online == (state == "online")]
        unassigned = [n for n in unassigned if n.online == (state == "online")]
    by_store: dict[int, list[Node]] = {}
    for n in nodes:
        by_store.setdefault(n.store_id or 0, []).append(n)
    counts = {sid: (sum(n.online for n in ns), len(ns)) for sid, ns in by_store.items()}
    tree = []
    for r in regions:
        rs = [s for s in stores if s.region_id == r.id]
        if rs:
            tree.append({"region": r, "stores": [{"store": s, "nodes": by_store.get(s.id, [])} for s in rs]})
    all_nodes = [*nodes, *unassigned]
    return {
        "regions": regions, "tree": tree, "unassigned": unassigned, "map": store_map(stores, counts),
        "online": sum(n.online for n in all_nodes), "total": len(all_nodes),
        "filters": {"region": region, "q": q, "state": state}, "failed": failed, "config": config,
    }


@router.get("/fleet", response_class=HTMLResponse)
def fleet(request: Request, principal: Fleet, region: FilterStr = "", q: FilterStr = "", state: FilterStr = "") -> HTMLResponse:
    return render(request, "fleet.html", principal, **_fleet(request, principal, region, q, state))


@router.get("/fleet/state.json")
def fleet_state(request: Request, principal: Fleet) -> JSONResponse:
    """What the fleet page polls: every visible node's live fields (no reload needed)."""
    with request.app.state.sessionmaker() as session:
        nodes = visible_nodes(session, principal.scope)
        body = {"nodes": [_node_state(n) for n in nodes], "at": datetime.now(UTC).isoformat(timespec="seconds")}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _store_page(request: Request, principal: Principal, code: str, *, error: str | None = None, code_: int = 200,
                saved: bool = False) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        try:
            store = get_store(session, principal.scope, code[:64])
        except NotFound as exc:
            return render(request, "error.html", principal, status_code=404, message=str(exc))
        nodes = visible_nodes(session, principal.scope, store_ids=[store.id])
        counts = {store.id: (sum(n.online for n in nodes), len(nodes))}
        return render(request, "store.html", principal, status_code=code_, store=store, nodes=nodes,
                      map=store_map([store], counts), regions=visible_regions(session, principal.scope),
                      error=error, saved=saved)


@router.get("/stores/{code}", response_class=HTMLResponse)
def store_page(request: Request, principal: Fleet, code: str) -> HTMLResponse:
    return _store_page(request, principal, code)


@router.post("/stores/{code}", response_class=HTMLResponse)
def store_update(
    request: Request, principal: EditForm, code: str,
    name: Annotated[str, Form(max_length=200)] = "", region: Annotated[str, Form(max_length=32)] = "",
    lat: Annotated[float, Form(ge=-90, le=90)] = 0.0, lon: Annotated[float, Form(ge=-180, le=180)] = 0.0,
    timezone: Annotated[str, Form(max_length=64)] = "",
) -> HTMLResponse:
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            service.update_store(session, principal, code[:64], name=name, region=region or None, lat=lat, lon=lon,
                                 timezone=timezone, via="console")
    except InputError as exc:
        return _store_page(request, principal, code, error=str(exc), code_=422)
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, message=str(exc))
    return _store_page(request, principal, code, saved=True)


def _regions_page(request: Request, principal: Principal, *, error: str | None = None, code: int = 200,
                  rform: dict[str, Any] | None = None, sform: dict[str, Any] | None = None) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        regions = visible_regions(session, principal.scope)
        stores = visible_stores(session, principal.scope)
        return render(request, "regions.html", principal, status_code=code, regions=regions, stores=stores,
                      error=error, rform=rform or {}, sform=sform or {})


@router.get("/regions", response_class=HTMLResponse)
def regions_page(request: Request, principal: Fleet) -> HTMLResponse:
    return _regions_page(request, principal)


@router.post("/regions", response_class=HTMLResponse)
def region_create(
    request: Request, principal: EditForm,
    code: Annotated[str, Form(max_length=32)] = "", name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            service.create_region(session, principal, code, name, via="console")
    except InputError as exc:
        return _regions_page(request, principal, error=str(exc), code=422, rform={"code": code, "name": name})
    except Forbidden as exc:
        return _regions_page(request, principal, error=str(exc), code=403, rform={"code": code, "name": name})
    return RedirectResponse("/console/regions", status.HTTP_303_SEE_OTHER)


@router.post("/stores", response_class=HTMLResponse)
def store_create(
    request: Request, principal: EditForm,
    code: Annotated[str, Form(max_length=32)] = "", name: Annotated[str, Form(max_length=200)] = "",
    region: Annotated[str, Form(max_length=32)] = "",
    lat: Annotated[float, Form(ge=-90, le=90)] = 0.0, lon: Annotated[float, Form(ge=-180, le=180)] = 0.0,
    timezone: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    form = {"code": code, "name": name, "region": region, "lat": lat, "lon": lon, "timezone": timezone}
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            service.create_store(session, principal, code, name, region, lat, lon, timezone, via="console")
    except (InputError, NotFound) as exc:
        return _regions_page(request, principal, error=str(exc), code=422, sform=form)
    return RedirectResponse(f"/console/stores/{code.strip()}", status.HTTP_303_SEE_OTHER)


@router.get("/devices", response_class=HTMLResponse)
def devices(request: Request, principal: Fleet) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        nodes = visible_nodes(session, principal.scope)
        rows = [(n, d) for n in nodes for d in (n.devices or [])]
        return render(request, "devices.html", principal, rows=rows, nodes=nodes)


def _node_page(request: Request, principal: Principal, node_id: str, *, error: str | None = None, code: int = 200,
               saved: str | None = None) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        try:
            node = get_node(session, principal.scope, node_id[:64])
        except NotFound as exc:
            return render(request, "error.html", principal, status_code=404, message=str(exc))
        commands = service.list_commands(session, principal.scope, node=node.id, limit=50)
        summary = service.command_summary(session, principal.scope, [node.id]).get(node.id, {})
        failed = service.list_failed(session, principal.scope, service.FailedFilter(status=None, node=node.id, limit=50))
        return render(request, "node.html", principal, status_code=code, node=node, commands=commands, summary=summary,
                      failed=failed, stores=visible_stores(session, principal.scope), error=error, saved=saved,
                      can_edit=principal.can(Perm.FLEET_EDIT))


@router.get("/nodes/{node_id}", response_class=HTMLResponse)
def node_page(request: Request, principal: Fleet, node_id: str) -> HTMLResponse:
    return _node_page(request, principal, node_id)


@router.post("/nodes/{node_id}", response_class=HTMLResponse)
def node_action(
    request: Request, principal: EditForm, node_id: str,
    action: Annotated[str, Form(pattern="^(assign|retire|reset_gap)$")] = "assign",
    store: Annotated[str, Form(max_length=32)] = "",
) -> HTMLResponse:
    node_id = node_id[:64]
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            if action == "assign":
                service.assign_node(session, principal, node_id, store, via="console")
                saved = f"Moved to store {store}."
            elif action == "retire":
                service.retire_node(session, principal, node_id, via="console")
                saved = "Retired: hidden from the fleet, undelivered commands cancelled."
            else:
                service.reset_node_gap(session, principal, node_id, via="console")
                saved = "The cloud will ask the box for the missing messages again."
    except (InputError, NotFound) as exc:
        return _node_page(request, principal, node_id, error=str(exc), code=422)
    return _node_page(request, principal, node_id, saved=saved)


def _failed_page(request: Request, principal: Principal, status_filter: str, node: str, *,
                 results: list[Any] | None = None, error: str | None = None, code: int = 200) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        rows = service.list_failed(
            session, principal.scope, service.FailedFilter(status=status_filter or None, node=node or None, limit=200)
        )
        counts = service.failed_counts(session, principal.scope)
        return render(request, "failed.html", principal, status_code=code, rows=rows, counts=counts,
                      filters={"status": status_filter, "node": node}, results=results, error=error,
                      can_edit=principal.can(Perm.FLEET_EDIT))


@router.get("/bus/failed", response_class=HTMLResponse)
def failed_page(
    request: Request, principal: Fleet,
    status: Annotated[str, Query(pattern="^(|failed|replayed|discarded)$")] = "failed",
    node: FilterStr = "",
) -> HTMLResponse:
    return _failed_page(request, principal, status, node)


@router.get("/bus/failed/{failed_id}", response_class=HTMLResponse)
def failed_detail(request: Request, principal: Fleet, failed_id: FailedId) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        try:
            row = service.get_failed(session, principal.scope, failed_id)
        except NotFound as exc:
            return render(request, "error.html", principal, status_code=404, message=str(exc))
        ledger = session.scalars(select(IngestedMessage).where(IngestedMessage.msg_id == row.msg_id)).one_or_none()
        return render(request, "failed_detail.html", principal, row=row, ledger=ledger,
                      can_edit=principal.can(Perm.FLEET_EDIT))


@router.post("/bus/failed", response_class=HTMLResponse)
def failed_action(
    request: Request, principal: EditForm,
    action: Annotated[str, Form(pattern="^(replay|discard)$")] = "replay",
    ids: Annotated[list[int] | None, Form()] = None,
) -> HTMLResponse:
    wanted = [i for i in (ids or []) if 1 <= i < 2**63][:1000]
    if not wanted:
        return _failed_page(request, principal, "failed", "", error="Tick at least one message.", code=422)
    if action == "replay":
        results = service.replay_failed(request.app.state.engine, principal, wanted, via="console")
        return _failed_page(request, principal, "failed", "", results=results)
    done: list[dict[str, Any]] = []
    for failed_id in wanted:
        try:
            with write_session(request.app.state.engine) as session, session.begin():
                ok = service.discard_failed(session, principal, failed_id, via="console")
        except NotFound as exc:  # unknown or outside the scope: said like a replay says it
            done.append({"id": failed_id, "outcome": "unknown", "error": str(exc)})
            continue
        done.append({"id": failed_id, "outcome": "discarded" if ok else "skipped", "error": None})
    return _failed_page(request, principal, "failed", "", results=done)
