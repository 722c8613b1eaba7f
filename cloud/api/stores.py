"""GET /stores."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from cloud.api.deps import SessionDep
from cloud.api.schemas import StorePublic
from cloud.models import Store

router = APIRouter(prefix="/stores", tags=["stores"])


@router.get("", response_model=list[StorePublic])
def list_stores(session: SessionDep) -> list[StorePublic]:
    stores = session.scalars(select(Store).options(joinedload(Store.region)).order_by(Store.code))
    return [
        StorePublic(id=s.id, code=s.code, name=s.name, lat=s.lat, lon=s.lon, timezone=s.timezone, region=s.region.code)
        for s in stores
    ]
