"""GET /nodes and /nodes/{id}: the fleet as the ingest workers see it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from cloud.api.deps import SessionDep
from cloud.api.schemas import NodeDetail, NodePublic, Problem
from cloud.models import Node

router = APIRouter(prefix="/nodes", tags=["nodes"])


def _fields(node: Node) -> dict[str, Any]:
    # `store` is the store's code, not the ORM relationship.
    return {c.key: getattr(node, c.key) for c in Node.__table__.columns} | {
        "store": node.store.code if node.store else None
    }


@router.get("", response_model=list[NodePublic])
def list_nodes(session: SessionDep) -> list[NodePublic]:
    nodes = session.scalars(select(Node).options(joinedload(Node.store)).order_by(Node.id))
    return [NodePublic.model_validate(_fields(n)) for n in nodes]


@router.get("/{node_id}", response_model=NodeDetail, responses={status.HTTP_404_NOT_FOUND: {"model": Problem}})
def get_node(node_id: str, session: SessionDep) -> NodeDetail:
    node = session.scalars(select(Node).options(joinedload(Node.store)).where(Node.id == node_id)).one_or_none()
    if node is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No node {node_id!r}: it has never sent a message and is not seeded")
    return NodeDetail.model_validate(_fields(node))
