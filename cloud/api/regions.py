"""GET /regions."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.access.scope import visible_regions
from cloud.api.deps import FleetReader, SessionDep
from cloud.api.schemas import RegionPublic

router = APIRouter(prefix="/regions", tags=["stores"])


@router.get("", response_model=list[RegionPublic])
def list_regions(session: SessionDep, principal: FleetReader) -> list[RegionPublic]:
    return [RegionPublic.model_validate(r) for r in visible_regions(session, principal.scope)]
