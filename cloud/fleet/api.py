"""REST endpoints of the fleet: /regions, /stores, /nodes and the bus's /bus/failed.

Thin: each route states who may call it in one line and calls `cloud.fleet.service` (reads go
through the caller's scope there; changes are audited there)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal, get_node, visible_nodes, visible_regions, visible_stores
from cloud.access.service import InputError, write_session
from cloud.access.web import require, via
from cloud.fleet import service
from cloud.fleet.schemas import (
    CommandPublic,
    FailedDetail,
    FailedPublic,
    NodeDetail,
    NodePublic,
    NodeUpdate,
    RegionCreate,
    RegionPublic,
    RegionUpdate,
    ReplayOutcome,
    ReplayRequest,
    StoreCreate,
    StorePublic,
    StoreUpdate,
)
from cloud.models import IngestedMessage, Node, Store

__all__ = ["router"]

router = APIRouter()
Reader = Annotated[Principal, Depends(require(Perm.FLEET))]
Editor = Annotated[Principal, Depends(require(Perm.FLEET_EDIT))]
Id = Annotated[int, Path(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=1000)]
NodeId = Annotated[str, Path(min_length=1, max_length=63)]
CodePath = Annotated[str, Path(min_length=1, max_length=32)]

Problem: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"description": "unknown, or outside your scope"},
    422: {"description": "invalid input (the field and the reason)"},
}


def _session(request: Request) -> Session:
    s: Session = request.app.state.sessionmaker()
    return s


def _store(s: Store) -> StorePublic:
    return StorePublic(id=s.id, code=s.code, name=s.name, region=s.region.code, lat=s.lat, lon=s.lon, timezone=s.timezone)


def _node_fields(n: Node) -> dict[str, Any]:
    return {c.key: getattr(n, c.key) for c in Node.__table__.columns} | {"store": n.store.code if n.store else None}


# -- regions ---------------------------------------------------------------------------------------


@router.get("/regions", response_model=list[RegionPublic], tags=["stores"])
def list_regions(request: Request, principal: Reader) -> list[RegionPublic]:
    with _session(request) as session:
        return [RegionPublic.model_validate(r) for r in visible_regions(session, principal.scope)]


@router.post("/regions", response_model=RegionPublic, status_code=201, tags=["stores"], responses=Problem)
def create_region(body: RegionCreate, request: Request, principal: Editor) -> RegionPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        region = service.create_region(session, principal, body.code, body.name, via=via(request))
        return RegionPublic.model_validate(region)


@router.patch("/regions/{code}", response_model=RegionPublic, tags=["stores"], responses=Problem)
def update_region(code: CodePath, body: RegionUpdate, request: Request, principal: Editor) -> RegionPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return RegionPublic.model_validate(service.update_region(session, principal, code, name=body.name, via=via(request)))


# -- stores ----------------------------------------------------------------------------------------


@router.get("/stores", response_model=list[StorePublic], tags=["stores"])
def list_stores(request: Request, principal: Reader) -> list[StorePublic]:
    with _session(request) as session:
        return [_store(s) for s in visible_stores(session, principal.scope)]


@router.post("/stores", response_model=StorePublic, status_code=201, tags=["stores"], responses=Problem)
def create_store(body: StoreCreate, request: Request, principal: Editor) -> StorePublic:
    with write_session(request.app.state.engine) as session, session.begin():
        store = service.create_store(session, principal, body.code, body.name, body.region, body.lat, body.lon,
                                     body.timezone, via=via(request))
        return _store(store)


@router.patch("/stores/{code}", response_model=StorePublic, tags=["stores"], responses=Problem)
def update_store(code: CodePath, body: StoreUpdate, request: Request, principal: Editor) -> StorePublic:
    with write_session(request.app.state.engine) as session, session.begin():
        store = service.update_store(session, principal, code, name=body.name, region=body.region, lat=body.lat,
                                     lon=body.lon, timezone=body.timezone, via=via(request))
        return _store(store)


# -- nodes -----------------------------------------------------------------------------------------


@router.get("/nodes", response_model=list[NodePublic], tags=["nodes"])
def list_nodes(
    request: Request, principal: Reader, retired: Annotated[bool, Query(description="list retired boxes instead")] = False
) -> list[NodePublic]:
    with _session(request) as session:
        return [NodePublic.model_validate(_node_fields(n)) for n in visible_nodes(session, principal.scope, retired=retired)]


def _detail(session: Session, principal: Principal, node_id: str) -> NodeDetail:
    node = get_node(session, principal.scope, node_id)
    commands = service.command_summary(session, principal.scope, [node.id]).get(node.id, {})
    return NodeDetail.model_validate(_node_fields(node) | {"commands": commands})


@router.get("/nodes/{node_id}", response_model=NodeDetail, tags=["nodes"], responses=Problem)
def get_node_detail(node_id: NodeId, request: Request, principal: Reader) -> NodeDetail:
    with _session(request) as session:
        return _detail(session, principal, node_id)


@router.patch("/nodes/{node_id}", response_model=NodeDetail, tags=["nodes"], responses=Problem)
def update_node(node_id: NodeId, body: NodeUpdate, request: Request, principal: Editor) -> NodeDetail:
    if body.store is None and not body.retired:
        raise InputError("store", "give store (a store code) to move the box, or retired: true")
    with write_session(request.app.state.engine) as session, session.begin():
        if body.store is not None:
            service.assign_node(session, principal, node_id, body.store, via=via(request))
        if body.retired:
            service.retire_node(session, principal, node_id, via=via(request))
        session.flush()
        return _detail(session, principal, node_id)


@router.post("/nodes/{node_id}/reset-gap", status_code=204, tags=["nodes"], responses=Problem)
def reset_gap(node_id: NodeId, request: Request, principal: Editor) -> None:
    with write_session(request.app.state.engine) as session, session.begin():
        service.reset_node_gap(session, principal, node_id, via=via(request))


@router.get("/nodes/{node_id}/commands", response_model=list[CommandPublic], tags=["nodes"], responses=Problem)
def node_commands(
    node_id: NodeId, request: Request, principal: Reader,
    status: Annotated[str | None, Query(pattern="^(pending|sent|delivered|failed|expired|superseded|cancelled)$")] = None,
    limit: Limit = 100,
) -> list[CommandPublic]:
    with _session(request) as session:
        rows = service.list_commands(session, principal.scope, node=node_id, status=status, limit=limit)
        return [CommandPublic.model_validate(r) for r in rows]


# -- failed messages -------------------------------------------------------------------------------


@router.get("/bus/failed", response_model=list[FailedPublic], tags=["bus"])
def list_failed(
    request: Request, principal: Reader,
    status: Annotated[str | None, Query(pattern="^(failed|replayed|discarded)$")] = "failed",
    node: Annotated[str | None, Query(max_length=63)] = None,
    engine: Annotated[str | None, Query(max_length=32)] = None,
    limit: Limit = 100,
) -> list[FailedPublic]:
    with _session(request) as session:
        rows = service.list_failed(session, principal.scope, service.FailedFilter(status, node, engine, limit))
        return [FailedPublic.model_validate(r) for r in rows]


@router.get("/bus/failed/{failed_id}", response_model=FailedDetail, tags=["bus"], responses=Problem)
def get_failed(failed_id: Id, request: Request, principal: Reader) -> FailedDetail:
    with _session(request) as session:
        row = service.get_failed(session, principal.scope, failed_id)
        ledger = session.scalars(select(IngestedMessage).where(IngestedMessage.msg_id == row.msg_id)).one_or_none()
        message = None if ledger is None else {
            "session": ledger.session, "seq": ledger.seq, "ts": ledger.ts.isoformat(), "data": ledger.data,
        }
        return FailedDetail.model_validate(FailedPublic.model_validate(row).model_dump() | {
            "detail": row.detail, "message": message})


@router.post("/bus/failed/replay", response_model=list[ReplayOutcome], tags=["bus"], responses=Problem)
def replay_failed(body: ReplayRequest, request: Request, principal: Editor) -> list[ReplayOutcome]:
    results = service.replay_failed(request.app.state.engine, principal, body.ids, via=via(request))
    return [ReplayOutcome(id=r.id, outcome=r.outcome, error=r.error) for r in results]


@router.post("/bus/failed/{failed_id}/discard", status_code=204, tags=["bus"], responses=Problem)
def discard_failed(failed_id: Id, request: Request, principal: Editor) -> None:
    with write_session(request.app.state.engine) as session, session.begin():
        if not service.discard_failed(session, principal, failed_id, via=via(request)):
            raise InputError("id", f"#{failed_id} is not in the failed state (already replayed or discarded)")
