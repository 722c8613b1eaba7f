"""GET /regions."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from cloud.api.deps import SessionDep
from cloud.api.schemas import RegionPublic
from cloud.models import Region

router = APIRouter(prefix="/regions", tags=["stores"])


@router.get("", response_model=list[RegionPublic])
def list_regions(session: SessionDep) -> list[RegionPublic]:
    return [RegionPublic.model_validate(r) for r in session.scalars(select(Region).order_by(Region.code))]
