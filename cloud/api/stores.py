"""GET /stores."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.access.scope import visible_stores
from cloud.api.deps import FleetReader, SessionDep
from cloud.api.schemas import StorePublic

router = APIRouter(prefix="/stores", tags=["stores"])


@router.get("", response_model=list[StorePublic])
def list_stores(session: SessionDep, principal: FleetReader) -> list[StorePublic]:
    stores = visible_stores(session, principal.scope)
    return [
        StorePublic(id=s.id, code=s.code, name=s.name, lat=s.lat, lon=s.lon, timezone=s.timezone, region=s.region.code)
        for s in stores
    ]
