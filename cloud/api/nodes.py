"""GET /nodes and /nodes/{id}: the fleet as the ingest workers see it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from cloud.access.scope import get_node as scoped_node
from cloud.access.scope import visible_nodes
from cloud.api.deps import FleetReader, SessionDep
from cloud.api.schemas import NodeDetail, NodePublic, Problem
from cloud.models import Node

router = APIRouter(prefix="/nodes", tags=["nodes"])


def _fields(node: Node) -> dict[str, Any]:
    # `store` is the store's code, not the ORM relationship.
    return {c.key: getattr(node, c.key) for c in Node.__table__.columns} | {
        "store": node.store.code if node.store else None
    }


@router.get("", response_model=list[NodePublic])
def list_nodes(session: SessionDep, principal: FleetReader) -> list[NodePublic]:
    nodes = visible_nodes(session, principal.scope)
    return [NodePublic.model_validate(_fields(n)) for n in nodes]


@router.get("/{node_id}", response_model=NodeDetail, responses={status.HTTP_404_NOT_FOUND: {"model": Problem}})
def get_node(node_id: str, session: SessionDep, principal: FleetReader) -> NodeDetail:
    # Unknown and out-of-scope answer the same 404 (raised by the scope layer).
    node = scoped_node(session, principal.scope, node_id)
    return NodeDetail.model_validate(_fields(node))
