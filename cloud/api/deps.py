"""Dependencies shared by the routers (database session, worker), as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal
from cloud.access.web import PrincipalDep, require
from cloud.bus.worker import CloudBus

__all__ = ["BusDep", "EngineDep", "FleetReader", "PrincipalDep", "SessionDep"]


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_bus(request: Request) -> CloudBus | None:
    bus: CloudBus | None = request.app.state.bus
    return bus


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
BusDep = Annotated[CloudBus | None, Depends(get_bus)]
FleetReader = Annotated[Principal, Depends(require(Perm.FLEET))]
"""Any principal whose role may read regions, stores and nodes; scope via `principal.scope`."""
